"""The JAX derivative engine (strategy ``"traced-jet"``): f as a jaxpr, interpreted
with jets.

``prepare`` traces ``f`` to a jaxpr for the call's arguments (``jax.make_jaxpr``;
values ``f`` closes over become the jaxpr's constants) and checks that every
primitive can be differentiated exactly; ``execute`` interprets the jaxpr with
jets seeded at the requested coordinates. The result is an ordinary traceable JAX
computation: it composes with ``jit`` (XLA then fuses it and drops anything no
request reads), ``vmap``, ``grad`` and further derivs transforms.

Nothing is cached across calls: a jaxpr may hold tracers of an enclosing
transformation. Under ``jax.jit`` the interpretation runs once per compilation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from ...core._spec import Spec
from .. import _varying
from .._common import Fallback, no_output_message
from . import _jet, _rules  # noqa: F401  (fills the rule registry)
from ._interpret import Interpreter
from ._registry import UNSUPPORTED
from ...core import _jets, _ledger
from ._jet import Jet, Narrow


@dataclasses.dataclass
class Traced:
    """``f`` traced to a jaxpr for one call (each call traces again; ``jax.jit`` of
    the transform compiles once): the jaxpr, its array inputs and what to read."""

    closed: Any  # ClosedJaxpr of f over its array leaves
    out_tree: Any
    arrays: list  # the array leaves of (args, kwargs), in jaxpr input order
    selected: dict[int, int]  # array-leaf position -> slot in argnums
    ops: int
    reads: list  # per pass: (groups, [(request index, key), ...])
    batch_axis: int | None

    @property
    def note(self) -> str:
        return (f"jaxpr of {self.ops} equations interpreted with jets (each call traces; "
                "jit the transform to compile once)")


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def prepare(spec: Spec, args: tuple, kwargs: dict) -> Traced | Fallback:
    if spec.has_aux:
        return Fallback("has_aux=True (auxiliary outputs run on the general path)")
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    is_arr = [_is_array(x) for x in leaves]
    side: dict[str, Any] = {}

    def flat_fun(*arrays):
        it = iter(arrays)
        full = [next(it) if a else leaf for a, leaf in zip(is_arr, leaves)]
        a, kw = jax.tree_util.tree_unflatten(treedef, full)
        out = spec.fun(*a, **kw)
        out_leaves, side["tree"] = jax.tree_util.tree_flatten(out)
        return out_leaves

    arrays = [x for x, a in zip(leaves, is_arr) if a]
    try:
        with _ledger.phase("trace"):  # NOTE [first-call ledger]
            closed = jax.make_jaxpr(flat_fun)(*arrays)
    except jax.errors.ConcretizationTypeError as e:  # incl. TracerBoolConversionError
        # A Python branch or conversion on a value: an abstract trace cannot follow it,
        # but eager forward mode (concrete primals) can, as jax.grad does.
        return Fallback(f"f reads a traced value in Python ({type(e).__name__}: data-"
                        "dependent control flow or a conversion), so no jaxpr can be traced")
    if not closed.out_avals:
        raise TypeError(no_output_message(spec.api, None))
    for aval in closed.out_avals:
        if not np.issubdtype(aval.dtype, np.inexact):
            return Fallback("f returns a non-floating-point output")
    complex_prim = _complex(closed.jaxpr)
    if complex_prim is not None:  # NOTE [complex intermediates] (torch_engine/_capture.py)
        return Fallback(f"f has complex intermediates ({complex_prim}); the traced rules "
                        "are real, so nested forward mode runs")
    bad = _unsupported(closed.jaxpr)
    if bad:
        return Fallback(f"f uses {bad}, which has no forward-mode derivative "
                        "(custom_vjp functions define reverse mode only)")
    # Top-level selected arguments are single arrays (converted by the backend).
    positions, k = {}, 0
    for i, (x, a) in enumerate(zip(leaves, is_arr)):
        if a:
            positions[i] = k
            k += 1
    offsets, n = [], 0
    for a in args:
        offsets.append(n)
        n += len(jax.tree_util.tree_leaves(a))
    selected = {positions[offsets[a]]: slot for slot, a in enumerate(spec.argnums)}
    return Traced(closed, side["tree"], arrays, selected, _count_eqns(closed.jaxpr),
                  spec.plan.jet_reads(), spec.batch_axis)


def _first(jaxpr, test) -> str | None:
    """The name of the first primitive (in ``jaxpr`` or the jaxprs inside its
    equations) whose equation passes ``test``, or None."""
    for eqn in jaxpr.eqns:
        if test(eqn):
            return eqn.primitive.name
        for sub in _subjaxprs(eqn):
            found = _first(sub, test)
            if found:
                return found
    return None


def _complex(jaxpr) -> str | None:
    """The first primitive with a complex input or output, or None."""
    def test(eqn):
        return any(np.issubdtype(getattr(v.aval, "dtype", np.float32), np.complexfloating)
                   for v in list(eqn.outvars) + [u for u in eqn.invars
                                                 if isinstance(u, jcore.Var)])
    return _first(jaxpr, test)


def _unsupported(jaxpr) -> str | None:
    return _first(jaxpr, lambda eqn: eqn.primitive.name in UNSUPPORTED)


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


def _count_eqns(jaxpr) -> int:
    return sum(1 + sum(_count_eqns(s) for s in _subjaxprs(e)) for e in jaxpr.eqns)


def execute(compiled: Traced, args: tuple, kwargs: dict, n_requests: int) -> list[Any]:
    return run_reads(compiled, compiled.reads, n_requests, compiled.batch_axis)


def run_reads(compiled: Traced, reads, n_results: int, batch_axis: int | None) -> list[Any]:
    """``reads``: per pass, ``(groups, [(result index, key), ...])`` where groups
    are ``(slot, flat)`` coordinates; returns the results as pytrees like f's output."""
    results: list[Any] = [None] * n_results
    for groups, keys in reads:
        it = Interpreter(len(groups), batch_axis)
        inputs = [_input_jet(x, compiled.selected.get(p), groups, batch_axis)
                  for p, x in enumerate(compiled.arrays)]
        outs = it.run_closed(compiled.closed, inputs)
        for r, key in keys:
            results[r] = jax.tree_util.tree_unflatten(compiled.out_tree,
                                                      [o.dense(key) for o in outs])
    return results


