"""Linear differential operators: ``differential_operator``, ``laplacian``,
``hessian_diagonal``.

All three are exact. The jet strategy propagates Taylor coefficients: the top
coefficient of an operator is collapsed (summed before it is propagated, see
``derivs.core._jets.Collapsed``), and families of directions are vmapped (JAX),
not unrolled. The ``"reverse"`` strategy takes Hessian-vector products (forward
over reverse mode) along every unit direction; it needs a scalar output per sample.

NOTE [cost model for operators]: per unit direction, a second-order Taylor jet
costs ``jet_cost([(2,)]) = 6`` products per product of f, and a collapsed
Laplacian ``2`` per direction plus ``4`` shared. A Hessian-vector product costs
``HVP_COST`` evaluations of f: reverse mode (~3 f, stores intermediates) under one
forward level. ``python -m benchmarks taylor`` measures both; in JAX the jet
strategy took 0.53x the time of the HVPs for the Hessian diagonal (D = 1000) and
0.37x for the Laplacian (D = 50), so ``HVP_COST = 8`` (> 6); PyTorch's family
layout measured the same way round (see ``choose_strategy``). A test checks the
model's choice against the recorded timings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import _api, _batch, _collapsed, _conventions, _probes, _report
from .core import _ledger
from ._validation import check_operator_options, operator_entry, operator_input
from .backends import _common
from .core import _jets
from .core._cache import LRUCache

TAYLOR = "traced-jet"
REVERSE = "reverse"
OPERATOR_STRATEGIES = (TAYLOR, REVERSE)
HVP_COST = 8.0
# NOTE [direction layout]: the jet strategy carries the D unit directions either
# unrolled, one coordinate group per direction (D separate products), or as one
# "family" axis (D stacked rows: one product per op; JAX vmaps the directions,
# PyTorch stacks them, ``torch_engine._family``). PyTorch on an accelerator always
# takes the family (launch-bound: see ``unrolled``); the Hessian diagonal on CPU
# (256 points, tanh MLP) ran unrolled / family 1.16 / 1.22 ms at D = 6, 1.89 / 1.72
# at D = 10, 3.38 / 2.56 at D = 20 and 8.56 / 5.50 at D = 50. In PyTorch the unrolled graph
# pays eager dispatch per direction (about 1200 ATen ops per call for a 50-input
# MLP, against about 150 for the family). XLA:CPU compiles JAX's family tangents,
# and the reductions over their direction axis, into one large YNNPACK fusion that
# runs 1.5-3x slower than the unrolled program for small D (D = 3 with 10^4
# points: unrolled 0.3x the nested-AD Laplacian, family 0.4-0.9x from run to run).
# In JAX unrolled wins up to about D = 16 when each direction carries 2000 rows,
# and the family wins from D = 8 with 256 rows; the sample count is not known
# inside ``jax.vmap``, so the rule uses D alone. ``python -m benchmarks taylor``
# records both layouts and a test checks the rule against them. PyTorch knows the
# batch: ``python -m benchmarks layout`` times both layouts by D, points and width
# (``benchmarks/results/layout.md``), and its rule (``_UNROLL_LIMITS``) is checked
# against those rows: the unrolled layout wins while D times the points stays
# below a few thousand (its per-direction dispatch is then what a call costs least
# of); past that, the family's one product per op wins even at D = 2.
UNROLL_MAX_DIRECTIONS = 4
# framework -> the unrolled layout on CPU only while directions x samples is below
_UNROLL_LIMITS = {"torch": 4000}
# "unrolled" / "family": both layouts timed by the benchmarks (None: the rule)
FORCED_LAYOUT: str | None = None


@_conventions.transform("derivs.differential_operator")
def differential_operator(f: Callable, terms: Sequence[tuple[float, Any]],
                          argnums: int | Sequence[int] = 0, *, batch_axis: int | None = None,
                          strategy: str | None = None, batch_size: int | None = None,
                          torch_compile: bool = False, has_aux: bool = False,
                          argnum: int | None = None) -> Callable:
    """``sum c * d^index f`` for ``terms = [(c, index), ...]``, in one pass.

    Indices are spelled as for :func:`derivs.partial`. The jet strategy computes the
    whole operator in one lazy pass: every lower-order coefficient that several
    terms need (and the value of f) is computed once, and the top-order
    coefficients are summed before they are propagated (collapsed Taylor mode),
    so the operator costs about as much as its lower-order terms. ``strategy=
    "nested-forward"`` sums nested-forward partials instead.

    Returns a function of ``f``'s arguments returning an array shaped like ``f``'s
    output. ``argnums`` as for :func:`derivs.partial` (``argnum`` is an alias);
    ``has_aux=True``: f returns ``(output, aux)`` and so does the operator (NOTE
    [aux by a second call]). ``batch_size`` (with ``batch_axis``): that many
    samples at a time, as for :func:`derivs.laplacian`.

    Example (a heat-equation residual ``u_t - nu * (u_xx + u_yy)`` with
    ``(t, x, y) = z[0], z[1], z[2]``):

      >>> import jax.numpy as jnp, derivs
      >>> u = lambda z: jnp.exp(-z[0]) * jnp.sin(z[1]) * jnp.cos(z[2])
      >>> nu = 0.5
      >>> residual = derivs.differential_operator(
      ...     u, [(1.0, 0), (-nu, (1, 1)), (-nu, (2, 2))])
      >>> z = jnp.array([0.3, 0.2, 0.1])
      >>> bool(jnp.allclose(residual(z), 0.0))  # u solves u_t = 0.5 (u_xx + u_yy)
      True
    """
    api = "derivs.differential_operator"
    if not isinstance(terms, (list, tuple)) or not terms:
        raise TypeError(f"{api}: terms must be a non-empty list of (coefficient, index) "
                        "pairs, e.g. [(1.0, (0, 0)), (1.0, (1, 1))].")
    coefficients, specs = [], []
    for term in terms:
        if not (isinstance(term, (list, tuple)) and len(term) == 2
                and isinstance(term[0], (int, float)) and not isinstance(term[0], bool)):
            raise TypeError(f"{api}: each term must be a (coefficient, index) pair with a "
                            f"number first, e.g. (-0.5, (1, 1)); got {term!r}.")
        coefficients.append(float(term[0]))
        specs.append(term[1])
    if strategy == REVERSE:
        raise ValueError(f"{api}: strategy='reverse' is for laplacian and hessian_diagonal; "
                         "pass None, 'traced-jet' or 'nested-forward'.")
    t = _api._build(f, specs, argnums, False, batch_axis, api=api, allow_value=False,
                    strategy=strategy, torch_compile=torch_compile, operator=coefficients,
                    batch_size=batch_size)
    if strategy in (None, TAYLOR) and not isinstance(argnums, (list, tuple)):
        family = _family_terms(f, t, coefficients, argnums, batch_axis, api, strategy,
                               torch_compile, batch_size)
        if family is not None:
            return family
    return _api._wrap(f, t, lambda r, aux: r[0])


def _family_terms(f, t, coefficients, argnum, batch_axis, api, strategy, torch_compile,
                  batch_size=None):
    """The collapsed family operator (``derivs._collapsed``) of a term set that is
    one (``core._directions.classify``: second-order, or fourth-order
    ``d^4 / dx_i^2 dx_j^2``, terms), decided per sample size at the first call;
    None when no term set of this shape can be one."""
    from .core import _directions

    requests = t.plan.requests
    orders = {len(mi) for mi in requests}
    if not (2 in orders and orders <= {0, 1, 2}) and not (4 in orders and orders <= {0, 4}):
        return None
    largest = max(flat for mi in requests for _, flat in mi)
    per_size = LRUCache(maxsize=8)
    coordinate_groups = _api._wrap(f, t, lambda r, aux: r[0])

    def pick(x_size):
        if x_size is None or largest >= x_size:
            return coordinate_groups  # its checks give the error
        op = per_size.get(x_size)
        if op is None:
            classified = _directions.classify(coefficients, requests, x_size)
            # a few second-order directions: coordinate groups (NOTE [direction layout])
            few = (classified is not None and classified.directions.order == 2
                   and classified.directions.size <= UNROLL_MAX_DIRECTIONS)
            op = None if few else _collapsed.from_terms(
                f, coefficients, requests, x_size, argnum, batch_axis, api, strategy,
                torch_compile, batch_size)
            op = coordinate_groups if op is None else op
            per_size.put(x_size, op)
        return op

    def sample_size(args):
        x = args[argnum] if argnum < len(args) else None
        shape = getattr(x, "shape", None)
        if shape is None or (batch_axis is not None and len(shape) == 0):
            return None
        return _common.numel(_common.sample_shape(tuple(shape), batch_axis))

    @functools.wraps(f)
    def op(*args, **kwargs):
        return pick(sample_size(args))(*args, **kwargs)

    def explain(*args, **kwargs):
        chosen = pick(sample_size(args))
        if chosen is coordinate_groups:
            return _api.explain(coordinate_groups, *args, **kwargs)
        return chosen.explain(*args, **kwargs)

    _report.attach(op, explain)
    return op


@_conventions.transform("derivs.laplacian")
def laplacian(f: Callable, argnums: int = 0, *, batch_axis: int | None = None,
              strategy: str | None = None, chunk_size: int | None = None,
              batch_size: int | None = None, torch_compile: bool = False,
              has_aux: bool = False, argnum: int | None = None) -> Callable:
    """The Laplacian ``sum_i d^2 f / dx_i^2`` over every coordinate of argument
    ``argnums``, exactly.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    Strategies: ``"traced-jet"`` propagates the value, the ``D`` first-order
    coefficients and one collapsed second-order coefficient (``2 + D`` values per
    intermediate instead of ``1 + 2D``); in JAX the ``D`` directions are one
    vmapped axis. ``"reverse"`` sums ``D`` Hessian-vector products (needs a scalar
    output per sample). None picks by the cost model; ``derivs.explain(op, *args)``
    shows the choice. ``batch_axis`` as in :func:`derivs.partial` (proven from
    ``f``'s graph; see NOTE [batch axis proof]).

    A vector- or array-valued ``f`` gives the Laplacian of each output component,
    shaped like ``f``'s output (``sum_i d^2 f_k / dx_i^2`` for every ``k``), as a
    vector Laplacian in PDE notation; sum the result for the Laplacian of the sum.

    Memory: all ``D`` directions are carried at once, so intermediates are ``D``
    times the size of f's (as in a dense Hessian). ``chunk_size=c`` carries ``c``
    directions at a time (a ``lax.map`` over chunks in JAX, ``vmap(chunk_size=c)``
    for PyTorch HVPs, ``c`` coordinate groups per built graph for PyTorch jets):
    memory ``c / D`` of that, for some speed. ``batch_size=b`` (with ``batch_axis``)
    bounds memory over the samples instead: ``b`` samples at a time (JAX: a
    ``lax.map``; PyTorch: a loop), at the cost of ``ceil(B / b)`` sequential passes.

    ``torch_compile=True`` (PyTorch): the jet strategy's traced pass runs through
    ``torch.compile`` (compiled on the first call per argument signature); with
    ``strategy=None`` it picks the jet strategy.

    Example:

      >>> import torch, derivs
      >>> f = lambda x: (x ** 3).sum() + x[0] * x[1] ** 2
      >>> derivs.laplacian(f)(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
      tensor(38., dtype=torch.float64)
      >>> derivs.laplacian(lambda x: x ** 3)(torch.tensor([1.0, 2.0], dtype=torch.float64))
      tensor([ 6., 12.], dtype=torch.float64)
    """
    return _make_operator(f, argnums, batch_axis, strategy, "derivs.laplacian", collapsed=True,
                          chunk_size=chunk_size, torch_compile=torch_compile,
                          batch_size=batch_size)


@_conventions.transform("derivs.hessian_diagonal")
def hessian_diagonal(f: Callable, argnums: int = 0, *, batch_axis: int | None = None,
                     strategy: str | None = None, chunk_size: int | None = None,
                     batch_size: int | None = None, torch_compile: bool = False,
                     has_aux: bool = False, argnum: int | None = None) -> Callable:
    """The diagonal ``d^2 f / dx_i^2`` of the Hessian of ``f`` in argument ``argnums``,
    exactly, without forming the Hessian. Shape: ``f``'s output shape followed by
    the argument's (sample) shape.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    No exact method is cheaper than ``D`` Hessian-vector products in general (the
    diagonal of a dense Hessian has ``D`` independent entries); what derivs saves is
    memory (``O(D)`` per output instead of ``O(D^2)``) and, for many outputs or
    high cost of reverse mode, time. Strategies as for :func:`laplacian`
    (``"traced-jet"``: second-order Taylor jets along the ``D`` unit directions),
    and so are ``chunk_size`` (bounds memory to ``chunk_size`` directions at a time),
    ``batch_size`` (``batch_size`` samples at a time) and ``torch_compile``.

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> f = lambda x: jnp.sum(x ** 3) + x[0] * x[1] ** 2
      >>> derivs.hessian_diagonal(f)(jnp.array([1.0, 2.0, 3.0], dtype=jnp.float32))
      Array([ 6., 14., 18.], dtype=float32)
    """
    return _make_operator(f, argnums, batch_axis, strategy, "derivs.hessian_diagonal",
                          collapsed=False, chunk_size=chunk_size, torch_compile=torch_compile,
                          batch_size=batch_size)


def choose_strategy(collapsed: bool, n: int, scalar_output: bool, framework: str) -> str:
    """The operator strategy the cost model picks for ``n`` directions (the same
    in both frameworks since PyTorch's Hessian diagonal has a family layout: at
    256 points of a tanh MLP its jets ran 1.48 / 2.03 / 2.74 / 6.02 ms at D = 6 /
    10 / 20 / 50 against 2.6 / 3.4 / 4.1 / 9.1 ms for HVPs)."""
    if not scalar_output:
        return TAYLOR
    costs = model_costs(collapsed, n)
    return TAYLOR if costs[TAYLOR] <= costs[REVERSE] else REVERSE


def model_costs(collapsed: bool, n: int) -> dict[str, float]:
    """The cost model's estimate of each strategy, in evaluations of f (see NOTE
    [cost model for operators])."""
    return {TAYLOR: float((2 * n + 4) if collapsed else 6 * n), REVERSE: HVP_COST * n}


def unrolled(backend, n: int, collapsed: bool = True, device_type: str | None = None,
             samples: int | None = None) -> bool:
    """Whether the jet strategy carries ``n`` directions as ``n`` coordinate groups
    (see NOTE [direction layout]); otherwise one family axis. Where the adapter says
    the device is launch-bound (PyTorch on an accelerator: one kernel per op and
    direction; an H200 ran the unrolled Bi-Laplacian at 1.06x nested AD), every D
    takes the family. ``samples``: the batch size where the call knows it."""
    if FORCED_LAYOUT is not None:
        return FORCED_LAYOUT == "unrolled"
    if backend.launch_bound(device_type) or n > UNROLL_MAX_DIRECTIONS:
        return False
    limit = _UNROLL_LIMITS.get(backend.name)
    return limit is None or n * (samples or 1) < limit


def _make_operator(f, argnum, batch_axis, strategy, api, collapsed: bool,
                   chunk_size: int | None = None, torch_compile: bool = False,
                   batch_size: int | None = None) -> Callable:
    check_operator_options(api, f, argnum, batch_axis, strategy, OPERATOR_STRATEGIES,
                           chunk_size, batch_size, torch_compile, "directions")
    if torch_compile and strategy == REVERSE:
        raise ValueError(f"{api}: torch_compile=True compiles the traced jet pass; "
                         "strategy='reverse' has none. Pass strategy=None or 'traced-jet'.")
    # The engines' request (f in argnum); its cache holds the PyTorch capture, the
    # output-shape probe and the batch-axis verdict.
    spec = _probes.operator_spec(f, argnum, batch_axis, api)
    per_shape = LRUCache(maxsize=32)  # unrolled layout: the transforms per sample shape
    families = LRUCache(maxsize=32)  # PyTorch Laplacian: the family program per signature

    def torch_family(backend, args, kwargs):
        """The PyTorch family program for these arguments and None, or None and
        why there is none (then the layout is unrolled)."""
        from .backends import torch_engine

        program = torch_engine.family_program(spec, args, kwargs, families, torch_compile)
        if isinstance(program, _common.Fallback):
            return None, program.reason
        return program, None

    def unrolled_transforms(sample, n):
        """One transform per chunk of coordinate groups (the unrolled layout)."""
        transforms = per_shape.get(sample)
        if transforms is None:
            step = chunk_size or n
            transforms = [_unrolled_transform(f, range(lo, min(lo + step, n)), argnum,
                                              batch_axis, collapsed, torch_compile)
                          for lo in range(0, n, step)]
            per_shape.put(sample, transforms)
        return transforms

    def decide(backend, args, x, sample, kwargs):
        """Everything a call on converted arguments depends on: the direction count,
        the strategy and, for jets, the direction layout (with the PyTorch family
        program when that is the layout)."""
        n = _common.numel(sample)
        scalar = None
        if strategy is None and not torch_compile:
            scalar = _scalar_output(_probes.output_shape(spec, backend, args, kwargs), batch_axis)
        chosen = strategy or (TAYLOR if torch_compile else
                              choose_strategy(collapsed, n, scalar, backend.name))
        if strategy == REVERSE:
            shape = _probes.output_shape(spec, backend, args, kwargs)
            if not _scalar_output(shape, batch_axis):
                per = "per sample " if batch_axis is not None else ""
                raise ValueError(
                    f"{api}: strategy='reverse' sums Hessian-vector products of one number "
                    f"{per}(the gradient of a scalar), but f's output "
                    + ("is not one array" if shape is None else f"has shape {shape}")
                    + ": it would return the operator of the outputs' sum. Pass "
                    "strategy=None (the jet strategy gives every component), or reduce "
                    "f's output to one number per sample.")
        layout, program, why = None, None, None
        if chosen != REVERSE and strategy is None and scalar and not backend.stacked_family:
            reverse_only = _reverse_only(backend, spec, args, kwargs)
            if reverse_only is not None:  # e.g. a custom_vjp function: forward mode fails
                chosen, why = REVERSE, reverse_only
        if chosen != REVERSE:
            device = getattr(getattr(x, "device", None), "type", None)
            samples = None if batch_axis is None else x.shape[batch_axis]
            layout = "unrolled" if unrolled(backend, n, collapsed, device, samples) else "family"
            if layout == "family" and backend.stacked_family:
                if chunk_size is None:
                    program, why = torch_family(backend, args, kwargs)
                else:
                    why = "chunk_size is set (the family layout carries every direction)"
                layout = "family" if program is not None else "unrolled"
        seeds = None
        if program is not None:
            inner = getattr(program, "program", program)  # a compiled program's own
            seeds = functools.partial(inner.laplacian_seeds, diagonal=not collapsed)
        return SimpleNamespace(backend=backend, args=args, sample=sample, n=n, chosen=chosen,
                               scalar=scalar, layout=layout, program=program, why=why,
                               program_seeds=seeds)

    def explain(*args, **kwargs) -> OperatorExplanation:
        backend, args, x, sample = operator_input(api, args, argnum, batch_axis, torch_compile)
        d = decide(backend, args, x, sample, kwargs)
        notes, engine = routes.notes(backend, args, kwargs), None
        if d.why is not None:
            notes.append(d.why if d.chosen == REVERSE else f"family layout not used: {d.why}")
        if torch_compile:
            notes.append("torch_compile=True: the jet strategy's traced pass runs under "
                         "torch.compile")
        elif getattr(d.program, "replays", None) is not None:  # NOTE [replay]
            notes.append(d.program.replays.describe())
        if (first := ledger.note()) is not None:
            notes.append(first)
        if d.chosen != REVERSE and d.layout == "unrolled":
            # what the unrolled transforms actually run (the engine may fall back)
            inner = _api.explain(unrolled_transforms(d.sample, d.n)[0], *d.args)
            engine = inner.strategy
            # the batch axis was reported above, by the routes that take the samples
            notes += [n for n in inner.notes if not n.startswith("batch_axis:")]
        return OperatorExplanation(api, d.backend.name, d.sample, d.n, d.chosen,
                                   strategy is None and not torch_compile, d.scalar, collapsed,
                                   d.layout, engine, notes)

    routes = _batch.SampleRoutes(
        functools.partial(_probes.batch_verdict, spec),
        lambda fun, axis, size: _make_operator(fun, argnum, axis, strategy, api, collapsed,
                                               chunk_size, torch_compile, size),
        batch_axis, batch_size, f, (argnum,))

    def run(backend, args, x, sample, kwargs):
        d = decide(backend, args, x, sample, kwargs)
        fw = d.backend
        args, sample, n = d.args, d.sample, d.n
        if d.chosen == REVERSE:
            return _reverse(fw, f, args, kwargs, argnum, batch_axis, sample, collapsed,
                            chunk_size)
        if d.program is not None:
            if collapsed:
                return d.program(args, kwargs)
            seeds = d.program_seeds(args[argnum])
            return fw.tree_map(lambda o: _directions_last(fw, o, sample),
                               d.program(args, kwargs, seeds))
        if d.layout == "family":
            return _jax_taylor(fw, spec, args, kwargs, batch_axis, sample, collapsed,
                               chunk_size)
        outs = [t(*args, **kwargs) for t in unrolled_transforms(sample, n)]
        if collapsed:
            return functools.reduce(lambda a, b: a + b, outs)
        diag = [o[(i, i)] for o in outs for i in sorted(k[0] for k in o)]
        return _directions_last(fw, fw.stack(diag), sample)

    ledger = _ledger.Ledger()  # NOTE [first-call ledger]
    op = operator_entry(api, f, argnum, batch_axis, torch_compile, routes, run, ledger)
    _report.attach(op, explain)
    return op


class OperatorExplanation(_report.Report):
    """What :func:`laplacian` / :func:`hessian_diagonal` do for given arguments:
    the strategy, the direction layout of the jet strategy, and the cost model's
    estimate of each strategy (in evaluations of f). ``str()`` is a readable
    report; made by ``derivs.explain(op, *example_args)``."""

    def __init__(self, api, backend, sample, n, strategy, automatic, scalar, collapsed, layout,
                 engine=None, notes=()):
        self.api, self.backend, self.sample, self.directions = api, backend, sample, n
        self.strategy, self.automatic, self.layout = strategy, automatic, layout
        # unrolled layout: the strategy its transforms run ("traced-jet", or
        # "nested-forward" where the engine fell back), and why
        self.engine, self.notes = engine, list(notes)
        self.model_costs = model_costs(collapsed, n)
        self.scalar_output, self.collapsed = scalar, collapsed

    def text(self) -> str:
        what = "collapsed second-order jet (2 + D values per intermediate)" if self.collapsed \
            else "second-order jet per direction"
        lines = [f"{self.api} ({self.backend}), sample shape {self.sample}: "
                 f"D = {self.directions} unit directions",
                 f"  strategy: {self.strategy} "
                 + ("(chosen automatically)" if self.automatic else "(requested)")]
        if self.strategy == TAYLOR:
            lines.append(f"  {what}; directions "
                         + ("unrolled, one coordinate group each" if self.layout == "unrolled"
                            else "stacked on one family axis"))
            if self.engine == "nested-forward":
                lines.append("  runs as nested forward mode (nested JVPs per direction): the "
                             "traced engine fell back")
        else:
            lines.append("  D Hessian-vector products (forward over reverse), vmapped")
        lines.append("  cost model (evaluations of f): " + ", ".join(
            f"{k} {v:g}" for k, v in self.model_costs.items()))
        if self.automatic and self.scalar_output is False:
            lines.append("  f's output is not one number per sample: only jets apply")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)



def _unrolled_transform(f, coords: range, argnum, batch_axis, collapsed: bool,
                        torch_compile: bool = False):
    """The operator over ``coords`` with one coordinate group per direction."""
    specs = [(i, i) for i in coords]
    if collapsed:  # built directly: differential_operator would route to a family
        t = _api._build(f, specs, argnum, False, batch_axis, api="derivs.laplacian",
                        allow_value=False, torch_compile=torch_compile,
                        operator=[1.0] * len(specs))
        return _api._wrap(f, t, lambda r, aux: r[0])
    return _api.partials(f, specs, argnum, batch_axis=batch_axis, torch_compile=torch_compile)


def _directions_last(fw, stacked, sample):
    """``(n, *out)`` per unit direction -> ``(*out, *sample)``."""
    moved = fw.movedim(stacked, 0, -1)
    return moved.reshape(tuple(moved.shape[:-1]) + tuple(sample))


def _reverse_only(backend, spec, args, kwargs) -> str | None:
    """Why only reverse mode can differentiate f (JAX: a custom_vjp function
    defines reverse mode only; jax.hessian works through it, forward over reverse),
    or None."""
    from .backends import jax_engine

    compiled = jax_engine.prepare(spec, args, kwargs)
    if isinstance(compiled, jax_engine.Fallback) and "custom_vjp" in compiled.reason:
        return (f"reverse mode chosen: {compiled.reason}; Hessian-vector products "
                "(forward over reverse) go through it")
    return None


def _scalar_output(shape: tuple[int, ...] | None, batch_axis: int | None) -> bool:
    """Whether f's output (of this shape; None: not one array) is one number per
    sample."""
    if shape is None:
        return False
    return math.prod(shape) == 1 if batch_axis is None else len(shape) == 1


def _jax_taylor(fw, spec, args, kwargs, batch_axis, sample, collapsed, chunk_size):
    from .backends import jax_engine

    compiled = jax_engine.prepare(spec, args, kwargs)
    if isinstance(compiled, jax_engine.Fallback):  # nested JVPs along every unit direction
        from ._collapsed import directional

        x = args[0] if spec.argnums == (0,) else args[spec.argnums[0]]
        n = _common.numel(sample)
        eye = fw.as_array(np.eye(n), x).reshape((n,) + tuple(sample))
        terms = directional(fw.name, spec.fun, args, kwargs, spec.argnums[0], batch_axis,
                            eye, 2, per_sample=False)
        if collapsed:
            return fw.tree_map(lambda t: t.sum(0), terms)
        return fw.tree_map(lambda o: _directions_last(fw, o, sample), terms)
    if collapsed:
        key = _jets.Collapsed(((1.0, (2,)),), family=jax_engine.FAMILY_AXIS)
        return jax_engine.run_family(compiled, 0, key, batch_axis, collapsed=True,
                                     chunk_size=chunk_size)
    out = jax_engine.run_family(compiled, 0, (2,), batch_axis, collapsed=False,
                                chunk_size=chunk_size)
    return fw.tree_map(lambda o: _directions_last(fw, o, sample), out)


def _reverse(fw, f, args, kwargs, argnum, batch_axis, sample, collapsed, chunk_size):
    """Hessian-vector products along every unit direction (forward over reverse),
    vmapped; valid for one scalar output per sample."""
    n = _common.numel(sample)
    x = args[argnum]
    ndim = len(x.shape)

    def total(z):
        return f(*args[:argnum], z, *args[argnum + 1:], **kwargs).sum()

    grad = fw.grad(total)

    def quad(v):
        if batch_axis is not None:  # the same direction in every sample
            v = fw.broadcast(fw.unsqueeze(v, batch_axis % ndim), x)
        return _sample_sum(fw.jvp_tangent(grad, x, v) * v, batch_axis, ndim, fw.reduce_sum)

    diag = fw.over_units(quad, n, tuple(sample), x, chunk_size)  # (n, *batch)
    return diag.sum(0) if collapsed else _directions_last(fw, diag, sample)


def _sample_sum(v, batch_axis, ndim, sum_fn):
    """Sum over the sample axes (all but the batch axis)."""
    if batch_axis is None:
        return sum_fn(v)
    b = batch_axis % ndim
    axes = tuple(i for i in range(ndim) if i != b)
    return sum_fn(v, axes) if axes else v
