"""Collapsed operators over a family of directions: ``bilaplacian``,
``diffusion_operator``, and the term sets of ``differential_operator`` that are
one (``core._directions.classify``).

Each is ``sum_n w_n D^K f[v_n] (+ Df[drift]) (+ c f)`` for directions ``v_n`` and
weights ``w_n`` from ``core._directions``, computed in one collapsed Taylor pass
with the directions stacked on one axis: the value and the ``K - 1`` lower
coefficients of every direction, and one summed top coefficient, per
intermediate (``torch_engine.family_program``; JAX: ``jax_engine.run_directions``).
``strategy="nested-forward"`` takes ``K`` nested JVPs per direction instead (the
reference, and what runs when the engine cannot take ``f``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _api, _batch, _conventions, _probes, _report, backends
from .core import _ledger
from ._validation import check_operator_options, operator_entry, operator_input
from .backends import _common
from .core import _directions
from .core._cache import LRUCache

FAMILY = "traced-jet"
NESTED = "nested-forward"
STRATEGIES = (FAMILY, NESTED)


@dataclasses.dataclass
class Call:
    """One call's operator: ``sum c * d^alpha f`` over ``terms`` (multi-indices
    over seed groups), with group ``g`` seeded by ``seeds[g]`` (``(G, *sample)``
    shared by every sample, or ``(G, *x.shape)`` with ``per_sample``; ``units``:
    the seeds are the unit coordinates), plus ``Df[drift]`` (drift shaped like x)
    and the term of f's value."""

    seeds: Any
    terms: tuple
    per_sample: bool = False
    drift: Any = None
    value: Callable[[Any], Any] | None = None  # f's output -> its term, or None
    units: bool = False
    # read: each term's value on its own, stacked first (``c * d^alpha f`` per term),
    # instead of their sum (an estimator's standard error needs its samples)
    read: bool = False
    # picks: the seeds are ``pick_scale * e_{picks[g]}`` (flat sample indices, possibly
    # traced), so an engine may gather where it would multiply (NOTE [picked seeds]);
    # ``seeds`` still holds them dense for every other path
    picks: Any = None
    pick_scale: float = 1.0
    # per object: dataclasses.replace (e.g. another drift) starts an empty one
    memo: dict = dataclasses.field(default_factory=dict, repr=False, compare=False,
                                   init=False)

    @property
    def order(self) -> int:
        return max(len(a) for _, a in self.terms)

    def univariate(self) -> tuple[np.ndarray, int] | None:
        """``(weights, K)`` when every term is a pure ``K``-th derivative along one
        group (the seeds are then the directions), else None."""
        k = self.order
        weights = np.zeros(len(self.seeds))
        for c, alpha in self.terms:
            if len(alpha) != k or len(set(alpha)) != 1:
                return None
            weights[alpha[0]] += c
        return weights, k

    def as_univariate(self) -> "Call":
        """The same operator with pure terms along directions (NOTE [pair
        interpolation] for mixed fourth-order terms on unit seeds)."""
        if self.univariate() is not None:
            return self
        if "univariate" not in self.memo:
            rows, weights, k = self.directions()
            self.memo["univariate"] = dataclasses.replace(
                self, seeds=rows, units=False, picks=None,
                terms=tuple((float(w), (n,) * k) for n, w in enumerate(weights)))
        return self.memo["univariate"]

    def directions(self) -> tuple[Any, np.ndarray, int]:
        """``(rows, weights, K)``: the operator as ``sum_n w_n D^K f[v_n]``."""
        uni = self.univariate()
        if uni is not None:
            return self.seeds, uni[0], uni[1]
        # unit seeds and d^4 / dx_i^2 dx_j^2 terms: NOTE [pair interpolation]
        n = len(self.seeds)
        c = np.zeros((n, n))
        for coef, (i, _, j, _) in self.terms:
            c[i, j] += coef
        d = _directions.fourth_order_pairs(c)
        return d.rows, d.weights, 4