def _input_jet(x, slot: int | None, groups, batch_axis) -> Jet:
    mine = {g: flat for g, (s, flat) in enumerate(groups) if s == slot} if slot is not None else {}
    if not mine:
        return Jet(x)
    seeds: dict[int, Any] = {}

    def rule(key):
        if sum(key) != 1:
            return None
        g = key.index(1)
        if g not in mine:
            return None
        if g not in seeds:
            if batch_axis is None:  # one nonzero element: a narrow coefficient
                seeds[g] = Narrow(jax.numpy.ones((1,), x.dtype),
                                  np.array([mine[g]], np.int64), x.shape)
            else:
                seeds[g] = _jet.one_hot(x, mine[g], batch_axis)
        return seeds[g]

    jet = Jet(x, rule, expands=True)
    jet.seeds = mine
    return jet




FAMILY_AXIS = "derivs_directions"


def _family_key(key):
    """NOTE [family inside shard_map]: a collapsed family sums its lanes' terms with
    ``lax.psum`` over derivs' own ``vmap`` axis. Inside ``jax.shard_map`` with its
    default ``check_vma=True``, JAX (0.9-0.10) fails on any collective over a vmap
    axis name (an ``AssertionError`` in ``pvary``: the name is not a mesh axis).
    There the family runs unfused instead: every lane keeps its own top coefficient
    (the key without a family axis), the lanes' results are summed after the vmap,
    and a top term (a drift) enters in lane 0 only. Exact, with no collective, at the
    cost of carrying the top coefficient per direction (``1 + 2D`` values per
    intermediate of a Laplacian instead of ``2 + D``), inside ``shard_map`` only."""
    if (isinstance(key, _jets.Collapsed) and key.family is not None
            and _varying.in_shard_map()):
        return _jets.Collapsed(key.terms), False
    return key, True


# NOTE [narrow family seeds]: without a batch axis (e.g. under jax.vmap) lane i's
# seed can be e_i as a Narrow coefficient at the lane's (traced) position, so that
# the first linear layer reads row i of its weight instead of multiplying the
# identity into it. On XLA:CPU it did not pay: tanh MLP Laplacians at D = 50 (256
# points, width 64) ran 0.48x the Hessian trace with narrow seeds against 0.46x
# with one-hot rows, D = 20 (1024 points) 0.64x against 0.56x, D = 50 (2048
# points, width 256) 0.53x both (folx: 0.48x, 0.59x, 0.54x). XLA fuses the
# one-hot product well; the gather costs more than it saves. Off until a device
# measures a gain (``python -m benchmarks taylor`` times both).
NARROW_FAMILY_SEEDS = False


