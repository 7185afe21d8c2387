"""Public transforms: ``partial``, ``partials``, ``value_and_partials``, ``explain``.

Each transform validates what it can up front, plans once (the plan depends on
the request only), and returns a function that dispatches on the framework of
the arrays it is called with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from . import _batch, _probes, _report, _validation, backends
from .backends import _common
from .core import _plan, _request
from .core._spec import Spec
from .core._cache import LRUCache
from .core._execute import run_plan


@dataclasses.dataclass(frozen=True)
class _Transform:
    """A validated request bound to ``fun``; calling it runs the plan."""

    fun: Callable
    api: str
    argnums: tuple[int, ...]
    has_aux: bool
    batch_axis: int | None
    keys: tuple[Any, ...]
    plan: _plan.Plan
    strategy: str | None = None
    torch_compile: bool = False
    batch_size: int | None = None  # samples per chunk of batch_axis (None: all at once)
    # Compiled derivative graphs of engines that trace (bounded, thread-safe).
    cache: Any = dataclasses.field(default=None, compare=False, repr=False)

    @functools.cached_property
    def spec(self) -> Spec:
        """The request as the engines take it (``core/_spec.py``), sharing ``cache``."""
        return Spec(self.fun, self.argnums, self.batch_axis, self.plan, self.has_aux,
                    self.torch_compile, self.api, self.cache)

    def resolve(self, backend, args: tuple, kwargs: dict):
        """``(strategy, compiled-or-None, notes)`` for this call."""
        engine = getattr(backend, "engine", None)
        if not backend.accepts_torch_compile and self.torch_compile:
            raise ValueError(
                f"{self.api}: torch_compile=True is for PyTorch functions; for {backend.name} "
                "functions wrap the transform in jax.jit instead.")
        if self.strategy == _plan.REVERSE:
            reason = self._reverse_blocker(backend, args, kwargs)
            if reason is not None:
                raise ValueError(f"{self.api}: strategy='reverse' cannot be used here: "
                                 f"{reason}. Pass strategy=None to choose automatically.")
            return _plan.REVERSE, None, []
        if (self.strategy is None and self.plan.reverse_is_cheaper
                and self._reverse_blocker(backend, args, kwargs) is None):
            return _plan.REVERSE, None, [
                f"reverse mode: one gradient (~{self.plan.estimated_cost(_plan.REVERSE):g} "
                f"f-evals) against ~{self.plan.estimated_cost(_plan.TRACED_JET):g} for "
                "forward jets"]
        if engine is None or self.strategy == _plan.NESTED_FORWARD:
            return _plan.NESTED_FORWARD, None, []
        entry = engine.prepare(self.spec, args, kwargs)
        if isinstance(entry, engine.Fallback):
            if self.strategy == _plan.TRACED_JET:
                raise ValueError(
                    f"{self.api}: strategy='traced-jet' cannot be used here: {entry.reason}. "
                    "Pass strategy=None to fall back to nested forward mode automatically.")
            note = f"traced-jet not used: {entry.reason}"
            # The next strategy that works: one gradient serves first-order requests
            # (and is the only exact mode through custom_vjp functions).
            if self.strategy is None and self._reverse_blocker(backend, args, kwargs) is None:
                return _plan.REVERSE, None, [note, "reverse mode: one gradient serves these "
                                             "first-order partials"]
            return _plan.NESTED_FORWARD, None, [note]
        return _plan.TRACED_JET, entry, [entry.note]

    def _reverse_blocker(self, backend, args: tuple, kwargs: dict) -> str | None:
        """Why a reverse plan (NOTE [reverse plans]) cannot serve this call, or None."""
        if not self.plan.first_order:
            return "it serves first-order partials (and the value) only"
        if self.has_aux:
            return "has_aux=True"
        if self.batch_axis is not None:
            return ("with batch_axis the gradient would sum over samples; vmap the "
                    "unbatched transform instead")
        shape = _probes.output_shape(self.spec, backend, args, kwargs)
        if shape is None:
            return "f's output is not one number"
        if math.prod(shape) != 1:
            return f"f's output has {math.prod(shape)} elements, not 1"
        return None

    def _twin(self, batch_axis: int | None, mapped: tuple | None = None,
              out_axis: int = 0) -> "_Transform":
        """This transform over the batch with another ``batch_axis`` and no
        ``batch_size`` (``mapped`` None), or the per-sample transform of f for the
        route ``mapped`` (NOTE [per-sample route]),
        built once each."""
        key = ("twin", batch_axis, mapped, out_axis)
        twin = self.cache.get(key)
        if twin is None:
            fun = self.fun if mapped is None else _batch.sample_function(
                self.fun, mapped, self.batch_axis, out_axis, self.has_aux)
            twin = dataclasses.replace(self, fun=fun, batch_axis=batch_axis, batch_size=None,
                                       cache=LRUCache(maxsize=32))
            self.cache.put(key, twin)
        return twin

    def _route(self, backend, args: tuple, kwargs: dict, verdict, chunk: bool):
        """The arguments the per-sample route maps, or the error when f cannot be run
        one sample at a time (NOTE [per-sample route])."""
        mapped = _batch.sample_route(verdict, backend, self.fun, args, kwargs, self.argnums,
                                     self.batch_axis, self.has_aux)
        if mapped is None:
            raise ValueError(f"{self.api}: " + _batch._cannot_split(self.batch_axis, chunk,
                                                                    verdict))
        return mapped

    def _chunked(self, backend, args: tuple, kwargs: dict, verdict):
        """``batch_size`` samples at a time (``_batch.chunked``: a ``lax.map`` of the
        per-sample transform in JAX, a loop of the batched one in PyTorch)."""
        out_axis = verdict.out_axis
        size = args[self.argnums[0]].shape[self.batch_axis]
        mapped = self._route(backend, args, kwargs, verdict, True)
        one, whole = self._twin(None, mapped, out_axis), self._twin(self.batch_axis)
        return list(_batch.chunked(backend, lambda *a: tuple(one(a, kwargs)[0]),
                                   lambda *a: tuple(whole(a, kwargs)[0]), args,
                                   self.batch_axis, size, out_axis, self.batch_size,
                                   mapped)), None

    def _vmapped(self, backend, args: tuple, kwargs: dict, verdict):
        """The per-sample transform vmapped over the samples (an undecided batch axis)."""
        out_axis = verdict.out_axis
        mapped = self._route(backend, args, kwargs, verdict, False)
        twin = self._twin(None, mapped, out_axis)
        size = args[self.argnums[0]].shape[self.batch_axis]
        if self.has_aux:
            # aux is what f returns for the batch, not per-sample pieces of it
            out = _batch.vmapped(backend, lambda *a: tuple(twin(a, kwargs)[0]), args,
                                 self.batch_axis, size, out_axis, mapped)
            return list(out), self.fun(*args, **kwargs)[1]
        return list(_batch.vmapped(backend, lambda *a: tuple(twin(a, kwargs)[0]), args,
                                   self.batch_axis, size, out_axis, mapped)), None

    def shapes_and_backend(self, args: tuple):
        if not args:
            raise TypeError(f"{self.api}: the transformed function was called with no "
                            "arguments; pass the arrays to differentiate at.")
        top = max(self.argnums)
        if top >= len(args):
            raise ValueError(
                f"{self.api}: argnums={_show_argnums(self.argnums)} selects argument {top}, "
                f"but the function was called with {len(args)} positional argument(s). "
                "Pass that argument positionally or lower argnums."
            )
        backend = backends.backend_for(args, self.api)
        selected = tuple(backend.as_input(args[a], a, self.api, self.batch_axis)
                         for a in self.argnums)
        shapes = [_common.sample_shape(tuple(s.shape), self.batch_axis) for s in selected]
        _request.check_ranges(self.plan.requests, [_common.numel(s) for s in shapes], shapes,
                              self.argnums, api=self.api, batch_axis=self.batch_axis)
        return backend, selected, shapes

    def with_selected(self, args: tuple, selected: tuple) -> tuple:
        """``args`` with the differentiated ones as converted by the backend (Python
        numbers become arrays: they must be traced as inputs, not constants)."""
        full = list(args)
        for slot, a in enumerate(self.argnums):
            full[a] = selected[slot]
        return tuple(full)

    def __call__(self, args: tuple, kwargs: dict) -> tuple[list[Any], Any]:
        if self.strategy != _plan.NESTED_FORWARD and self.batch_size is None:
            engine = backends.engine_for_plain_call(args)
            compiled = engine.lookup(self.spec, args, kwargs) if engine is not None else None
            if compiled is not None:  # checked when it was built for this signature
                return engine.execute(compiled, args, kwargs, self.plan.n_results), None
        backend, selected, _ = self.shapes_and_backend(args)
        args = self.with_selected(args, selected)
        if self.batch_axis is not None:
            verdict = _probes.batch_verdict(self.spec, backend, args, kwargs)
            size = args[self.argnums[0]].shape[self.batch_axis]
            if self.batch_size is not None and size > self.batch_size:
                return self._chunked(backend, args, kwargs, verdict)
            if not verdict.proven:
                return self._vmapped(backend, args, kwargs, verdict)
        strategy, compiled, _ = self.resolve(backend, args, kwargs)
        if compiled is not None:
            return backend.engine.execute(compiled, args, kwargs, self.plan.n_results), None

        def call(sel: tuple) -> tuple[Any, Any]:
            out = self.fun(*self.with_selected(args, sel), **kwargs)
            aux = None
            if self.has_aux:
                if not (isinstance(out, (tuple, list)) and len(out) == 2):
                    raise TypeError(
                        f"{self.api}: has_aux=True requires f to return a pair "
                        f"(output, aux), got {type(out).__name__}. Return `out, aux` or "
                        "pass has_aux=False."
                    )
                out, aux = out
            backend.check_output(out, self.api)
            return out, aux

        if strategy == _plan.REVERSE:
            return backend.first_order_reverse(lambda sel: call(sel)[0], selected,
                                               self.plan.requests), None
        results, aux = run_plan(backend, self.plan, call, selected, self.batch_axis)
        if self.plan.operator is not None:  # nested forward mode: sum the terms
            results = [_combine(self.plan.operator, results)]
        return results, aux


def _combine(coefficients, results):
    """``sum c * r`` over matching output pytrees."""
    def tree_sum(*leaves):
        total = None
        for c, leaf in zip(coefficients, leaves):
            total = leaf * c if total is None else total + leaf * c
        return total
    first = results[0]
    if isinstance(first, (list, tuple)):
        return type(first)(tree_sum(*parts) for parts in zip(*results))
    if isinstance(first, dict):
        return {k: tree_sum(*(r[k] for r in results)) for k in first}
    return tree_sum(*results)


def _build(fun: Callable, specs: Sequence[Any], argnums: Any, has_aux: bool,
           batch_axis: Any, *, api: str, allow_value: bool, extra_value: bool = False,
           strategy: str | None = None, torch_compile: bool = False,
           operator: Sequence[float] | None = None, batch_size: Any = None) -> _Transform:
    if not callable(fun):
        raise TypeError(
            f"{api}: f must be callable, got {type(fun).__name__}. Pass the function "
            "itself, e.g. derivs.partial(f, (0, 1)), not the result of calling it."
        )
    if not isinstance(has_aux, bool):
        raise TypeError(f"{api}: has_aux must be True or False, got {has_aux!r}.")
    _validation.check_torch_compile(api, torch_compile)
    _validation.check_batch_axis(api, batch_axis)
    _batch.check_batch_size(api, batch_size, batch_axis)
    if batch_size is not None and has_aux:
        raise ValueError(f"{api}: batch_size with has_aux=True is not supported: f's aux "
                         "for the whole batch cannot be pieced together from chunks. Pass "
                         "batch_size=None, or call the transform on slices yourself.")
    if strategy is not None and strategy not in _plan.STRATEGIES:
        raise ValueError(f"{api}: strategy={strategy!r} is not one of None (automatic), "
                         + ", ".join(repr(k) for k in _plan.STRATEGIES) + ".")
    argnums_t, is_tuple = _request.normalize_argnums(argnums, api)
    requests = [_request.parse_index(s, argnums_t, is_tuple, api=api, allow_value=allow_value)
                for s in specs]
    keys = tuple(_request.request_key(s) for s in specs)
    if extra_value:
        requests.append(())
    return _Transform(fun, api, argnums_t, has_aux, batch_axis, keys,
                      _plan.make_plan(requests, operator), strategy, torch_compile,
                      batch_size, LRUCache(maxsize=32))


def _wrap(fun: Callable, transform: _Transform, finish: Callable) -> Callable:
    @functools.wraps(fun)
    def transformed(*args, **kwargs):
        results, aux = backends.checked_call(fun, args, transform.api,
                                             lambda: transform(args, kwargs))
        return finish(results, aux)

    transformed.__derivs_transform__ = transform
    return _report.attach(transformed, lambda *args: _explain(transform, args))


def partial(f: Callable, index: Any, argnums: int | Sequence[int] = 0,
            has_aux: bool = False, *, batch_axis: int | None = None,
            strategy: str | None = None, torch_compile: bool = False,
            batch_size: int | None = None) -> Callable:
    """One partial derivative of ``f``, as a function with ``f``'s signature.

    Args:
      f: a function of JAX arrays or of PyTorch tensors returning floating-point
        arrays (any shape, or a pytree of them).
      index: the multi-index of the derivative. With an int ``argnums``: an int
        ``i`` (first derivative ``df/dx_i``) or a tuple of ints such as ``(0, 2, 4)``
        (``d^3 f / dx0 dx2 dx4``) or ``(0, 0)`` (``d^2 f / dx0^2``), where ``i`` is
        the row-major flat position in the argument (a 0-d argument has the single
        index 0). With a tuple ``argnums``: a tuple of ``(argnum, flat_index)``
        pairs, e.g. ``((0, 3), (1, 0))`` for ``d^2 f / dx_3 dy_0``.
      argnums: which positional argument(s) the index refers to.
      has_aux: ``f`` returns ``(output, aux)``; the transform then returns
        ``(derivative, aux)``.
      batch_axis: when not None, every argument in ``argnums`` holds independent
        samples along this axis, indices refer to positions within one sample,
        and the result holds each sample's own partial. One pass serves the whole
        batch. Valid only when output sample ``b`` depends on input sample ``b``
        alone (the Jacobian is block-diagonal over the batch): elementwise
        functions, per-sample models. Otherwise use ``jax.vmap`` /
        ``torch.func.vmap`` over the unbatched transform. derivs proves this from
        ``f``'s graph on the first call per signature (NOTE [batch axis proof] in
        ``_batch.py``): a wrong batch axis is a ``ValueError``, an undecidable one
        runs vmapped over the samples.
      batch_size: with ``batch_axis``, bound memory over the samples: ``b`` samples
        at a time (JAX: ``jax.lax.map`` of the per-sample transform, vmapped within
        each chunk of ``b``; PyTorch: a Python loop of the batched transform over
        slices). Same values; each chunk costs a pass, so small chunks are slower.
      strategy: None (automatic, see :func:`explain`), ``"nested-forward"``,
        ``"traced-jet"`` (``f`` traced to an ATen graph or a jaxpr and propagated as
        Taylor jets; fails with the reason instead of falling back when ``f``
        cannot be traced) or ``"reverse"`` (one gradient: first-order partials of a
        scalar output; chosen automatically when it is cheaper, e.g. for three or
        more first-order partials).
      torch_compile: PyTorch only: run the built derivative graph through
        ``torch.compile`` (compiled on the first call per argument signature, which
        takes seconds to a minute; then it runs fused). Ignored where the engine falls
        back to nested forward mode (``explain`` says so).

    Returns:
      A function of the same arguments as ``f`` returning the derivative, shaped
      like ``f``'s output. Every argument other than the differentiated
      coordinates is held fixed, even if the caller computed one argument from
      another: this is the partial, never the total derivative. The result is
      differentiable again (``jax.grad``, ``loss.backward()``, another
      ``derivs.partial``), composes with ``jit``/``vmap``, and writes nothing to
      ``.grad``.

    Example (seed problem 2):

      >>> import jax, jax.numpy as jnp, derivs
      >>> x = jnp.arange(1.0, 31.0, dtype=jnp.float32).reshape(6, 5)
      >>> jax.vmap(derivs.partial(jnp.prod, (0, 2, 4)))(x)
      Array([  8.,  63., 168., 323., 528., 783.], dtype=float32)

    The partial of a two-argument function, and the batched one-liner:

      >>> import torch
      >>> f = lambda x, y: 100 + (x + 0.01 * y**2) ** 2
      >>> x = torch.tensor([[1.0], [2.0]]); y = 3 * x
      >>> derivs.partial(f, 0, batch_axis=0)(x, y)  # == 2 * (x + 0.01 * y**2)
      tensor([[2.1800],
              [4.7200]])
    """
    t = _build(f, [index], argnums, has_aux, batch_axis, api="derivs.partial",
               allow_value=False, strategy=strategy,
               torch_compile=torch_compile, batch_size=batch_size)
    return _wrap(f, t, lambda r, aux: (r[0], aux) if has_aux else r[0])


def partials(f: Callable, requests: Sequence[Any], argnums: int | Sequence[int] = 0,
             has_aux: bool = False, *, batch_axis: int | None = None,
             strategy: str | None = None, torch_compile: bool = False,
             batch_size: int | None = None) -> Callable:
    """Several partial derivatives of ``f`` at once, sharing work; returns a dict.

    ``requests`` is a list of indices spelled as for :func:`partial`; ``()`` means
    the value of ``f``. The transformed function returns a dict keyed by each
    request exactly as written (lists become tuples). The options are
    :func:`partial`'s. Requests contained in one another share a pass: ``[(0,), (0, 2), (0, 2, 4)]`` costs one nested
    third-order pass, not three (see :func:`explain`).

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
      >>> out = derivs.partials(jnp.prod, [(), (0,), (0, 2), (0, 2, 4)])(x)
      >>> {k: float(v) for k, v in out.items()}
      {(): 120.0, (0,): 120.0, (0, 2): 40.0, (0, 2, 4): 8.0}
    """
    api = "derivs.partials"
    specs = _check_request_list(requests, api)
    t = _build(f, specs, argnums, has_aux, batch_axis, api=api, allow_value=True,
               strategy=strategy, torch_compile=torch_compile, batch_size=batch_size)

    def finish(results, aux):
        d = dict(zip(t.keys, results))
        return (d, aux) if has_aux else d

    return _wrap(f, t, finish)


def value_and_partials(f: Callable, requests: Sequence[Any],
                       argnums: int | Sequence[int] = 0, has_aux: bool = False, *,
                       batch_axis: int | None = None, strategy: str | None = None,
                       torch_compile: bool = False, batch_size: int | None = None) -> Callable:
    """The value of ``f`` and several partials, from the same passes (no second
    forward evaluation). Returns ``(value, dict)``, or ``((value, aux), dict)``
    with ``has_aux=True`` (as ``jax.value_and_grad``). The options are :func:`partial`'s.

    Example:

      >>> import torch, derivs
      >>> f = lambda x: (x[0] ** 2 * x[1]).sin()
      >>> value, d = derivs.value_and_partials(f, [0, (0, 1)])(torch.tensor([1.0, 2.0]))
      >>> round(float(value), 4), round(float(d[0]), 4), round(float(d[(0, 1)]), 4)
      (0.9093, -1.6646, -4.4695)
    """
    api = "derivs.value_and_partials"
    specs = _check_request_list(requests, api)
    t = _build(f, specs, argnums, has_aux, batch_axis, api=api, allow_value=True,
               extra_value=True, strategy=strategy,
               torch_compile=torch_compile, batch_size=batch_size)

    def finish(results, aux):
        value, d = results[-1], dict(zip(t.keys, results[:-1]))
        return ((value, aux), d) if has_aux else (value, d)

    return _wrap(f, t, finish)


class Explanation(_report.Report):
    """The plan derivs chose for a request; ``str()`` gives a readable report.

    Attributes: ``strategy``, ``passes`` (each with its ``directions``),
    ``estimated_cost`` (in evaluations of ``f``), ``backend`` (None without
    example arguments), ``notes`` (why a strategy was or was not used) and
    ``plan`` (the full :class:`derivs.core._plan.Plan`).
    """

    def __init__(self, plan: _plan.Plan, strategy: str, report: str, backend: str | None,
                 notes: Sequence[str] = ()):
        self.plan = plan
        self.notes = list(notes)  # why a strategy was or was not used
        self.strategy = strategy
        self.passes = plan.passes_for(strategy)
        self.estimated_cost = plan.estimated_cost(strategy)
        self.backend = backend
        self._report = report

    def text(self) -> str:
        return self._report


def explain(f: Callable, *args: Any, argnums: int | Sequence[int] = 0,
            batch_axis: int | None = None, strategy: str | None = None) -> Explanation:
    """The plan derivs uses: strategy, passes, and an estimated cost.

    Two spellings:

    * ``explain(transformed, *example_args)`` for a function made by
      :func:`partial`, :func:`partials` or :func:`value_and_partials`;
    * ``explain(sparse_derivative, *example_args)`` for ``derivs.jacobian(f,
      sparse=True)`` / ``derivs.hessian(f, sparse=True)``: a
      ``SparseExplanation`` (pattern, colors, every ordering tried);
    * ``explain(operator, *example_args)`` for :func:`laplacian` /
      :func:`hessian_diagonal`: the strategy, the direction layout and the cost
      model's estimates;
    * ``explain(f, request, *example_args, argnums=..., batch_axis=...)`` where
      ``request`` is one index (an int or a tuple, as for :func:`partial`) or a
      list of indices (as for :func:`partials`).

    With example arguments, the backend is resolved and index ranges are checked.

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> e = derivs.explain(jnp.prod, [(0,), (0, 2), (0, 2, 4)], jnp.ones(5))
      >>> e.strategy, len(e.passes), e.estimated_cost
      ('traced-jet', 1, 27.0)
    """
    explain_self = _report.hook(f)  # anything derivs made explains itself
    if explain_self is not None:
        return explain_self(*args)
    if not args:
        raise TypeError(
            "derivs.explain(f, request, *example_args): missing the request; e.g. "
            "derivs.explain(f, (0, 2), x), or pass a function made by derivs.partial.")
    request, *rest = args
    specs = (_check_request_list(request, "derivs.explain")
             if isinstance(request, list) else [request])
    t = _build(f, specs, argnums, False, batch_axis, api="derivs.explain",
               allow_value=True, strategy=strategy)
    return _explain(t, tuple(rest))


def _explain(t: _Transform, args: tuple) -> Explanation:
    """The plan of transform ``t`` (at ``args`` when given)."""
    backend_name, shapes, notes = None, None, []
    strategy = t.strategy or _plan.NESTED_FORWARD
    if args:
        backend, selected, shapes = t.shapes_and_backend(args)
        backend_name = backend.name
        full = t.with_selected(args, selected)
        strategy, _, notes = t.resolve(backend, full, {})
        if t.batch_axis is not None:
            verdict = _probes.batch_verdict(t.spec, backend, full, {})
            notes = [f"batch_axis: {verdict.reason}"] + (
                [] if verdict.proven else ["the strategy runs per sample under vmap"]) + notes
            if t.batch_size is not None:
                notes.insert(1, f"batch_size={t.batch_size}: the samples run {t.batch_size} "
                             "at a time (JAX: jax.lax.map of the per-sample transform; "
                             "PyTorch: a loop over slices), one pass per chunk")
    elif t.strategy is None:
        notes = ["PyTorch calls use traced-jet when f can be traced (pass example arguments "
                 "to see the decision)"]
    report = _plan.describe(t.plan, strategy, keys=t.keys, argnums=t.argnums,
                            backend=backend_name, shapes=shapes, batch_axis=t.batch_axis,
                            notes=notes, batch_size=t.batch_size)
    return Explanation(t.plan, strategy, report, backend_name, notes)


def _check_request_list(requests: Any, api: str) -> list[Any]:
    if isinstance(requests, tuple) and requests and all(
            isinstance(r, int) and not isinstance(r, bool) for r in requests):
        raise TypeError(
            f"{api}: requests={requests!r} is ambiguous: pass a list of indices, e.g. "
            f"[{requests!r}] for the single derivative {requests!r}, or "
            f"{list(requests)!r} for the first derivatives of each coordinate."
        )
    if not isinstance(requests, (list, tuple)):
        raise TypeError(
            f"{api}: requests must be a list of indices such as [(0,), (0, 2)], got "
            f"{type(requests).__name__}."
        )
    if not requests:
        raise ValueError(f"{api}: requests is empty; ask for at least one index, e.g. [(0,)].")
    return list(requests)


def _show_argnums(argnums: tuple[int, ...]) -> str:
    return str(argnums[0]) if len(argnums) == 1 else str(argnums)