class FamilyExplanation(_report.Report):
    """What a collapsed operator does for given arguments: the seeds, the order,
    the layout that runs and why. Made by ``derivs.explain(op, *example_args)``."""

    def __init__(self, api, backend, sample, call: Call, strategy, layout, requested, notes):
        self.api, self.backend, self.sample = api, backend, sample
        self.groups, self.terms, self.order = len(call.seeds), len(call.terms), call.order
        self.strategy, self.layout, self.requested = strategy, layout, requested
        self.notes, self.drift = list(notes), call.drift is not None

    def text(self) -> str:
        lines = [f"{self.api} ({self.backend}), sample shape {self.sample}: {self.terms} "
                 f"term(s) of order <= {self.order} over {self.groups} seed direction(s)"
                 + (", plus the drift's first-order term" if self.drift else ""),
                 f"  strategy: {self.strategy} "
                 + ("(requested)" if self.requested else "(automatic)")]
        lines.append("  layout: " + _LAYOUTS[self.layout])
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)



_LAYOUTS = {
    "stacked": "collapsed Taylor mode, stacked: every intermediate carries its value, the "
               "coefficients below the top order as one stacked tensor (one op per rule) "
               "and one summed top coefficient",
    "stacked pairs": "collapsed Taylor mode, stacked, along the D^2 pair directions of NOTE "
                     "[pair interpolation] (contiguous slices, no gathers)",
    "family": "collapsed Taylor mode over a vmapped family of directions (one lane per "
              "direction, the top coefficient summed across lanes)",
    "coordinate groups": "collapsed Taylor mode with one coordinate group per coordinate "
                         "(unrolled, one op per coefficient; NOTE [mixed-term layout])",
    "nested": "nested JVPs, order-many per direction, vmapped over the directions",
}


class Machine:
    """The collapsed-operator machine for one ``f`` in argument ``argnum``: it runs
    any ``Call`` (terms over seed directions, a drift, a value term) on the traced
    engine when it can take ``f``, else by nested JVPs. The exact operators
    (:func:`make`) and the estimators (``_estimators``, a new Call per key) share
    it; its cache holds the PyTorch capture and program, the output-shape probe
    and the batch-axis verdict, per argument signature under the state guard."""

    def __init__(self, f: Callable, argnum: int, batch_axis: int | None, api: str, *,
                 strategy: str | None = None, torch_compile: bool = False):
        self.f, self.argnum, self.batch_axis, self.api = f, argnum, batch_axis, api
        self.strategy, self.torch_compile = strategy, torch_compile
        self.spec = _probes.operator_spec(f, argnum, batch_axis, api)
        self.cache = LRUCache(maxsize=64)  # programs per signature, layouts per term set

    def decide(self, backend, args, kwargs, call: Call):
        """``(engine, layout, why)``: the engine's run (None: nested JVPs), the
        layout, and why the engine is not used."""
        if self.strategy == NESTED:
            return None, "nested", None
        return _engine(backend, self.spec, self.cache, self.f, args, kwargs, self.argnum,
                       self.batch_axis, call, self.torch_compile)

    def run(self, backend, args, kwargs, call: Call, chunk_size: int | None = None):
        engine, _, _ = self.decide(backend, args, kwargs, call)
        if engine is None:
            out = _nested(backend.name, self.f, args, kwargs, self.argnum, self.batch_axis,
                          call, chunk_size)
        else:
            out = engine(args, kwargs, call, chunk_size)
        if call.value is not None:
            out = backend.tree_add(out, backend.tree_map(call.value, self.f(*args, **kwargs)))
        return out

    def explain(self, backend, args, kwargs, call: Call, sample, notes: list,
                chunk_size: int | None = None) -> FamilyExplanation:
        engine, layout, why = self.decide(backend, args, kwargs, call)
        notes = list(notes)
        if why is not None:
            notes.append(why)
        if layout in ("stacked", "stacked pairs"):
            c = call.as_univariate() if layout == "stacked pairs" else call
            stacked = _layout(self.cache, c.terms, len(c.seeds), None, c.read)[0]
            notes.append(f"{stacked.size} stacked coefficient rows per intermediate")
            if layout == "stacked" and stacked.contracted is not None:
                notes.append("the Bi-Laplacian's rows (gradient, Hessian, gradient of the "
                             "Laplacian): elementwise ops and products by contractions, "
                             "not gathered products (NOTE [contracted Bi-Laplacian])")
        if call.picks is not None and engine is not None:
            notes.append(_picked_note(engine, args[self.argnum], self.batch_axis,
                                      call.per_sample))
        replays = getattr(getattr(engine, "args", (None,))[0], "replays", None)
        if replays is not None:  # PyTorch eager: NOTE [replay]
            notes.append(replays.describe(picked=call.picks is not None and not call.per_sample))
        if layout == "coordinate groups":
            t = _group_transforms(self.spec, self.argnum, self.batch_axis, self.cache, call,
                                  chunk_size, self.torch_compile)[0]
            inner = _api.explain(_api._wrap(self.f, t, lambda r, aux: r[0]), *args, **kwargs)
            notes.append(f"the coordinate groups run as {inner.strategy}"
                         + "".join(f"; {n}" for n in inner.notes))
        if chunk_size is not None:
            notes.append(f"chunk_size={chunk_size}: the terms in chunks (PyTorch: one pass "
                         "per chunk, each recomputing f's value; JAX: a lax.map or one "
                         "pass per chunk)")
        return FamilyExplanation(self.api, backend.name, sample, call,
                                 FAMILY if engine is not None else NESTED, layout,
                                 self.strategy is not None, notes)


