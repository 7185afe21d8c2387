"""Collapsed operators over a family of directions: ``bilaplacian``,
``diffusion_operator``, and the term sets of ``differential_operator`` that are
one (``core._directions.classify``).

Each is ``sum_n w_n D^K f[v_n] (+ Df[drift]) (+ c f)`` for directions ``v_n`` and
weights ``w_n`` from ``core._directions``, computed in one collapsed Taylor pass
with the directions stacked on one axis: the value and the ``K - 1`` lower
coefficients of every direction, and one summed top coefficient, per
intermediate (``torch_engine._family``; JAX: ``jax_engine.run_directions``).
``strategy="nested-forward"`` takes ``K`` nested JVPs per direction instead (the
reference, and what runs when the engine cannot take ``f``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _api, _batch, backends
from ._operators import check_operator_arguments
from .backends import _common
from .core import _directions
from .core._cache import LRUCache

FAMILY = "traced-jet"
NESTED = "nested-forward"
STRATEGIES = (FAMILY, NESTED)


@dataclasses.dataclass
class Call:
    """One call's operator: directions ``rows`` (``(N, *sample)`` shared by every
    sample, or ``(N, *x.shape)`` with ``per_sample``), ``weights`` (NumPy), the
    order, the drift (shaped like x, or None) and the term of f's value."""

    rows: Any
    weights: np.ndarray
    order: int
    per_sample: bool = False
    drift: Any = None
    value: Callable[[Any], Any] | None = None  # f's output -> its term, or None


class FamilyExplanation:
    """What a collapsed family operator does for given arguments: the directions,
    the order, the strategy that runs and why. Made by ``derivs.explain(op, *args)``."""

    def __init__(self, api, backend, sample, call: Call, strategy, requested, notes):
        self.api, self.backend, self.sample = api, backend, sample
        self.directions, self.order = int(call.weights.shape[0]), call.order
        self.strategy, self.requested, self.notes = strategy, requested, list(notes)
        self.drift = call.drift is not None
        self.layout = "family" if strategy == FAMILY else None

    def __str__(self) -> str:
        lines = [f"{self.api} ({self.backend}), sample shape {self.sample}: "
                 f"{self.directions} directions of order {self.order}"
                 + (", plus the drift's first-order term" if self.drift else ""),
                 f"  strategy: {self.strategy} "
                 + ("(requested)" if self.requested else "(automatic)")]
        if self.strategy == FAMILY:
            lines.append(f"  collapsed order-{self.order} jet: the value, {self.order - 1} "
                         "lower coefficient(s) per direction stacked on one axis, and one "
                         "summed top coefficient per intermediate")
        else:
            lines.append(f"  {self.order} nested JVPs per direction, vmapped over the "
                         "directions")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def make(f: Callable, argnum: int, batch_axis: int | None, api: str,
         plan: Callable, *, strategy: str | None = None, chunk_size: int | None = None,
         torch_compile: bool = False) -> Callable:
    """The operator ``plan(backend, x, sample, args, kwargs) -> Call`` of ``f``."""
    check_operator_arguments(api, f, argnum, batch_axis)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"{api}: chunk_size must be None (all directions at once) or a "
                         f"positive int, got {chunk_size!r}.")
    if strategy not in (None, *STRATEGIES):
        raise ValueError(f"{api}: strategy={strategy!r} is not one of None (automatic), "
                         + ", ".join(repr(s) for s in STRATEGIES) + ".")
    if not isinstance(torch_compile, bool):
        raise TypeError(f"{api}: torch_compile must be True or False, got {torch_compile!r}.")
    # Carries f and argnum: the JAX engine traces f's jaxpr through it, and its cache
    # holds the PyTorch capture, the output-shape probe and the batch-axis verdict.
    transform = _api._build(f, [0], argnum, False, batch_axis, api=api, allow_value=False)
    programs = LRUCache(maxsize=32)  # PyTorch: the family program per signature
    unbatched: list = []

    def decide(args, kwargs):
        if argnum >= len(args):
            raise ValueError(f"{api}: argnum={argnum} but the function was called with "
                             f"{len(args)} positional argument(s).")
        backend = backends.backend_for(args, api)
        x = backend.as_input(args[argnum], argnum, api, batch_axis)
        args = args[:argnum] + (x,) + args[argnum + 1:]
        sample = _common.sample_shape(tuple(x.shape), batch_axis)
        engine, why = None, None
        if strategy != NESTED:
            engine, why = _engine(backend.name, transform, programs, f, args, kwargs, argnum,
                                  batch_axis, torch_compile)
        return backend, args, x, sample, engine, why

    def op(*args, **kwargs):
        backend, args, x, sample, engine, why = decide(args, kwargs)
        if batch_axis is not None:
            v = transform.batch_verdict(backend, args, kwargs)
            if not v.proven:
                if not unbatched:
                    unbatched.append(make(f, argnum, None, api, plan, strategy=strategy,
                                          chunk_size=chunk_size, torch_compile=torch_compile))
                return _batch.vmapped(backend.name, lambda *a: unbatched[0](*a, **kwargs),
                                      args, batch_axis, x.shape[batch_axis], v.out_axis)
        call = plan(backend, x, sample, args, kwargs)
        if engine is None:
            out = _nested(backend.name, f, args, kwargs, argnum, batch_axis, call, chunk_size)
        else:
            out = engine(args, kwargs, call, chunk_size)
        if call.value is not None:
            out = _tree_add(backend.name, out,
                            _tree_map(backend.name, call.value, f(*args, **kwargs)))
        return out

    def explain(*args, **kwargs) -> FamilyExplanation:
        backend, args, x, sample, engine, why = decide(args, kwargs)
        call = plan(backend, x, sample, args, kwargs)
        notes = []
        if batch_axis is not None:
            v = transform.batch_verdict(backend, args, kwargs)
            notes.append(f"batch_axis: {v.reason}")
        if why is not None:
            notes.append(f"the traced engine cannot take f: {why}")
        if chunk_size is not None:
            notes.append(f"chunk_size={chunk_size}: directions in chunks (PyTorch: one "
                         "pass per chunk, recomputing f's value; JAX: a lax.map)")
        return FamilyExplanation(api, backend.name, sample, call,
                                 FAMILY if engine is not None else NESTED,
                                 strategy is not None, notes)

    op = functools.wraps(f)(op)
    op.__derivs_operator__ = api
    op.explain = explain
    return op