def run_family(compiled: Traced, slot: int, key, batch_axis: int | None,
               collapsed: bool, chunk_size: int | None = None) -> Any:
    """Coefficient ``key`` of one-coordinate-group jets along every unit direction of
    argument ``slot``, vmapped over the directions (not unrolled). ``collapsed``:
    ``key`` is a family-collapsed operator key and the result is the family sum
    (one value); otherwise results are stacked along a new leading axis.
    ``chunk_size``: vmap that many directions at a time (``lax.map`` over chunks),
    bounding memory; a collapsed key is linear in the family, so chunk sums add."""
    position = next(p for p, s in compiled.selected.items() if s == slot)
    x = compiled.arrays[position]
    key, fused = _family_key(key)  # NOTE [family inside shard_map]
    sample = x.shape if batch_axis is None else tuple(
        d for i, d in enumerate(x.shape) if i != batch_axis % x.ndim)
    n = int(np.prod(sample, dtype=np.int64))

    def along(v):
        if batch_axis is not None:
            v = jax.numpy.broadcast_to(jax.numpy.expand_dims(v, batch_axis % x.ndim), x.shape)
        it = Interpreter(1, batch_axis)
        inputs = []
        for p, arr in enumerate(compiled.arrays):
            if p == position:
                jet = Jet(arr, lambda k, v=v: v if k == (1,) else None, expands=True)
                inputs.append(jet)
            else:
                inputs.append(Jet(arr))
        outs = it.run_closed(compiled.closed, inputs)
        return [o.dense(key) for o in outs]

    if batch_axis is None and NARROW_FAMILY_SEEDS:  # NOTE [narrow family seeds]
        def along_index(i):
            valid = (i < n).astype(x.dtype)  # padding lanes of a last chunk: zero
            seed = Narrow(valid[None], jax.numpy.minimum(i, n - 1)[None], x.shape)
            return along(seed)

        outs = map_indices(along_index, n, chunk_size, FAMILY_AXIS)
    else:
        outs = map_units(along, n, tuple(sample), x.dtype, chunk_size, FAMILY_AXIS)
    # collapsed: a chunk's family sum is the same in each of its lanes (unfused: the
    # lanes hold their own terms; padding lanes are zero directions, adding zero)
    if collapsed:
        outs = [o[:, 0].sum(0) if fused else o.sum((0, 1)) for o in outs]
    else:
        outs = [o.reshape((-1,) + o.shape[2:])[:n] for o in outs]
    return jax.tree_util.tree_unflatten(compiled.out_tree, outs)


def map_units(g, n: int, sample: tuple, dtype, chunk_size: int | None = None,
              axis_name: str | None = None):
    """``g`` vmapped over the unit directions ``e_0 .. e_{n-1}`` shaped ``sample``,
    ``chunk_size`` at a time in a ``lax.map`` (all at once for None). Each chunk's
    directions are made inside the loop, so no ``n x n`` identity exists. Outputs
    are ``(chunks, chunk, ...)``; the last chunk is padded with zero directions."""
    def chunk(start, count):
        rows = unit_rows(start, count, n, dtype).reshape((count,) + sample)
        return jax.vmap(g, axis_name=axis_name)(rows)

    if chunk_size is None or chunk_size >= n:
        return jax.tree_util.tree_map(lambda o: o[None], chunk(0, n))
    return jax.lax.map(lambda s: chunk(s, chunk_size), jax.numpy.arange(0, n, chunk_size))


def map_indices(g, n: int, chunk_size: int | None = None, axis_name: str | None = None):
    """``g`` vmapped over the indices ``0 .. n-1``, ``chunk_size`` at a time in a
    ``lax.map``; outputs ``(chunks, chunk, ...)``, the last chunk padded with
    indices ``>= n`` (``g`` makes them zero)."""
    jnp = jax.numpy
    if chunk_size is None or chunk_size >= n:
        return jax.tree_util.tree_map(lambda o: o[None],
                                      jax.vmap(g, axis_name=axis_name)(jnp.arange(n)))
    return jax.lax.map(lambda s: jax.vmap(g, axis_name=axis_name)(s + jnp.arange(chunk_size)),
                       jnp.arange(0, n, chunk_size))


def unit_rows(start, count: int, n: int, dtype) -> jax.Array:
    """Rows ``e_start .. e_{start+count-1}`` of the ``n x n`` identity; rows past
    ``n`` are zero (padding of a last chunk: a zero direction contributes zero)."""
    jnp = jax.numpy
    index = start + jnp.arange(count)
    return (index[:, None] == jnp.arange(n)[None, :]).astype(dtype)