def _picked_note(engine, x, batch_axis, per_sample: bool) -> str:
    """What NOTE [picked seeds] does for this call, read off the engine's program."""
    head = "picked seeds (NOTE [picked seeds]): "
    if per_sample:
        return head + "not used: the seeds are per sample, so they run dense"
    if engine.func is _torch_run:
        if not hasattr(engine.args[0], "picked_reads"):
            return head + "not used: torch_compile=True runs the program on the dense seeds"
        gathered, dense = engine.args[0].picked_reads(x)
        if not gathered:
            return head + ("not used: x does not enter a matrix product as a (batch, n) "
                           "left factor, so every use of x reads the dense one-hot seeds")
        return head + (f"{gathered} matrix product(s) of x read their weight's rows at the "
                       f"drawn coordinates" + (f"; {dense} other use(s) of x read the "
                                               "dense one-hot seeds" if dense else ""))
    return head + ("each direction's seed is one position of x" + (
        "" if batch_axis is None else " in each sample") + ", so a dense layer on x reads "
        "its weight's row there; other uses see the seed as a narrow coefficient or dense")


def make(f: Callable, argnum: int, batch_axis: int | None, api: str,
         plan: Callable, *, strategy: str | None = None, chunk_size: int | None = None,
         torch_compile: bool = False, batch_size: int | None = None,
         whole_batch: bool = False) -> Callable:
    """The operator ``plan(backend, x, sample, batch_axis) -> Call`` of ``f`` (the
    batch axis passed in: a vmapped call plans one sample). ``whole_batch``: the
    plan calls the user's functions of ``x`` (a diffusion's sigma, drift,
    reaction), documented to take the argument as passed, batch axis included, so
    no route may plan single samples (``SampleRoutes(whole_batch=True)``)."""
    check_operator_options(api, f, argnum, batch_axis, strategy, STRATEGIES, chunk_size,
                           batch_size, torch_compile, "terms")
    machine = Machine(f, argnum, batch_axis, api, strategy=strategy,
                      torch_compile=torch_compile)
    routes = _batch.SampleRoutes(
        functools.partial(_probes.batch_verdict, machine.spec),
        lambda fun, axis, size: make(fun, argnum, axis, api, plan, strategy=strategy,
                                     chunk_size=chunk_size, torch_compile=torch_compile,
                                     batch_size=size, whole_batch=whole_batch),
        batch_axis, batch_size, f, (argnum,), whole_batch=whole_batch)

    def run(backend, args, x, sample, kwargs):
        return machine.run(backend, args, kwargs, plan(backend, x, sample, batch_axis),
                           chunk_size)

    def explain(*args, **kwargs) -> FamilyExplanation:
        backend, args, x, sample = operator_input(api, args, argnum, batch_axis, torch_compile)
        call = plan(backend, x, sample, batch_axis)
        notes = routes.notes(backend, args, kwargs)
        if (first := ledger.note()) is not None:
            notes.append(first)
        return machine.explain(backend, args, kwargs, call, sample, notes, chunk_size)

    ledger = _ledger.Ledger()  # NOTE [first-call ledger]
    op = operator_entry(api, f, argnum, batch_axis, torch_compile, routes, run, ledger)
    _report.attach(op, explain)
    return op