def _engine(name, transform, programs, f, args, kwargs, argnum, batch_axis, torch_compile):
    """``(run, None)`` for the traced family engine, or ``(None, why not)``."""
    if name == "torch":
        from .backends.torch_engine import _family, cache_key, guarded_get

        key = cache_key(args, kwargs)
        program = None if key is None else guarded_get(programs, key)
        if program is None:
            program = _family.prepare(f, args, kwargs, argnum, batch_axis, transform.cache)
            if torch_compile and not isinstance(program, _common.Fallback):
                program = _family.compiled(program)
            if key is not None:
                programs.put(key, program)
        if isinstance(program, _common.Fallback):
            return None, program.reason
        return functools.partial(_torch_run, program, argnum, batch_axis), None
    from .backends import jax_engine

    compiled = jax_engine.prepare(transform, args, kwargs)
    if isinstance(compiled, jax_engine.Fallback):
        return None, compiled.reason
    return functools.partial(_jax_run, compiled, batch_axis), None


def _torch_run(program, argnum, batch_axis, args, kwargs, call: Call, chunk_size):
    import torch

    from .backends.torch_engine import _family

    x = args[argnum]
    rows = _torch_rows(call, x, batch_axis)
    weights = torch.as_tensor(call.weights, dtype=x.dtype, device=x.device)
    drift = None if call.drift is None else torch.as_tensor(call.drift).to(x)
    n = rows.shape[0]
    step = chunk_size or max(n, 1)
    out = None
    for lo in range(0, max(n, 1), step):
        d = _family.Directions(rows[lo:lo + step], weights[lo:lo + step], call.order,
                               drift if lo == 0 else None)
        part = program(args, kwargs, d)
        out = part if out is None else _tree_add("torch", out, part)
    return out


