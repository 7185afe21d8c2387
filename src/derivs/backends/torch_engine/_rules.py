"""Jet rules for ATen ops, one registry entry per overload.

A rule receives the pass context, the traced node and ``J`` (traced argument ->
jet; Python scalars become constant jets) and returns the node's jet. Only nodes
that depend on a differentiated input need a rule; every other node is copied as
a constant. An op without a rule makes the engine fall back to the general
nested-forward path, reported by ``derivs.explain``: never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx

from ...core import _formulas
from ._builder import Column, aten
from ._jet import Context, Jet
from ._registry import CONSTANT_OPS, Unsupported, defjet

Rule = Callable[[Context, fx.Node, Callable], Jet]


def _rest(node: fx.Node, J, start: int = 1):
    """Primal values of the arguments after the first (traced ones mapped, also
    inside lists such as the indices of ``index.Tensor``)."""
    return list(fx.node.map_arg(tuple(node.args[start:]), lambda a: J(a).primal))


def _kw(node: fx.Node, J):
    return dict(fx.node.map_arg(dict(node.kwargs), lambda a: J(a).primal))


# -- maps linear in their first argument ------------------------------------------
_VIEWS = [aten.view.default, aten._unsafe_view.default, aten.reshape.default,
          aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
          aten.squeeze.default, aten.permute.default, aten.t.default, aten.transpose.int,
          aten.select.int, aten.slice.Tensor, aten.alias.default, aten.clone.default,
          aten.flip.default, aten._to_copy.default, aten.narrow.default,
          aten.diagonal.default, aten.repeat.default]
_LINEAR = [aten.cumsum.default, aten.index_select.default, aten.gather.default,
           aten.index.Tensor, aten.roll.default, aten.trace.default]


# Coefficients need not have the value's strides, so a view of the value may not be
# a view of them: views by size run as reshape (a view where one exists).
_BY_SIZE = {aten.view.default: aten.reshape.default, aten._unsafe_view.default: aten.reshape.default}


def _linear_rule(transparent: bool) -> Rule:
    def rule(ctx, node, J):
        rest, kw = _rest(node, J), _kw(node, J)
        target = _BY_SIZE.get(node.target, node.target)
        return ctx.linear(J(node.args[0]), lambda x: ctx.b.op(target, x, *rest, **kw),
                          transparent=transparent)
    return rule


defjet(*_VIEWS)(_linear_rule(True))
defjet(*_LINEAR)(_linear_rule(False))


@defjet(aten.sum.default, aten.sum.dim_IntList, aten.mean.default, aten.mean.dim)
def _reduce(ctx, node, J):
    """Sums and means; a Column coefficient reduced over its axis needs only its
    column (the other entries are structural zeros)."""
    a, b = J(node.args[0]), ctx.b
    rest, kw = _rest(node, J), _kw(node, J)
    ndim = len(b.shape(a.node()))
    dims = (list(range(ndim)) if node.target in (aten.sum.default, aten.mean.default)
            or not node.args[1] else [d % ndim for d in node.args[1]] if ndim else [])
    keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(kw.get("keepdim", False))
    count = 1
    for d in dims:
        count *= b.shape(a.node())[d]
    is_mean = node.target in (aten.mean.default, aten.mean.dim)
    primal = b.op(node.target, a.node(), *rest, **kw)
    if a.const:
        return ctx.const(primal)

    def rule(kappa):
        v = a.get(kappa)
        if isinstance(v, Column) and (ndim + v.axis) in dims and not kw.get("dtype"):
            full = list(b.shape(a.node()))
            full[ndim + v.axis] = 1
            col = v.val if isinstance(v.val, fx.Node) else b.op(
                aten.full.default, [1] * -v.axis, v.val, dtype=v.dtype, device=v.device)
            col = b.op(aten.expand.default, col, full)
            out = b.op(aten.sum.dim_IntList, col, dims, keepdim)
            return b.scale(out, 1.0 / count) if is_mean else out
        if v is None:
            return None
        return b.op(node.target, b.materialize(v, a.node()), *rest, **kw)

    return Jet(ctx, primal, rule)


def strided_positions(x_meta, size, stride, offset) -> "torch.Tensor":
    """NOTE [as_strided]: ``as_strided`` reads storage, not the tensor: output element
    ``k`` is the element of ``x`` stored at ``offset + sum k_i stride_i``. A
    coefficient of ``x`` is a tensor of x's shape in some other layout, so the rule
    gathers the *logical* positions of x at those storage positions (an index tensor
    of the output's shape into x flattened). Raises Unsupported when the output
    reads storage outside x's own elements (another tensor's memory)."""
    import numpy as np

    shape, xstride = tuple(x_meta.shape), tuple(x_meta.stride())
    xoff = x_meta.storage_offset()
    offset = xoff if offset is None else int(offset)
    logical = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    storage = xoff + sum(np.unravel_index(logical, shape)[i] * xstride[i]
                         for i in range(len(shape))) if shape else np.full(1, xoff)
    where = {int(p): int(j) for j, p in enumerate(np.atleast_1d(storage))}
    out = np.full(tuple(size), offset, np.int64)
    for i, (n, st) in enumerate(zip(size, stride)):
        out = out + (np.arange(n, dtype=np.int64) * st).reshape(
            (1,) * i + (n,) + (1,) * (len(size) - i - 1))
    try:
        idx = np.vectorize(where.__getitem__, otypes=[np.int64])(out) if out.size else out
    except KeyError as e:
        raise Unsupported("as_strided reads storage outside its input tensor") from e
    return torch.as_tensor(idx)


@defjet(aten.as_strided.default)
def _as_strided(ctx, node, J):
    """NOTE [as_strided]: coefficients gathered at the logical positions that the
    output reads."""
    a = J(node.args[0])
    size, stride = list(node.args[1]), list(node.args[2])
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset")
    b = ctx.b
    primal = b.op(node.target, *_rest(node, J, 0), **_kw(node, J))
    if a.const:
        return ctx.const(primal)
    idx = strided_positions(a.node().meta["val"], size, stride, offset)
    index = b.constant(idx.to(a.node().meta["val"].device))
    jet = ctx.linear(a, lambda v: b.op(aten.index.Tensor, b.op(aten.reshape.default, v, [-1]),
                                       [index]))
    jet.primal = primal
    return jet


@defjet(aten.neg.default)
def _neg(ctx, node, J):
    return ctx.scale(J(node.args[0]), -1.0)


@defjet(aten.cat.default, aten.stack.default)
def _cat(ctx, node, J):
    rest = _rest(node, J)
    parts = [J(a) for a in node.args[0]]
    return ctx.linear_n(parts, lambda xs: ctx.b.op(node.target, xs, *rest))


@defjet(aten.where.self, torch.ops.prims.where.default)
def _where(ctx, node, J):
    cond = J(node.args[0]).primal
    return ctx.linear_n([J(node.args[1]), J(node.args[2])],
                        lambda xs: ctx.b.op(aten.where.self, cond, xs[0], xs[1]))


@defjet(aten.constant_pad_nd.default)
def _pad(ctx, node, J):
    a, pad = J(node.args[0]), node.args[1]
    value = node.args[2] if len(node.args) > 2 else 0.0
    jet = ctx.linear(a, lambda x: ctx.b.op(aten.constant_pad_nd.default, x, pad, 0.0))
    jet.primal = ctx.b.op(aten.constant_pad_nd.default, a.node(), pad, value)
    return jet


@defjet(aten.copy.default)
def _copy(ctx, node, J):
    """``copy(dest, src)`` (functionalized ``dest.copy_(src)``): ``src`` converted
    and broadcast to ``dest``'s dtype and shape; ``dest``'s values are overwritten,
    so only ``src`` has a derivative."""
    b, meta = ctx.b, node.meta["val"]
    src = J(node.args[1])
    if not isinstance(src.primal, fx.Node):
        return ctx.const(b.op(aten.full.default, list(meta.shape), src.primal,
                              dtype=meta.dtype, device=meta.device))

    def fn(v):
        if v.meta["val"].dtype != meta.dtype:
            v = b.op(aten._to_copy.default, v, dtype=meta.dtype)
        if tuple(v.meta["val"].shape) != tuple(meta.shape):
            v = b.op(aten.expand.default, v, list(meta.shape))
        return v

    return ctx.linear(src, fn)


# -- arithmetic --------------------------------------------------------------------
@defjet(aten.add.Tensor, aten.add.Scalar)
def _add(ctx, node, J):
    return ctx.add(J(node.args[0]), J(node.args[1]), float(node.kwargs.get("alpha", 1)))


@defjet(aten.sub.Tensor, aten.sub.Scalar)
def _sub(ctx, node, J):
    return ctx.add(J(node.args[0]), J(node.args[1]), -float(node.kwargs.get("alpha", 1)))


@defjet(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(ctx, node, J):
    return ctx.add(J(node.args[1]), J(node.args[0]), -float(node.kwargs.get("alpha", 1)))


@defjet(aten.mul.Tensor, aten.mul.Scalar)
def _mul(ctx, node, J):
    return ctx.mul(J(node.args[0]), J(node.args[1]))


@defjet(aten.div.Tensor, aten.div.Scalar)
def _div(ctx, node, J):
    a, b = J(node.args[0]), J(node.args[1])
    if b.const:
        den = b.primal
        if not isinstance(den, fx.Node):
            return ctx.scale(a, 1.0 / float(den))
        return ctx.linear_elementwise(a, aten.div.Tensor, den)
    return ctx.mul(a, ctx.unary("pow", b, -1.0))


@defjet(aten.pow.Tensor_Scalar)
def _pow(ctx, node, J):
    return ctx.unary("pow", J(node.args[0]), float(node.args[1]))


@defjet(aten.pow.Scalar)
def _pow_scalar_base(ctx, node, J):  # base ** x = exp(x * log(base)), base > 0
    import math

    base = float(node.args[0])
    return ctx.unary("exp", ctx.scale(J(node.args[1]), math.log(base)))


for _name in ("sin", "cos", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "reciprocal",
              "tanh", "tan", "sigmoid", "atan", "asin", "acos", "atanh", "sinh", "cosh", "erf"):
    defjet(getattr(aten, _name).default)(
        (lambda name: lambda ctx, node, J: ctx.unary(name, J(node.args[0])))(_name))


@defjet(aten.silu.default)
def _silu(ctx, node, J):
    a = J(node.args[0])
    return ctx.mul(a, ctx.unary("sigmoid", a))


# -- piecewise-linear functions: phi(a)[k] = phi'(a0) a[k] (phi'' = 0 almost everywhere)
def _piecewise(slope: Callable[[Context, fx.Node, Callable], fx.Node]) -> Rule:
    def rule(ctx, node, J):
        a = J(node.args[0])
        s = slope(ctx, node, J)
        return ctx.linear_elementwise(a, aten.mul.Tensor, s)
    return rule


defjet(aten.relu.default)(_piecewise(
    lambda ctx, node, J: ctx.b.op(aten.gt.Scalar, J(node.args[0]).primal, 0)))
defjet(aten.abs.default)(_piecewise(
    lambda ctx, node, J: ctx.b.op(aten.sgn.default, J(node.args[0]).primal)))


def _clamp_mask(ctx, node, J):
    x = J(node.args[0]).primal
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    if node.target == aten.clamp_max.default:
        lo, hi = None, node.args[1]
    mask = None
    for bound, op in ((lo, aten.ge.Scalar), (hi, aten.le.Scalar)):
        if bound is None:
            continue
        m = ctx.b.op(op, x, bound)
        mask = m if mask is None else ctx.b.op(aten.logical_and.default, mask, m)
    return mask if mask is not None else ctx.b.op(aten.ones_like.default, x)


defjet(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)(
    _piecewise(_clamp_mask))


@defjet(aten.maximum.default, aten.minimum.default)
def _max_min(ctx, node, J):
    """The argument the op selects; at ties the mean of both, as PyTorch's own
    derivative of maximum / minimum (and amax) shares them."""
    a, b = J(node.args[0]), J(node.args[1])
    bld = ctx.b
    if not isinstance(a.primal, fx.Node):
        a = ctx.const(bld.op(aten.full_like.default, b.node(), float(a.primal)))
    if not isinstance(b.primal, fx.Node):
        b = ctx.const(bld.op(aten.full_like.default, a.node(), float(b.primal)))
    cmp = aten.gt.Tensor if node.target == aten.maximum.default else aten.lt.Tensor
    pick_a = bld.op(cmp, a.primal, b.primal)
    pick_b = bld.op(cmp, b.primal, a.primal)

    def select(xs):
        mean = bld.op(aten.mul.Tensor, bld.op(aten.add.Tensor, xs[0], xs[1]), 0.5)
        return bld.op(aten.where.self, pick_a, xs[0],
                      bld.op(aten.where.self, pick_b, xs[1], mean))

    return ctx.linear_n([a, b], select)


@defjet(aten.var.correction, aten.var.dim)
def _var(ctx, node, J):
    """Variance: mean of squared deviations, rescaled for the correction."""
    a, b = J(node.args[0]), ctx.b
    shape = b.shape(a.node())
    dims = node.args[1] if len(node.args) > 1 and node.args[1] is not None else None
    dims = (list(range(len(shape))) if not dims else
            [d % len(shape) for d in dims] if shape else [])
    if node.target == aten.var.dim:
        unbiased = node.args[2] if len(node.args) > 2 else True
        correction = 1.0 if unbiased else 0.0
        keepdim = bool(node.args[3]) if len(node.args) > 3 else False
    else:
        correction = node.kwargs.get("correction", 1.0)
        correction = 1.0 if correction is None else float(correction)
        keepdim = bool(node.kwargs.get("keepdim", False))
    count = 1
    for d in dims:
        count *= shape[d]
    mean = ctx.linear(a, lambda v: b.op(aten.mean.dim, v, dims, True))
    dev = ctx.add(a, ctx.linear(mean, lambda v: b.op(aten.expand.default, v, list(shape)),
                                transparent=True), -1.0)
    sq = ctx.linear(ctx.mul(dev, dev), lambda v: b.op(aten.sum.dim_IntList, v, dims, keepdim))
    return ctx.scale(sq, 1.0 / max(count - correction, 0.0) if count > correction
                     else float("nan"))


@defjet(aten.amax.default, aten.amin.default)
def _amax(ctx, node, J):
    """max/min over dims: piecewise linear; the derivative picks the extreme entry,
    shared evenly between ties (as PyTorch's own amax/amin backward)."""
    a, b = J(node.args[0]), ctx.b
    dims = list(node.args[1]) if len(node.args) > 1 else []
    keepdim = bool(node.args[2]) if len(node.args) > 2 else False
    x = a.node()
    if not dims:
        dims = list(range(len(b.shape(x))))
    ext = b.op(node.target, x, dims, True)
    hit = b.op(aten._to_copy.default, b.op(aten.eq.Tensor, x, ext), dtype=x.meta["val"].dtype)
    weight = b.op(aten.div.Tensor, hit, b.op(aten.sum.dim_IntList, hit, dims, True))

    def pick(v):
        return b.op(aten.sum.dim_IntList, b.op(aten.mul.Tensor, v, weight), dims, keepdim)

    return ctx.linear(a, pick)


@defjet(aten.pow.Tensor_Tensor)
def _pow_tensor(ctx, node, J):
    """a ** b for tensor b: exp(b * log(a)) (a > 0, as the derivative in b needs)."""
    a, e = J(node.args[0]), J(node.args[1])
    if e.const and not isinstance(e.primal, fx.Node):
        return ctx.unary("pow", a, float(e.primal))
    return ctx.unary("exp", ctx.mul(e, ctx.unary("log", a)))


# -- bilinear ops --------------------------------------------------------------------
for _t in (aten.mm.default, aten.bmm.default, aten.mv.default, aten.dot.default):
    defjet(_t)((lambda t: lambda ctx, node, J: ctx.bilinear(
        J(node.args[0]), J(node.args[1]), t))(_t))


@defjet(aten.addmm.default)
def _addmm(ctx, node, J):
    beta = float(node.kwargs.get("beta", 1))
    alpha = float(node.kwargs.get("alpha", 1))
    prod = ctx.bilinear(J(node.args[1]), J(node.args[2]), aten.mm.default)
    return ctx.add(ctx.scale(J(node.args[0]), beta), ctx.scale(prod, alpha))


# -- values without a derivative ------------------------------------------------------
_CONSTANT = [aten.detach.default, aten.lift_fresh_copy.default, aten.zeros_like.default,
             aten.ones_like.default, aten.full_like.default, aten.empty_like.default,
             aten.new_zeros.default, aten.new_ones.default, aten.new_full.default,
             aten.new_empty.default, aten.sign.default, aten.sgn.default,
             aten.floor.default, aten.ceil.default, aten.round.default, aten.trunc.default,
             aten.gt.Scalar, aten.gt.Tensor, aten.lt.Scalar, aten.lt.Tensor, aten.ge.Scalar,
             aten.ge.Tensor, aten.le.Scalar, aten.le.Tensor, aten.eq.Scalar, aten.eq.Tensor,
             aten.ne.Scalar, aten.ne.Tensor, aten.argmax.default, aten.argmin.default]


@defjet(*_CONSTANT)
def _constant(ctx, node, J):
    return ctx.const(ctx.b.op(node.target, *_rest(node, J, 0), **_kw(node, J)))


CONSTANT_OPS.update(_CONSTANT)


# -- products along a dimension --------------------------------------------------------
@defjet(aten.prod.default, aten.prod.dim_int)
def _prod(ctx, node, J):
    a = J(node.args[0])
    b = ctx.b
    shape = b.shape(a.node())
    if node.target == aten.prod.default:
        dim, keepdim = None, False
    else:
        dim = node.args[1] % max(len(shape), 1)
        keepdim = bool(node.args[2]) if len(node.args) > 2 else False
    if node.kwargs.get("dtype") is not None:
        raise Unsupported("prod with a dtype argument")
    if a.seeds is not None and _seeds_on_dim(a, shape, dim):
        return _prod_of_seeds(ctx, a, shape, dim, keepdim)
    # General case: a balanced tree of pairwise products (log depth, shared with
    # the JAX engine: ``_formulas.product_tree``).
    x = a if dim is not None else ctx.linear(a, lambda v: b.op(aten.view.default, v, [-1]),
                                              transparent=True)
    d = dim if dim is not None else 0

    def pad(x):
        one_shape = list(b.shape(x.node()))
        one_shape[d] = 1
        val = x.node().meta["val"]
        ones = ctx.const(b.op(aten.ones.default, one_shape, dtype=val.dtype, device=val.device))
        return ctx.linear_n([x, ones], lambda xs: b.op(aten.cat.default, xs, d))

    def halves(x, h, n):
        # Coefficients are emitted lazily, after the tree is built: h and n are
        # bound here, per level.
        return (ctx.linear(x, lambda v: b.op(aten.slice.Tensor, v, d, 0, h), transparent=True),
                ctx.linear(x, lambda v: b.op(aten.slice.Tensor, v, d, h, n), transparent=True))

    n = shape[dim] if dim is not None else b.shape(x.node())[0]
    x = _formulas.product_tree(x, n, pad=pad, halves=halves, mul=ctx.mul)
    if dim is None:
        return ctx.linear(x, lambda v: b.op(aten.view.default, v, []), transparent=True)
    if keepdim:
        return x
    return ctx.linear(x, lambda v: b.op(aten.squeeze.dim, v, d), transparent=True)


def _seeds_on_dim(a: Jet, shape, dim) -> bool:
    """Seeded input whose only non-batch dimension is the reduced one."""
    axis = a.ctx.batch_axis
    axis = None if axis is None else axis % len(shape)
    sample_dims = [i for i in range(len(shape)) if i != axis]
    if len(sample_dims) != 1:
        return False
    return dim is None and len(shape) == 1 or dim == sample_dims[0]


def _prod_of_seeds(ctx, a: Jet, shape, dim, keepdim) -> Jet:
    """prod over the seeded entries: ``_formulas.multilinear_rule``."""
    b = ctx.b
    d = 0 if dim is None else dim
    seeds = a.seeds

    def reduce(v):
        return b.op(aten.prod.default, v) if dim is None else b.op(
            aten.prod.dim_int, v, d, keepdim)

    def product_with_ones(positions):
        index = ctx.index_constant(positions, a.node())
        return reduce(b.op(aten.index_fill.int_Scalar, a.node(), d, index, 1.0))

    rule = _formulas.multilinear_rule(seeds, product_with_ones)
    jet = Jet(ctx, reduce(a.node()), rule)
    jet.expands = True  # collapsed keys: summed from their terms
    return jet