def _layout(cache, terms: tuple, groups: int, chunk_size: int | None,
            read: bool = False) -> list:
    """The stacked layouts of ``terms`` in chunks of ``chunk_size`` terms (one
    for None), cached by the term set; ``read``: the terms' multi-indices are read
    off the outputs one by one (``Call.read``)."""
    from .core._stacked import Layout

    key = ("layouts", groups, id(terms), chunk_size, read)  # plans reuse their term tuples
    hit = cache.get(key)
    if hit is None or hit[0] is not terms:
        step = chunk_size or max(len(terms), 1)
        chunks = [terms[lo:lo + step] for lo in range(0, len(terms), step)]
        hit = (terms, [Layout(groups, (), read=[a for _, a in c]) if read else Layout(groups, c)
                       for c in chunks])
        cache.put(key, hit)
    return hit[1]


def _engine(backend, spec, cache, f, args, kwargs, argnum, batch_axis, call: Call,
            torch_compile):
    """``(run, layout, None)`` for a traced engine, or ``(None, "nested", why)``."""
    if backend.stacked_family:  # PyTorch: the stacked family program
        from .backends import torch_engine

        layout = "stacked"
        if call.univariate() is None:
            contracted = _layout(cache, call.terms, len(call.seeds), None)[0].contracted
            layout = mixed_layout(backend, args[argnum].device.type, contracted is not None)
        if layout == "coordinate groups":
            return functools.partial(_groups, spec, argnum, batch_axis, cache,
                                     torch_compile), layout, None
        program = torch_engine.family_program(spec, args, kwargs, cache, torch_compile)
        if isinstance(program, _common.Fallback):
            return None, "nested", f"the traced engine cannot take f: {program.reason}"
        return (functools.partial(_torch_run, program, cache, argnum, batch_axis,
                                  layout == "stacked pairs"), layout, None)
    if call.univariate() is None:
        return functools.partial(_groups, spec, argnum, batch_axis, cache, False), \
            mixed_layout(backend, None, False), None
    from .backends import jax_engine

    compiled = jax_engine.prepare(spec, args, kwargs)
    if isinstance(compiled, jax_engine.Fallback):
        return None, "nested", f"the traced engine cannot take f: {compiled.reason}"
    return functools.partial(_jax_run, compiled, batch_axis, argnum), "family", None