def _torch_rows(call: Call, x, batch_axis):
    import torch

    from .backends.torch_engine import _family

    if call.per_sample:
        return torch.as_tensor(call.rows).to(x)
    rows = np.asarray(call.rows) if not isinstance(call.rows, torch.Tensor) else call.rows
    flat = rows.reshape(rows.shape[0], -1)
    return _family.shared_rows(flat, x, batch_axis)


def _jax_run(compiled, batch_axis, args, kwargs, call: Call, chunk_size):
    from .backends import jax_engine

    return jax_engine.run_directions(compiled, 0, call.rows, call.weights, call.order,
                                     batch_axis, per_sample=call.per_sample, top=call.drift,
                                     chunk_size=chunk_size)


def _nested(name, f, args, kwargs, argnum, batch_axis, call: Call, chunk_size):
    """``sum_n w_n D^K f[v_n] + Df[drift]`` by ``K`` nested JVPs per direction."""
    x = args[argnum]
    if name == "jax":
        import jax
        import jax.numpy as jnp

        jvp = lambda g, z, v: jax.jvp(g, (z,), (v,))[1]  # noqa: E731
        vmap, asarray = jax.vmap, (lambda r: jnp.asarray(r, x.dtype))
        expand = lambda v: jnp.broadcast_to(jnp.expand_dims(v, batch_axis % x.ndim),  # noqa: E731
                                            x.shape)
    else:
        import torch

        jvp = lambda g, z, v: torch.func.jvp(g, (z,), (v,))[1]  # noqa: E731
        vmap, asarray = torch.func.vmap, (lambda r: torch.as_tensor(r).to(x))
        expand = lambda v: v.unsqueeze(batch_axis % x.ndim).expand(x.shape)  # noqa: E731

    def g(z):
        return f(*args[:argnum], z, *args[argnum + 1:], **kwargs)

    def directional(v):
        if batch_axis is not None and not call.per_sample:
            v = expand(v)
        h = g
        for _ in range(call.order):
            h = _jvp_of(jvp, h, v)
        return h(x)

    rows = asarray(call.rows)
    if not call.per_sample:
        rows = rows.reshape((rows.shape[0],) + tuple(_common.sample_shape(tuple(x.shape),
                                                                          batch_axis)))
    weights = np.asarray(call.weights)
    out = None
    step = chunk_size or max(rows.shape[0], 1)
    for lo in range(0, rows.shape[0], step):
        part = vmap(directional)(rows[lo:lo + step])
        w = asarray(weights[lo:lo + step])
        part = _tree_map(name, lambda p, w=w: (p * w.reshape((-1,) + (1,) * (p.ndim - 1)))
                         .sum(0), part)
        out = part if out is None else _tree_add(name, out, part)
    if call.drift is not None:
        term = jvp(g, x, asarray(call.drift))
        out = term if out is None else _tree_add(name, out, term)
    if out is None:
        out = _tree_map(name, lambda o: o * 0, g(x))
    return out


def _jvp_of(jvp, h, v):
    return lambda z: jvp(h, z, v)


def _tree_map(name, fn, tree):
    if name == "jax":
        import jax

        return jax.tree_util.tree_map(fn, tree)
    import torch.utils._pytree as pytree

    return pytree.tree_map(fn, tree)


def _tree_add(name, a, b):
    if name == "jax":
        import jax

        return jax.tree_util.tree_map(lambda u, v: u + v, a, b)
    import torch.utils._pytree as pytree

    flat_a, spec = pytree.tree_flatten(a)
    return pytree.tree_unflatten([u + v for u, v in zip(flat_a, pytree.tree_leaves(b))], spec)


