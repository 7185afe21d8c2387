"""Global sparsity detection for JAX: a jaxpr interpreter over index sets.

Each value carries the sets of input coordinates its elements may depend on
(:mod:`._algebra`). Values that do not depend on the input at all (constants,
``iota``, index arithmetic) are also evaluated, so gathers, scatters and
dynamic slices with computable indices get exact patterns, and products with
constant matrices respect the constants' zeros. Anything whose structure cannot
be known is handled conservatively: never a pattern that misses an entry.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from . import _algebra as A
from ._errors import UnsupportedOpError, no_rule

# Elementwise primitives: an output element depends on the same element of
# every operand (lax operands already have equal shapes, bar scalars).
ELEMENTWISE = frozenset("""
abs acos acosh add add_any asin asinh atan atan2 atanh cbrt clamp conj copy copy_p cos cosh
digamma div erf erf_inv erfc exp exp2 expm1 igamma igammac imag integer_pow lgamma log log1p
logistic max min mul neg nextafter polygamma pow real reduce_precision rem rsqrt select_n sin
sinh sqrt square sub tan tanh zeta bessel_i0e bessel_i1e regularized_incomplete_beta
random_gamma_grad complex custom_lin_p square cumlogsumexp_elementwise
""".split())
# Primitives with a zero (or undefined) derivative everywhere.
ZERO = frozenset("""
sign floor ceil round is_finite stop_gradient iota eq ne lt le gt ge and or not xor
shift_left shift_right_logical shift_right_arithmetic population_count clz argmax argmin
random_bits random_seed random_wrap random_unwrap random_fold_in random_split threefry2x32
rng_bit_generator rng_uniform lu_pivots_to_permutation
""".split())
# Dense linear algebra: every output element depends on every input element.
# Conservative but correct, and said so in the docs (no warning).
LINALG = frozenset("""
lu cholesky triangular_solve qr svd eigh eig householder_product schur hessenberg
tridiagonal tridiagonal_solve custom_linear_solve cholesky_update geqrf geqp3 orgqr
""".split())
# Ops that copy one source element into each output element; their structure is
# read off by running the op on integer element ids.
DATA_OPERANDS = {
    "broadcast_in_dim": (0,), "reshape": (0,), "transpose": (0,), "squeeze": (0,),
    "expand_dims": (0,), "rev": (0,), "slice": (0,), "concatenate": None, "pad": (0, 1),
    "stack": None, "gather": (0,), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1),
    "scatter": (0, 2), "split": (0,),
}
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                       "reduce_xor".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
SCATTER_COMBINE = frozenset("scatter_add scatter-add scatter_mul scatter-mul scatter_min "
                            "scatter-min scatter_max scatter-max scatter_sub scatter-sub".split())
CALLS = frozenset("pjit jit closed_call core_call remat remat2 checkpoint custom_jvp_call "
                  "custom_vjp_call custom_vjp_call_jaxpr".split())
WINDOWS = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window "
                    "cumsum_window".split())


# Scans up to this length are stepped exactly (precise for fori_loop bodies);
# longer ones use a union fixpoint (conservative, bounded work).
EXACT_SCAN_STEPS = 512


def _size(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64))


def _is_float(aval) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.inexact)


class Detector:
    """Interprets jaxprs, mapping each variable to (sets, known value or None)."""

    def __init__(self, n: int, unknown: str = "warn", consts_known: bool = True):
        self.n = n
        self.unknown = unknown
        # False when no guard sees what f reads (NOTE [unguardable]): the arrays it
        # closes over may be rebound, so their zeros are not structural.
        self.consts_known = consts_known
        self.conservative: list[str] = []  # ops handled by the dense fallback

    # -- driving ---------------------------------------------------------------------
    def run_closed(self, closed, deps, vals):
        return self.run(closed.jaxpr, list(closed.consts), deps, vals)

    def run(self, jaxpr, consts, deps, vals):
        env: dict = {}

        def read(v):
            if isinstance(v, jcore.Literal):
                return None, np.asarray(v.val)
            return env[v]

        for v, c in zip(jaxpr.constvars, consts):
            # a constant traced by an enclosing jit has no value here: unknown
            known = self.consts_known and not isinstance(c, jax.core.Tracer)
            env[v] = (None, c if known else None)
        for v, d, x in zip(jaxpr.invars, deps, vals):
            env[v] = (d if _is_float(v.aval) else None, x)
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            in_deps = [d for d, _ in ins]
            in_vals = [x for _, x in ins]
            out_vals = self.evaluate(eqn, in_vals) if all(d is None for d in in_deps) else None
            if out_vals is not None:
                out_deps = [None] * len(eqn.outvars)
            else:
                out_deps = self.rule(eqn, in_deps, in_vals)
                out_vals = [None] * len(eqn.outvars)
            for v, d, x in zip(eqn.outvars, out_deps, out_vals):
                env[v] = (d if _is_float(v.aval) else None, x)
        outs = [read(v) for v in jaxpr.outvars]
        return [d for d, _ in outs], [x for _, x in outs]

    def evaluate(self, eqn, vals):
        """Known outputs of an equation whose inputs are all known (else None)."""
        if any(x is None for x in vals) or eqn.primitive.name.startswith("random"):
            return None
        try:
            with jax.ensure_compile_time_eval():
                out = eqn.primitive.bind(*vals, **eqn.params)
        except Exception:  # not evaluable eagerly: the value stays unknown
            return None
        out = list(out) if eqn.primitive.multiple_results else [out]
        return [None if isinstance(o, jax.core.Tracer) else o for o in out]

    # -- rules -----------------------------------------------------------------------
    def rule(self, eqn, deps, vals):
        name = eqn.primitive.name
        outs = eqn.outvars
        if name in ZERO or not any(_is_float(v.aval) for v in outs):
            return [None] * len(outs)
        if name in ELEMENTWISE:
            shape = outs[0].aval.shape
            if name == "select_n" and vals[0] is not None:
                return [self.structural(eqn, deps, vals, tuple(range(1, len(deps))))[0]]
            shapes = [v.aval.shape for v in eqn.invars]
            if name == "mul":
                return [A.product(deps, shapes, vals, shape)]
            return [A.elementwise(deps, shapes, shape)]
        if name == "convert_element_type":
            return [deps[0]]
        if name in DATA_OPERANDS:
            data = DATA_OPERANDS[name] or tuple(range(len(deps)))
            return self.structural(eqn, deps, vals, data)
        if name in REDUCTIONS:
            return [A.reduce(deps[0], eqn.invars[0].aval.shape, eqn.params["axes"])]
        if name in CUMULATIVE:
            return [A.cumulative(deps[0], eqn.invars[0].aval.shape, eqn.params["axis"],
                                 eqn.params.get("reverse", False))]
        if name in SCATTER_COMBINE:
            return [self.scatter_combine(eqn, deps, vals)]
        if name == "dot_general":
            return [self.dot_general(eqn, deps, vals)]
        if name == "conv_general_dilated":
            return [self.conv(eqn, deps, vals)]
        if name in WINDOWS:
            return self.reduce_window(eqn, deps)
        if name == "fft":
            return [self.fft(eqn, deps)]
        if name == "sort":
            shape = eqn.invars[0].aval.shape
            d = A.along(A.union(deps), shape, [eqn.params["dimension"]])
            return [d] * len(outs)
        if name in CALLS:
            closed = eqn.params.get("call_jaxpr") or eqn.params.get("jaxpr") \
                or eqn.params.get("fun_jaxpr")
            if isinstance(closed, jcore.ClosedJaxpr):
                return self.run_closed(closed, deps, vals)[0]
            return self.run(closed, [], deps, vals)[0]
        if name == "cond":
            return self.cond(eqn, deps, vals)
        if name == "while":
            return self.while_loop(eqn, deps, vals)
        if name == "scan":
            return self.scan(eqn, deps, vals)
        if name in LINALG:  # dense by design: listed (no warning), as the pattern is
            self.conservative.append(f"the JAX primitive '{name}' (dense by design)")
            return [A.dense(deps, _size(v.aval)) for v in outs]
        return self.fallback(name, eqn, deps)

    def fallback(self, name, eqn, deps):
        no_rule(f"the JAX primitive '{name}'", self.unknown, self.conservative)
        return [A.dense(deps, _size(v.aval)) for v in eqn.outvars]

    def structural(self, eqn, deps, vals, data):
        """Run the op on integer element ids in place of its data operands."""
        others = [i for i in range(len(deps)) if i not in data]
        if any(vals[i] is None for i in others):  # unknown indices or predicate
            if eqn.primitive.name == "scatter":
                return [self.scatter_combine(eqn, deps, vals)]
            if eqn.primitive.name == "dynamic_update_slice":  # operand[i] or any update
                op = deps[0]
                upd = A.dense([deps[1]], _size(eqn.outvars[0].aval))
                return [A.union([op, upd])]
            return [A.dense([deps[i] for i in data], _size(v.aval)) for v in eqn.outvars]
        sizes = [_size(eqn.invars[i].aval) for i in data]
        total = sum(sizes)
        id_dtype = np.int32 if total < 2**31 - 1 else np.int64
        args = list(vals)
        offset = 0
        for i, s in zip(data, sizes):
            args[i] = np.arange(offset, offset + s, dtype=id_dtype).reshape(
                eqn.invars[i].aval.shape)
            offset += s
        name = eqn.primitive.name
        try:
            if _structural(name, eqn.params):
                outs = _numpy_structural(name, args, eqn.params, eqn.outvars)
            else:
                params = dict(eqn.params)
                if "fill_value" in params:
                    params["fill_value"] = -1
                with jax.ensure_compile_time_eval():
                    outs = eqn.primitive.bind(*args, **params)
                outs = list(outs) if eqn.primitive.multiple_results else [outs]
        except Exception:  # e.g. a dtype-specific parameter: stay conservative
            return self.fallback(name, eqn, deps)
        stacked = A.stack([deps[i] for i in data], sizes, self.n)
        return [A.take(stacked, np.asarray(o)) for o in outs]

    def scatter_combine(self, eqn, deps, vals):
        """``out = operand (+) updates scattered``: each update element joins the
        element it lands on, found by gathering operand ids at the scatter indices
        (the transpose of a scatter is a gather)."""
        operand, indices, updates = eqn.invars[:3]
        out_size = _size(operand.aval)
        landed = None
        if deps[2] is not None:
            if vals[1] is None:  # unknown indices: an update may land anywhere
                landed = A.dense([deps[2]], out_size)
            else:
                dn = eqn.params["dimension_numbers"]
                slice_sizes, pos = [], 0
                for i in range(len(operand.aval.shape)):
                    if i in dn.inserted_window_dims or i in dn.operand_batching_dims:
                        slice_sizes.append(1)
                    else:
                        slice_sizes.append(updates.aval.shape[dn.update_window_dims[pos]])
                        pos += 1
                gdn = lax.GatherDimensionNumbers(
                    offset_dims=dn.update_window_dims,
                    collapsed_slice_dims=dn.inserted_window_dims,
                    start_index_map=dn.scatter_dims_to_operand_dims,
                    operand_batching_dims=dn.operand_batching_dims,
                    start_indices_batching_dims=dn.scatter_indices_batching_dims)
                ids = np.arange(out_size, dtype=np.int32).reshape(operand.aval.shape)
                try:
                    with jax.ensure_compile_time_eval():
                        target = lax.gather(ids, vals[1], gdn, tuple(slice_sizes),
                                            mode=eqn.params["mode"], fill_value=-1)
                    target = np.asarray(target).reshape(-1)
                    if target.size != _size(updates.aval):
                        raise ValueError("update layout")
                    landed = A.group(deps[2], target, out_size)
                except Exception:
                    landed = A.dense([deps[2]], out_size)
        return A.union([deps[0], landed])

    def dot_general(self, eqn, deps, vals):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = eqn.invars[:2]
        ls, rs = lhs.aval.shape, rhs.aval.shape
        lf = [i for i in range(len(ls)) if i not in lc and i not in lb]
        rf = [i for i in range(len(rs)) if i not in rc and i not in rb]
        B = int(np.prod([ls[i] for i in lb], dtype=np.int64))
        M = int(np.prod([ls[i] for i in lf], dtype=np.int64))
        K = int(np.prod([ls[i] for i in lc], dtype=np.int64))
        N = int(np.prod([rs[i] for i in rf], dtype=np.int64))

        def canon(shape, order, val, dims):
            ids = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
            ids = np.transpose(ids, order).reshape(dims)
            if val is None:
                return ids, np.ones(dims, bool)
            return ids, np.transpose(np.asarray(val) != 0, order).reshape(dims)

        lids, lmask = canon(ls, list(lb) + lf + list(lc), vals[0], (B, M, K))
        rids, rmask = canon(rs, list(rb) + list(rc) + rf, vals[1], (B, K, N))
        oids = np.arange(B * M * N).reshape(B, M, N)
        return A.contract(deps[0], deps[1], lids, rids, oids, lmask, rmask)

    def conv(self, eqn, deps, vals):
        p = eqn.params
        lhs, rhs = eqn.invars[:2]
        out = eqn.outvars[0]
        dn = p["dimension_numbers"]
        if p["batch_group_count"] != 1:
            return self.fallback("conv_general_dilated(batch_group_count>1)", eqn, deps)[0]
        lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        lshape = [lhs.aval.shape[i] for i in lspec]
        rshape = [rhs.aval.shape[i] for i in rspec]
        oshape = [out.aval.shape[i] for i in ospec]
        nsp = len(lshape) - 2
        tables = [A.window_positions(lshape[2 + d], oshape[2 + d], rshape[2 + d],
                                     p["window_strides"][d], p["padding"][d][0],
                                     p["lhs_dilation"][d], p["rhs_dilation"][d])
                  for d in range(nsp)]
        table = A.windows(lshape[2:], tables)

        def canon(aval, spec):
            ids = np.arange(_size(aval)).reshape(aval.shape)
            t = np.transpose(ids, spec)
            return t.reshape(t.shape[0], t.shape[1], -1)

        rmask = (np.ones(rhs.aval.shape, bool) if vals[1] is None
                 else np.asarray(vals[1]) != 0)
        rmask = np.transpose(rmask, rspec).reshape(rshape[0], rshape[1], -1)
        return A.convolution(deps[0], deps[1], canon(lhs.aval, lspec), canon(rhs.aval, rspec),
                             canon(out.aval, ospec), table, rmask, p["feature_group_count"])

    def reduce_window(self, eqn, deps):
        p = eqn.params
        n_ops = len(eqn.outvars)
        x = eqn.invars[0].aval
        out = eqn.outvars[0].aval
        tables = [A.window_positions(x.shape[d], out.shape[d], p["window_dimensions"][d],
                                     p["window_strides"][d], p["padding"][d][0],
                                     p["base_dilation"][d], p["window_dilation"][d])
                  for d in range(len(x.shape))]
        table = A.windows(x.shape, tables)
        d = A.union(deps[:n_ops])
        res = A.window_sum(d, np.arange(_size(x)), np.arange(_size(out)), table)
        return [res] * n_ops

    def fft(self, eqn, deps):
        """Every output along the transformed axes depends on every input there
        (dense, conservatively: the transform has no structural zeros)."""
        x = eqn.invars[0].aval
        out = eqn.outvars[0].aval
        k = len(eqn.params["fft_lengths"])
        axes = list(range(len(x.shape) - k, len(x.shape)))
        red = A.reduce(deps[0], x.shape, axes)
        lead = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
        return A.broadcast(red, lead, out.shape)

    # -- control flow ------------------------------------------------------------------
    def cond(self, eqn, deps, vals):
        branches = eqn.params["branches"]
        if vals[0] is not None:  # the branch is known
            idx = int(np.clip(np.asarray(vals[0]), 0, len(branches) - 1))
            return self.run_closed(branches[idx], deps[1:], vals[1:])[0]
        outs = [self.run_closed(b, deps[1:], vals[1:])[0] for b in branches]
        return [A.union(list(ds)) for ds in zip(*outs)]

    def _fixpoint(self, step, carry):
        """Iterate ``carry <- carry | step(carry)`` until no set grows."""
        for _ in range(10_000):
            new = [A.union([c, s]) for c, s in zip(carry, step(carry))]
            if all(_equal(a, b) for a, b in zip(carry, new)):
                return new
            carry = new
        raise RuntimeError("sparsity detection: loop fixpoint did not converge")

    def while_loop(self, eqn, deps, vals):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        body = p["body_jaxpr"]
        bconsts_d, bconsts_v = deps[cn:cn + bn], vals[cn:cn + bn]
        init = deps[cn + bn:]
        n_carry = len(init)
        step = lambda c: self.run_closed(body, bconsts_d + list(c), bconsts_v + [None] * n_carry)[0]
        return self._fixpoint(step, list(init))

    def scan(self, eqn, deps, vals):
        p = eqn.params
        nc, nk = p["num_consts"], p["num_carry"]
        body = p["jaxpr"]
        consts_d, consts_v = deps[:nc], vals[:nc]
        init = deps[nc:nc + nk]
        xs = eqn.invars[nc + nk:]
        xs_deps = deps[nc + nk:]
        length = p["length"]

        def body_run(c, x_d):
            return self.run_closed(body, consts_d + list(c) + list(x_d),
                                   consts_v + [None] * (nk + len(xs)))[0]

        ys_avals = [v.aval for v in eqn.outvars[nk:]]
        if length <= EXACT_SCAN_STEPS:
            # Step exactly: slice t of xs in, slice t of ys out, the carry threaded.
            carry = list(init)
            per_step = [None] * length
            steps = range(length - 1, -1, -1) if p["reverse"] else range(length)
            for t in steps:
                x_t = [A.take(d, np.arange(_size(v.aval)).reshape(v.aval.shape)[t])
                       for d, v in zip(xs_deps, xs)]
                res = body_run(carry, x_t)
                per_step[t] = res[nk:]
                if all(d is None for d in xs_deps) and all(
                        _equal(a, b) for a, b in zip(carry, res[:nk])):
                    for u in steps:  # a fixpoint: every later step repeats this one
                        if per_step[u] is None:
                            per_step[u] = res[nk:]
                    break
                carry = res[:nk]
            ys = []
            for j, aval in enumerate(ys_avals):
                slice_size = _size(aval) // max(length, 1)
                parts = [step[j] for step in per_step]
                ys.append(A.stack(parts, [slice_size] * length, self.n) if length else None)
            return list(carry) + ys
        # Long scans: a slice x[t] may be any slice (union over the scanned axis), and
        # the carry is a union fixpoint (conservative, bounded work).
        xs_d = [A.reduce(d, v.aval.shape, [0]) for d, v in zip(xs_deps, xs)]
        carry = self._fixpoint(lambda c: body_run(c, xs_d)[:nk], list(init))
        ys = body_run(carry, xs_d)[nk:]
        out = list(carry)
        for d, aval in zip(ys, ys_avals):
            out.append(A.broadcast(d, (1,) + tuple(aval.shape[1:]), aval.shape))
        return out


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.nnz == b.nnz and (a != b).nnz == 0


# The parameters each NumPy twin below honours. An equation with any other
# parameter set (a new JAX version's, say) goes to the primitive itself, bound on
# the id arrays: a twin that ignored a parameter would move ids silently (lax.
# reshape's ``dimensions``, a transpose before the reshape, once went unread and
# patterns missed entries).
_STRUCTURAL = {
    "reshape": {"new_sizes", "dimensions", "sharding"},
    "squeeze": {"dimensions"}, "expand_dims": {"dimensions"},
    "broadcast_in_dim": {"shape", "broadcast_dimensions", "sharding"},
    "transpose": {"permutation"}, "rev": {"dimensions"},
    "slice": {"start_indices", "limit_indices", "strides"},
    "concatenate": {"dimension"}, "split": {"sizes", "axis"}, "stack": {"axis"},
}


def _structural(name: str, params: dict) -> bool:
    honoured = _STRUCTURAL.get(name)
    if honoured is None or not set(params) <= honoured:
        return False
    return params.get("sharding") is None


def _numpy_structural(name, args, params, outvars):
    """NumPy versions of the structural ops on id arrays (no JAX dispatch), each
    honouring every parameter in ``_STRUCTURAL``."""
    x = args[0]
    if name == "reshape":
        if params.get("dimensions") is not None:  # lax.reshape transposes first
            x = np.transpose(x, params["dimensions"])
        return [x.reshape(outvars[0].aval.shape)]
    if name in ("squeeze", "expand_dims"):
        return [x.reshape(outvars[0].aval.shape)]
    if name == "broadcast_in_dim":
        shape = params["shape"]
        dims = params["broadcast_dimensions"]
        expanded = np.ones(len(shape), np.int64)
        for src, dst in enumerate(dims):
            expanded[dst] = x.shape[src]
        return [np.broadcast_to(x.reshape(tuple(expanded)), shape)]
    if name == "transpose":
        return [np.transpose(x, params["permutation"])]
    if name == "rev":
        return [np.flip(x, params["dimensions"])]
    if name == "slice":
        strides = params["strides"] or (1,) * x.ndim
        idx = tuple(slice(s, e, st) for s, e, st in
                    zip(params["start_indices"], params["limit_indices"], strides))
        return [x[idx]]
    if name == "concatenate":
        return [np.concatenate(args, axis=params["dimension"])]
    if name == "stack":
        return [np.stack(args, axis=params["axis"])]
    if name == "split":
        cuts = np.cumsum(params["sizes"])[:-1]
        return np.split(x, cuts, axis=params["axis"])
    raise NotImplementedError(name)


def detect(fun: Callable, args: tuple, argnum: int, unknown: str = "warn",
           consts_known: bool = True):
    """Sets of the flattened output on the flattened ``args[argnum]``
    (``consts_known=False``: the values of arrays f closes over are not used).

    Returns ``(csr matrix or None, out_shape, in_shape, conservative ops)``.
    """
    # Arrays are traced; plain Python values stay static (f may slice with them).
    slots = [i for i, a in enumerate(args) if hasattr(a, "shape") and hasattr(a, "dtype")]

    def traced(*arrays):
        full = list(args)
        for i, a in zip(slots, arrays):
            full[i] = a
        return fun(*full)
    structs = [jax.ShapeDtypeStruct(np.shape(args[i]), jnp.result_type(args[i])) for i in slots]
    closed, out_shape = jax.make_jaxpr(traced, return_shape=True)(*structs)
    if not isinstance(out_shape, jax.ShapeDtypeStruct):
        raise TypeError("sparsity detection needs f to return one array (use has_aux=True "
                        "to return (output, aux)).")
    in_shape = tuple(np.shape(args[argnum]))
    n = int(np.prod(in_shape, dtype=np.int64))
    det = Detector(n, unknown, consts_known)
    deps = [A.identity(n) if i == argnum else None for i in slots]
    vals = [None] * len(slots)
    try:
        out_deps, _ = det.run_closed(closed, deps, vals)
    except UnsupportedOpError:
        raise
    except Exception as e:  # noqa: BLE001 - a rule that fails: the dense rule, never a miss
        conservative: list[str] = []
        no_rule(f"f as a whole (a detection rule failed: {type(e).__name__})", unknown,
                conservative)
        m = int(np.prod(out_shape.shape, dtype=np.int64))
        return (A.dense([deps[slots.index(argnum)]], m), tuple(out_shape.shape), in_shape,
                conservative)
    return out_deps[0], tuple(out_shape.shape), in_shape, det.conservative