# NOTE [mixed-term layout]: mixed fourth-order terms (the Bi-Laplacian's
# d^4 / dx_i^2 dx_j^2) have three layouts: coordinate groups (unrolled, one
# coefficient per multi-index, cache-sized ops), stacked mixed rows (unit seeds;
# D + D (D + 1) / 2 + D rows with the third level merged, NOTE [merged rows]) and
# stacked pairs (the D^2 pair directions of NOTE [pair interpolation]; 3 D^2 rows,
# contiguous slices). A general term set's mixed rows run gathered products (one
# per Faa di Bruno entry); the Bi-Laplacian's run contractions (NOTE [contracted
# Bi-Laplacian]). On CPU (PyTorch, D = 10, tanh MLP 10-256-256-256-1, 512 points,
# as a ratio to the nested Laplacian of the Laplacian; ``benchmarks/taylor.py``,
# 2026-12-02, three runs): contracted mixed rows 0.12-0.13x, coordinate groups
# 0.49-0.51x, pairs 0.34-0.38x, mixed rows by tables 0.39-0.40x (on 2026-12-01
# coordinate groups measured 0.09-0.13x on another machine). So the Bi-Laplacian
# takes the mixed rows on every device: on a GPU they also have the fewest rows (75
# against 300 for the pairs at D = 10, so a quarter of the matmul work) and about
# ten kernels per op (unmeasured there so far; the GPU script measures all three). Other term sets
# keep the older rule: on an H200 the coordinate groups were launch-bound (1.06x),
# so launch-bound devices take the stacked pairs, CPUs the coordinate groups.
def mixed_layout(backend, device_type: str | None, contracted: bool) -> str:
    """The layout of mixed fourth-order terms (NOTE [mixed-term layout]): stacked
    mixed rows for a Bi-Laplacian (``contracted``), else stacked pairs where the
    adapter says the device is launch-bound, else coordinate groups."""
    if contracted:
        return "stacked"
    return "stacked pairs" if backend.launch_bound(device_type) else "coordinate groups"


def _torch_run(program, cache, argnum, batch_axis, pairs, args, kwargs, call: Call,
               chunk_size):
    import torch

    from .backends import torch_engine

    if pairs:
        call = call.as_univariate()
    x = args[argnum]
    if call.per_sample:
        seeds = torch.as_tensor(call.seeds).to(x)
    elif call.units:
        seeds = torch_engine.unit_seeds(x, batch_axis)
    else:
        flat = _device_constant(call, "seeds", x)
        seeds = torch_engine.shared_rows(flat.reshape(flat.shape[0], -1), x, batch_axis)
    drift = None if call.drift is None else _device_constant(call, "drift", x)
    fw = backends.backend_named("torch")
    picks = None if call.picks is None or call.per_sample else (call.picks, call.pick_scale)
    parts = []
    for k, layout in enumerate(_layout(cache, call.terms, len(call.seeds), chunk_size,
                                       call.read)):
        parts.append(program(args, kwargs, torch_engine.Seeds(
            layout, seeds, drift if k == 0 else None, picks)))
    if call.read:  # (terms, *out): each term's coefficient times its value
        weights = torch.as_tensor([c for c, _ in call.terms], dtype=x.dtype, device=x.device)
        return fw.tree_map(lambda *ps: torch.cat(ps) * weights.reshape(
            (-1,) + (1,) * (ps[0].ndim - 1)), *parts)
    out = parts[0]
    for part in parts[1:]:
        out = fw.tree_add(out, part)
    return out


def _device_constant(call: Call, field: str, x):
    """``call.<field>`` as a tensor like ``x``, made once per dtype and device
    when it is a NumPy constant (NOTE [device constants] in torch_engine._family);
    a user's tensor is read live (it may be trained), and a trace's tensors die
    with the trace."""
    import torch

    from .backends import torch_engine

    value = getattr(call, field)
    if isinstance(value, torch.Tensor):
        return value.to(x)
    key = (field, x.dtype, x.device)
    hit = call.memo.get(key)
    if hit is None:
        hit = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        if not torch_engine.inside_trace((x,)):
            call.memo[key] = hit
    return hit