def run_directions(compiled: Traced, slot: int, rows, weights: np.ndarray, order: int,
                   batch_axis: int | None, *, per_sample: bool = False, top=None,
                   chunk_size: int | None = None, per_direction: bool = False,
                   picks=None, pick_scale: float = 1.0) -> Any:
    """``sum_n w_n D^order f[v_n]`` (plus ``Df[top]``), with the directions ``rows``
    vmapped on one family axis (``core._directions``). ``rows``: ``(N, *sample)``
    shared by every sample, or ``(N, *x.shape)`` with ``per_sample``.

    The family sum is one ``psum`` of a collapsed key with one coefficient, so the
    weights go into the directions: ``D^K f[|w|^(1/K) v] = |w| D^K f[v]``, one family
    per sign of ``w``. ``top`` is the argument's own collapsed coefficient (a first-
    order term: ``D^K`` of the jet ``x + t v + t^2 top / 2`` adds ``Df[top]`` for
    ``K = 2``); it is added once, in the first family's first chunk.

    ``picks``: ``rows[n] = pick_scale * e_{picks[n]}``; without a batch axis each
    lane's seed is then a Narrow coefficient at its pick (NOTE [picked seeds])."""
    jnp = jax.numpy
    position = next(p for p, s in compiled.selected.items() if s == slot)
    x = compiled.arrays[position]
    weights = np.asarray(weights, np.float64)
    if picks is not None and per_sample:
        picks = None  # per-sample seeds are rows of their own
    if picks is not None:
        picks = jnp.asarray(picks)
    if per_direction:
        lanes = jnp.asarray(rows) if picks is None else (
            picks, jnp.full(picks.shape, pick_scale, x.dtype))
        outs = _per_direction(compiled, position, x, lanes, order, batch_axis,
                              per_sample, chunk_size)
        w = jnp.asarray(weights, x.dtype)
        outs = [o * w.reshape((-1,) + (1,) * (o.ndim - 1)) for o in outs]
        return jax.tree_util.tree_unflatten(compiled.out_tree, outs)
    total = None
    groups = [(s, np.flatnonzero(np.sign(weights) == s)) for s in (1.0, -1.0)]
    groups = [(s, idx) for s, idx in groups if idx.size]
    if not groups:  # no direction: only the top term
        groups = [(1.0, np.zeros(0, np.int64))]
    for g, (sign, idx) in enumerate(groups):
        scale = np.abs(weights[idx]) ** (1.0 / order)
        if picks is None:
            mine = jnp.asarray(rows)[idx] * jnp.asarray(scale, x.dtype).reshape(
                (-1,) + (1,) * (jnp.ndim(rows) - 1))
        else:  # (positions, values) per lane
            mine = (picks[idx], jnp.asarray(scale * pick_scale, x.dtype))
        key = _jets.Collapsed(((sign, (order,)),), family=FAMILY_AXIS)
        own_top = top if g == 0 else None
        out = _collapsed_family(compiled, position, x, mine, key, batch_axis, per_sample,
                                own_top, chunk_size)
        total = out if total is None else jax.tree_util.tree_map(jnp.add, total, out)
    return jax.tree_util.tree_unflatten(compiled.out_tree, total)


def _collapsed_family(compiled, position, x, rows, key, batch_axis, per_sample, top,
                      chunk_size):
    jnp = jax.numpy
    key, fused = _family_key(key)  # NOTE [family inside shard_map]

    def along(v, top_scale):
        v = _lane_seed(v, x, batch_axis, per_sample)
        own = None if top is None else top * top_scale

        def rule(k, v=v):
            if k == (1,):
                return v
            if isinstance(k, _jets.Collapsed):
                return own
            return None

        it = Interpreter(1, batch_axis)
        inputs = [Jet(arr, rule) if p == position else Jet(arr)
                  for p, arr in enumerate(compiled.arrays)]
        inputs[position].top = own is not None  # NOTE [own top] in _interpret.py
        outs = it.run_closed(compiled.closed, inputs)
        return [o.dense(key) for o in outs]

    n = _lanes(rows)
    if n == 0:  # only the top term: one lane of a zero direction
        rows, n = jax.tree_util.tree_map(
            lambda r: jnp.zeros((1,) + r.shape[1:], r.dtype), rows), 1
    width = n if chunk_size is None or chunk_size >= n else chunk_size
    # fused: the top is family-wide, so every lane adds it once for all; unfused:
    # only lane 0 may add it
    lane_top = (jnp.ones(width, x.dtype) if fused
                else (jnp.arange(width) == 0).astype(x.dtype))

    def lanes(vs, top_scale):
        return jax.vmap(lambda v, t: along(v, t * top_scale),
                        axis_name=FAMILY_AXIS if fused else None)(vs, lane_top)

    if width == n:
        outs = lanes(rows, 1.0)
        # the family sum is the same in every lane
        return [o[0] if fused else o.sum(0) for o in outs]
    chunks = _chunked(rows, chunk_size)  # zero directions contribute zero
    first = (jnp.arange(chunks.shape[0]) == 0).astype(x.dtype)
    outs = jax.lax.map(lambda a: lanes(a[0], a[1]), (chunks, first))
    return [o[:, 0].sum(0) if fused else o.sum((0, 1)) for o in outs]