# -- the operators ------------------------------------------------------------------
def bilaplacian(f: Callable, argnum: int = 0, *, batch_axis: int | None = None,
                strategy: str | None = None, chunk_size: int | None = None,
                torch_compile: bool = False) -> Callable:
    """The Bi-Laplacian ``sum_ij d^4 f / dx_i^2 dx_j^2`` (the Laplacian of the
    Laplacian) over every coordinate of argument ``argnum``, exactly.

    One collapsed fourth-order Taylor pass along ``D^2`` directions: the ``D``
    units and the ``e_i +- e_j`` (NOTE [pair interpolation] in
    ``derivs.core._directions``), stacked on one axis. Each intermediate carries its
    value, three lower coefficients per direction and one summed fourth-order
    coefficient. ``strategy="nested-forward"``: four nested JVPs per direction.

    A vector- or array-valued ``f`` gives the Bi-Laplacian of each output component.
    ``batch_axis`` as in :func:`derivs.partial` (proven from ``f``'s graph).
    ``chunk_size=c`` carries ``c`` directions at a time (memory ``c / D^2`` of the
    whole family, for some speed). ``torch_compile=True`` (PyTorch) compiles the
    traced pass with ``torch.compile``.

    Example (``f = |x|^4`` has ``Delta^2 f = 8 D (D + 2)``):

      >>> import torch, derivs
      >>> f = lambda x: (x ** 2).sum() ** 2
      >>> derivs.bilaplacian(f)(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
      tensor(120., dtype=torch.float64)
    """
    def plan(backend, x, sample, args, kwargs):
        s = _directions.bilaplacian(_common.numel(sample))
        return Call(s.rows, s.weights, 4)

    return make(f, argnum, batch_axis, "derivs.bilaplacian", plan, strategy=strategy,
                chunk_size=chunk_size, torch_compile=torch_compile)