def _jax_run(compiled, batch_axis, argnum, args, kwargs, call: Call, chunk_size):
    from .backends import jax_engine

    weights, k = call.univariate()
    seeds = call.seeds
    if not call.per_sample:  # flat rows (M, n) as (M, *sample)
        x = args[argnum]
        seeds = seeds.reshape((seeds.shape[0],) + _common.sample_shape(tuple(x.shape),
                                                                       batch_axis))
    return jax_engine.run_directions(compiled, 0, seeds, weights, k, batch_axis,
                                     per_sample=call.per_sample, top=call.drift,
                                     chunk_size=chunk_size, per_direction=call.read,
                                     picks=call.picks, pick_scale=call.pick_scale)


def _groups(spec, argnum, batch_axis, cache, torch_compile, args, kwargs, call: Call,
            chunk_size):
    """Unit-seeded terms as coordinate groups: ``differential_operator``'s own path
    (``_api``), ``chunk_size`` terms per transform."""
    out = None
    for t in _group_transforms(spec, argnum, batch_axis, cache, call, chunk_size,
                               torch_compile):
        part = t(args, kwargs)[0][0]
        out = part if out is None else backends.backend_for(args, t.api).tree_add(out, part)
    return out


def _group_transforms(spec, argnum, batch_axis, cache, call: Call, chunk_size,
                      torch_compile: bool = False) -> list:
    key = ("groups", id(call.terms), chunk_size)  # plans reuse their term tuples
    hit = cache.get(key)
    parts = None if hit is None or hit[0] is not call.terms else hit[1]
    if parts is None:
        step = chunk_size or len(call.terms)
        parts = []
        for lo in range(0, len(call.terms), step):
            chunk = call.terms[lo:lo + step]
            t = _api._build(spec.fun, [tuple(a) for _, a in chunk], argnum, False,
                            batch_axis, api=spec.api, allow_value=False,
                            operator=[c for c, _ in chunk], torch_compile=torch_compile)
            parts.append(t)
        cache.put(key, (call.terms, parts))
    return parts


def _nested(name, f, args, kwargs, argnum, batch_axis, call: Call, chunk_size):
    """``sum_n w_n D^K f[v_n] + Df[drift]`` by ``K`` nested JVPs per direction."""
    x = args[argnum]
    fw = backends.backend_named(name)
    asarray = functools.partial(fw.as_array, like=x)
    rows, weights, order = call.directions()
    rows = asarray(rows)
    if not call.per_sample:
        rows = rows.reshape((rows.shape[0],) + tuple(_common.sample_shape(tuple(x.shape),
                                                                          batch_axis)))
    weights = np.asarray(weights)
    out = None
    step = chunk_size or max(rows.shape[0], 1)
    parts = []
    for lo in range(0, rows.shape[0], step):
        part = directional(name, f, args, kwargs, argnum, batch_axis, rows[lo:lo + step],
                           order, call.per_sample)
        w = asarray(weights[lo:lo + step])
        part = fw.tree_map(lambda p, w=w: p * w.reshape((-1,) + (1,) * (p.ndim - 1)), part)
        if call.read:
            parts.append(part)
            continue
        part = fw.tree_map(lambda p: p.sum(0), part)
        out = part if out is None else fw.tree_add(out, part)
    if call.read:  # each term on its own, stacked (no drift: Call.read has none)
        return fw.tree_map(lambda *ps: fw.concatenate(ps), *parts)

    def at(z):
        return f(*args[:argnum], z, *args[argnum + 1:], **kwargs)

    if call.drift is not None:
        term = fw.jvp_tangent(at, x, asarray(call.drift))
        out = term if out is None else fw.tree_add(out, term)
    if out is None:
        out = fw.tree_map(lambda o: o * 0, at(x))
    return out