def _per_direction(compiled, position, x, rows, order: int, batch_axis, per_sample,
                   chunk_size) -> list:
    """``D^order f[v_n]`` for each direction ``v_n``, stacked first: one lane per
    direction with its own top coefficient (no family sum)."""
    jnp = jax.numpy

    def along(v):
        v = _lane_seed(v, x, batch_axis, per_sample)
        it = Interpreter(1, batch_axis)
        inputs = [Jet(arr, lambda k, v=v: v if k == (1,) else None, expands=True)
                  if p == position else Jet(arr) for p, arr in enumerate(compiled.arrays)]
        return [o.dense((order,)) for o in it.run_closed(compiled.closed, inputs)]

    n = _lanes(rows)
    if chunk_size is None or chunk_size >= n:
        return jax.vmap(along)(rows)
    outs = jax.lax.map(jax.vmap(along), _chunked(rows, chunk_size))
    return [o.reshape((-1,) + o.shape[2:])[:n] for o in outs]


# NOTE [picked seeds]: a coordinate-sampling estimator's seeds are scaled unit
# vectors at random (traced) coordinates (NOTE [coordinate sampling] in
# _estimators.py). As a lane's seed they are a Narrow coefficient (a value at one
# position), so a dense layer reads one row of its weight per lane instead of
# multiplying an n-wide one-hot into it (``_rules._narrow_dot``): the first layer's
# tangent work is O(width) per sample, not O(n * width), and the cost per sample
# does not grow with n beyond reading x. With a batch axis inside the interpretation
# (under a jit whose traced weights keep the per-sample route unproven) a lane's seed
# is one position per sample; for a ``(batch, n)`` x that is one column in every
# row, and the dense layer reads that row of its weight for every sample at once.
def _lane_seed(v, x, batch_axis, per_sample):
    """A lane's seed: a row (broadcast over the batch axis unless per sample), or a
    ``(position, value)`` pick as a Narrow coefficient."""
    if isinstance(v, tuple):
        position, value = v
        if batch_axis is None:
            return Narrow(value[None], position[None], x.shape)
        return _batched_pick(position, value, x, batch_axis % x.ndim)
    if batch_axis is not None and not per_sample:
        v = jax.numpy.broadcast_to(jax.numpy.expand_dims(v, batch_axis % x.ndim), x.shape)
    return v


def _batched_pick(position, value, x, b: int) -> Narrow:
    """The seed ``value * e_position`` of one sample, in every sample along axis
    ``b``: one position per sample (a column per row for a ``(batch, n)`` x)."""
    jnp = jax.numpy
    size = x.shape[b]
    sample = tuple(d for i, d in enumerate(x.shape) if i != b)
    index = list(jnp.unravel_index(position, sample)) if sample else []
    full = index[:b] + [jnp.arange(size)] + index[b:]
    flat = jnp.ravel_multi_index(tuple(jnp.broadcast_arrays(*full)), x.shape, mode="clip")
    column = position if (x.ndim == 2 and b == 0) else None
    return Narrow(jnp.broadcast_to(value, (size,)), flat, x.shape, column)


def _lanes(rows) -> int:
    return jax.tree_util.tree_leaves(rows)[0].shape[0]


def _chunked(rows, chunk_size: int):
    """``rows`` (a pytree of lane-first arrays) zero-padded to whole chunks and
    reshaped ``(chunks, chunk_size, ...)``."""
    jnp = jax.numpy
    pad = (-_lanes(rows)) % chunk_size

    def one(r):
        padded = jnp.concatenate([r, jnp.zeros((pad,) + r.shape[1:], r.dtype)])
        return padded.reshape((-1, chunk_size) + r.shape[1:])

    return jax.tree_util.tree_map(one, rows)