def diffusion_operator(f: Callable, sigma: Any, drift: Any = None, reaction: Any = None,
                       argnum: int = 0, *, batch_axis: int | None = None,
                       strategy: str | None = None, chunk_size: int | None = None,
                       torch_compile: bool = False) -> Callable:
    """The second-order operator ``tr(sigma sigma^T Hess f) + drift . grad f +
    reaction * f`` in argument ``argnum``, exactly, in one collapsed pass.

    It is written with the factor ``sigma`` (``C = sigma sigma^T``) because that is
    how the operators of diffusions are held: an SDE ``dX = b dt + s dW`` has the
    generator ``L u = 1/2 tr(s s^T Hess u) + b . grad u`` (Kolmogorov backward,
    Fokker-Planck, Black-Scholes, Feynman-Kac), so pass ``sigma = s / sqrt(2)``,
    ``drift = b``. The cost grows with the rank ``r`` of ``sigma`` (``r`` directions,
    the columns of ``sigma``), not with ``D^2``; the drift rides in the same pass as
    the input's second-order coefficient (``D^2 f[v] + Df[drift]`` of the jet
    ``x + t v + t^2 drift / 2``).

    * ``sigma``: a function of ``x`` (the argument as passed, batch axis included)
      returning ``x.shape + (r,)`` (column ``k`` is a direction field shaped like
      ``x``), or a constant array ``sample_shape + (r,)`` shared by every sample.
    * ``drift``: a function of ``x`` returning ``x.shape``, a constant array of the
      sample shape, or None.
    * ``reaction``: a function of ``x`` whose result multiplies ``f(x)``, a number, or
      None.

    A vector-valued ``f`` gives the operator per output component. For a general
    symmetric ``C`` (not a factor), :func:`derivs.differential_operator` with the
    terms ``(C_ij, (i, j))`` takes ``C``'s eigenvectors as directions.

    Example (Black-Scholes: ``1/2 s^2 S^2 V_SS + r S V_S - r V`` for ``V = S^2``):

      >>> import jax.numpy as jnp, derivs
      >>> s, r = 0.2, 0.05
      >>> op = derivs.diffusion_operator(lambda S: S[0] ** 2,
      ...                                sigma=lambda S: (s / 2 ** 0.5) * S[:, None],
      ...                                drift=lambda S: r * S, reaction=-r)
      >>> round(float(op(jnp.array([3.0]))), 6)  # s^2 S^2 + 2 r S^2 - r S^2 at S = 3
      0.81
    """
    api = "derivs.diffusion_operator"
    if sigma is None:
        raise TypeError(f"{api}: sigma is required (a function of x returning x.shape + "
                        "(r,), or a constant array sample_shape + (r,)); for the plain "
                        "Laplacian use derivs.laplacian.")
    for name, v in (("drift", drift), ("reaction", reaction)):
        if isinstance(v, (str, bool)):
            raise TypeError(f"{api}: {name} must be a function of x, an array, a number or "
                            f"None, got {v!r}.")

    def plan(backend, x, sample, args, kwargs):
        xs = tuple(x.shape)
        if callable(sigma):
            s = sigma(x)
            shape = tuple(getattr(s, "shape", ()))
            if shape[:-1] != xs or len(shape) != len(xs) + 1:
                raise ValueError(f"{api}: sigma(x) must have shape x.shape + (r,) = "
                                 f"{xs} + (r,), got {shape}.")
            rows, per_sample = _move_last_first(backend.name, s), True
        else:
            s = _as_array(backend.name, sigma, x)
            if tuple(s.shape[:-1]) != tuple(sample) or s.ndim != len(sample) + 1:
                raise ValueError(f"{api}: a constant sigma must have shape sample_shape + "
                                 f"(r,) = {tuple(sample)} + (r,), got {tuple(s.shape)}.")
            rows, per_sample = _move_last_first(backend.name, s), False
        r = rows.shape[0]
        b = None
        if drift is not None:
            b = drift(x) if callable(drift) else _as_array(backend.name, drift, x)
            if tuple(b.shape) == xs:
                pass
            elif tuple(b.shape) == tuple(sample) and batch_axis is not None:
                b = _expand_sample(backend.name, b, x, batch_axis)
            else:
                raise ValueError(f"{api}: drift must have x's shape {xs}"
                                 + (f" or the sample shape {tuple(sample)}"
                                    if batch_axis is not None else "")
                                 + f", got {tuple(b.shape)}.")
        value = None
        if reaction is not None:
            c = reaction(x) if callable(reaction) else reaction
            value = lambda out, c=c: c * out  # noqa: E731
        return Call(rows, np.ones(r), 2, per_sample, b, value)

    return make(f, argnum, batch_axis, api, plan, strategy=strategy, chunk_size=chunk_size,
                torch_compile=torch_compile)


def from_terms(f, classified: _directions.Classified, argnum, batch_axis, api, strategy,
               torch_compile) -> Callable:
    """The operator of a classified term set of ``differential_operator``."""
    s = classified.directions

    def plan(backend, x, sample, args, kwargs):
        drift = None
        if classified.drift is not None:
            d = _as_array(backend.name, classified.drift.reshape(sample), x)
            drift = d if batch_axis is None else _expand_sample(backend.name, d, x, batch_axis)
        value = None
        if classified.value != 0.0:
            value = lambda out, c=classified.value: c * out  # noqa: E731
        return Call(s.rows, s.weights, s.order, False, drift, value)

    return make(f, argnum, batch_axis, api, plan,
                strategy=None if strategy == "traced-jet" else strategy,
                torch_compile=torch_compile)


def _as_array(name, v, like):
    if name == "jax":
        import jax.numpy as jnp

        return jnp.asarray(v, like.dtype)
    import torch

    return torch.as_tensor(v).to(dtype=like.dtype, device=like.device)


def _move_last_first(name, s):
    if name == "jax":
        import jax.numpy as jnp

        return jnp.moveaxis(s, -1, 0)
    return s.movedim(-1, 0)


def _expand_sample(name, v, x, batch_axis):
    b = batch_axis % x.ndim
    if name == "jax":
        import jax.numpy as jnp

        return jnp.broadcast_to(jnp.expand_dims(v, b), x.shape)
    return v.unsqueeze(b).expand(x.shape)