def directional(name, f, args, kwargs, argnum, batch_axis, directions, order: int,
                per_sample: bool):
    """``D^order f[v]`` for every direction ``v`` (nested JVPs, vmapped), stacked
    first; shared directions are broadcast over the batch axis. The nested-forward
    strategy here and the estimators (``_estimators``) are built on it."""
    fw = backends.backend_named(name)
    x = args[argnum]

    def at(z):
        return f(*args[:argnum], z, *args[argnum + 1:], **kwargs)

    def term(v):
        if batch_axis is not None and not per_sample:
            v = fw.broadcast(fw.unsqueeze(v, batch_axis % x.ndim), x)
        g = at
        for _ in range(order):
            g = _along(fw, g, v)
        return g(x)

    return fw.vmap(term)(directions)


def _along(fw, g, v):
    return lambda z: fw.jvp_tangent(g, z, v)


# -- the operators ------------------------------------------------------------------
@_conventions.transform("derivs.bilaplacian")
def bilaplacian(f: Callable, argnums: int = 0, *, batch_axis: int | None = None,
                strategy: str | None = None, chunk_size: int | None = None,
                batch_size: int | None = None, torch_compile: bool = False,
                has_aux: bool = False, argnum: int | None = None) -> Callable:
    """The Bi-Laplacian ``sum_ij d^4 f / dx_i^2 dx_j^2`` (the Laplacian of the
    Laplacian) over every coordinate of argument ``argnums``, exactly.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    One collapsed fourth-order Taylor pass along ``D^2`` directions: the ``D``
    units and the ``e_i +- e_j`` (NOTE [pair interpolation] in
    ``derivs.core._directions``), stacked on one axis. Each intermediate carries its
    value, three lower coefficients per direction and one summed fourth-order
    coefficient. ``strategy="nested-forward"``: four nested JVPs per direction.

    A vector- or array-valued ``f`` gives the Bi-Laplacian of each output component.
    ``batch_axis`` as in :func:`derivs.partial` (proven from ``f``'s graph).
    ``chunk_size=c`` carries ``c`` directions at a time (memory ``c / D^2`` of the
    whole family, for some speed); ``batch_size=b`` (with ``batch_axis``) carries
    ``b`` samples at a time. ``torch_compile=True`` (PyTorch) compiles the traced
    pass with ``torch.compile``.

    Example (``f = |x|^4`` has ``Delta^2 f = 8 D (D + 2)``):

      >>> import torch, derivs
      >>> f = lambda x: (x ** 2).sum() ** 2
      >>> derivs.bilaplacian(f)(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
      tensor(120., dtype=torch.float64)
    """
    def plan(backend, x, sample, batch_axis):
        return _bilaplacian_call(_common.numel(sample))

    return make(f, argnums, batch_axis, "derivs.bilaplacian", plan, strategy=strategy,
                chunk_size=chunk_size, torch_compile=torch_compile, batch_size=batch_size)


@_conventions.transform("derivs.diffusion_operator")
def diffusion_operator(f: Callable, sigma: Any, drift: Any = None, reaction: Any = None,
                       argnums: int = 0, *, batch_axis: int | None = None,
                       strategy: str | None = None, chunk_size: int | None = None,
                       batch_size: int | None = None, torch_compile: bool = False,
                       has_aux: bool = False, argnum: int | None = None) -> Callable:
    """The second-order operator ``tr(sigma sigma^T Hess f) + drift . grad f +
    reaction * f`` in argument ``argnums``, exactly, in one collapsed pass.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

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

    ``chunk_size`` carries that many columns at a time, ``batch_size`` (with
    ``batch_axis``) that many samples. A vector-valued ``f`` gives the operator per
    output component. For a general
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

    def plan(backend, x, sample, batch_axis):
        return diffusion_terms(api, backend, x, sample, batch_axis, sigma, drift, reaction)

    return make(f, argnums, batch_axis, api, plan, strategy=strategy, chunk_size=chunk_size,
                torch_compile=torch_compile, batch_size=batch_size,
                whole_batch=any(callable(v) for v in (sigma, drift, reaction)))


def diffusion_terms(api, backend, x, sample, batch_axis, sigma, drift, reaction) -> Call:
    """The :class:`Call` of ``tr(sigma sigma^T H) + drift . grad + reaction`` at ``x``:
    ``sigma``'s columns as seeds, the drift shaped like ``x``, the reaction's term
    (shared by :func:`diffusion_operator` and ``hutchinson_diffusion``)."""
    xs = tuple(x.shape)
    if callable(sigma):
        s = sigma(x)
        shape = tuple(getattr(s, "shape", ()))
        if shape[:-1] != xs or len(shape) != len(xs) + 1:
            raise ValueError(f"{api}: sigma(x) must have shape x.shape + (r,) = "
                             f"{xs} + (r,), got {shape}.")
        per_sample = True
    else:
        s = backend.as_array(sigma, x)
        if tuple(s.shape[:-1]) != tuple(sample) or s.ndim != len(sample) + 1:
            raise ValueError(f"{api}: a constant sigma must have shape sample_shape + "
                             f"(r,) = {tuple(sample)} + (r,), got {tuple(s.shape)}.")
        per_sample = False
    rows = backend.movedim(s, -1, 0)
    b = None
    if drift is not None:
        b = drift(x) if callable(drift) else backend.as_array(drift, x)
        if tuple(b.shape) == tuple(sample) and batch_axis is not None:
            b = backend.broadcast(backend.unsqueeze(b, batch_axis % x.ndim), x)
        elif tuple(b.shape) != xs:
            raise ValueError(f"{api}: drift must have x's shape {xs}"
                             + (f" or the sample shape {tuple(sample)}"
                                if batch_axis is not None else "")
                             + f", got {tuple(b.shape)}.")
    value = None
    if reaction is not None:
        c = reaction(x) if callable(reaction) else reaction
        value = lambda out, c=c: c * out  # noqa: E731
    return Call(rows, _pure_terms(rows.shape[0]), per_sample, b, value)


def from_terms(f, coefficients, requests, n: int, argnum, batch_axis, api, strategy,
               torch_compile, batch_size: int | None = None) -> Callable | None:
    """The operator of a term set of ``differential_operator`` over one argument
    of ``n`` coordinates that a collapsed pass computes (``core._directions.
    classify``), or None. Second-order sets run along the eigenvectors of their
    coefficient matrix; fourth-order ``d^4 / dx_i^2 dx_j^2`` sets on unit seeds."""
    classified = _directions.classify(coefficients, requests, n)
    if classified is None:
        return None
    value = None
    if classified.value != 0.0:
        value = lambda out, c=classified.value: c * out  # noqa: E731
    if classified.directions.order == 4:
        terms = tuple((float(c), tuple(f for _, f in mi))
                      for c, mi in zip(coefficients, requests) if mi)
        call = Call(np.eye(n), terms, value=value, units=True)
    else:
        d = classified.directions
        call = Call(d.rows, tuple((float(w), (k, k)) for k, w in enumerate(d.weights)),
                    value=value)

    def plan(backend, x, sample, batch_axis):
        if classified.drift is None:
            return call
        drift = backend.as_array(classified.drift.reshape(sample), x)
        if batch_axis is not None:
            drift = backend.broadcast(backend.unsqueeze(drift, batch_axis % x.ndim), x)
        return dataclasses.replace(call, drift=drift)

    return make(f, argnum, batch_axis, api, plan,
                strategy=None if strategy == "traced-jet" else strategy,
                torch_compile=torch_compile, batch_size=batch_size)


@functools.lru_cache(maxsize=16)
def _bilaplacian_call(n: int) -> Call:
    terms = tuple((1.0, (i, i, j, j) if i <= j else (j, j, i, i))
                  for i in range(n) for j in range(n))
    return Call(np.eye(n), terms, units=True)


@functools.lru_cache(maxsize=64)
def _pure_terms(r: int) -> tuple:
    return tuple((1.0, (k, k)) for k in range(r))
