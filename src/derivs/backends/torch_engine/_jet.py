"""Lazy jets over an FX builder, and the jet algebra that rules are written in.

A :class:`Jet` holds the coefficients of one value for one pass (see
``derivs.core._jets`` for the normalization). Coefficients are computed on first
request and memoized, so only what the requested partials need is ever emitted:
dead derivative code is never created in the first place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from ...core import _formulas, _jets
from ._builder import Builder, Val, aten

Kappa = _jets.Kappa


class Jet:
    """Coefficients of a value. ``primal`` is an ``fx.Node`` or a Python number;
    ``rule(kappa)`` computes coefficient ``kappa != 0``; ``const`` jets have no
    derivative at all."""

    __slots__ = ("ctx", "primal", "rule", "const", "memo", "seeds", "expands")

    def __init__(self, ctx: "Context", primal: Any, rule: Callable[[Kappa], Val] | None):
        self.ctx, self.primal, self.rule = ctx, primal, rule
        self.const = rule is None
        self.memo: dict[Kappa, Val] = {}
        self.seeds: dict[int, int] | None = None  # group -> flat index, input jets only
        # A rule that knows count vectors only: collapsed keys are summed from terms.
        self.expands = False

    def get(self, kappa: Kappa) -> Val:
        if _jets.is_zero(kappa):
            return self.primal
        if self.const:
            return None
        v = self.memo.get(kappa, _MISSING)
        if v is _MISSING:
            if self.expands and isinstance(kappa, _jets.Collapsed):
                b = self.ctx.b
                raw = b.total(b.scale(self.get(alpha), c) for c, alpha in kappa.terms)
            else:
                raw = self.rule(kappa)
            v = self.ctx.b.uniform(raw)
            if isinstance(self.primal, fx.Node):
                v = self.ctx.b.fit(v, self.primal)
            self.memo[kappa] = v
        return v

    def node(self) -> fx.Node:
        """The primal as a node (Python-number primals are constants of no shape)."""
        if not isinstance(self.primal, fx.Node):
            raise TypeError("internal: a constant jet has no node")
        return self.primal


_MISSING = object()


class Context:
    """Per-pass state: the builder, the batch axis, and memoized derived jets."""

    def __init__(self, builder: Builder, batch_axis: int | None, groups: int = 0):
        self.b = builder
        self.batch_axis = batch_axis
        self.groups = groups  # coordinate groups of the pass (length of count vectors)
        self._derived: dict[Any, Jet] = {}
        self._indices: dict[tuple[int, ...], fx.Node] = {}

    def index_constant(self, positions: list[int], like: fx.Node) -> fx.Node:
        """An int64 index tensor, stored once in the graph module."""
        key = tuple(positions)
        if key not in self._indices:
            device = like.meta["val"].device
            self._indices[key] = self.b.constant(torch.tensor(positions, device=device))
        return self._indices[key]

    def const(self, value: Any) -> Jet:
        return Jet(self, value, None)

    def derived(self, key: Any, make: Callable[[], Jet]) -> Jet:
        jet = self._derived.get(key)
        if jet is None:
            jet = self._derived[key] = make()
        return jet

    # -- the jet algebra -------------------------------------------------------
    def linear(self, a: Jet, fn: Callable[[fx.Node], fx.Node], *, transparent: bool = False
               ) -> Jet:
        """A map linear in ``a``, applied coefficient-wise. ``transparent`` maps (views,
        expands) keep constant-filled coefficients constant; others materialize them."""
        if a.const:
            return self.const(fn(a.primal) if isinstance(a.primal, fx.Node) else a.primal)
        primal = fn(a.node())

        def rule(kappa):
            v = a.get(kappa)
            if v is None or (transparent and isinstance(v, float)):
                return v
            return fn(self.b.materialize(v, a.node()))

        return Jet(self, primal, rule)

    def linear_elementwise(self, a: Jet, target, other: fx.Node) -> Jet:
        """``target(a, other)`` for an elementwise op linear in ``a`` (multiplying by a
        slope, dividing by a constant): narrow coefficients stay narrow."""
        if a.const:
            return self.const(self.b.op(target, a.primal, other)
                              if isinstance(a.primal, fx.Node) else a.primal)
        primal = self.b.op(target, a.node(), other)

        def rule(kappa):
            v = a.get(kappa)
            if isinstance(v, float):
                v = self.b.materialize(v, a.node())
            return self.b.elementwise(target, v, other)

        return Jet(self, primal, rule)

    def linear_n(self, parts: list[Jet], fn: Callable[[list[fx.Node]], fx.Node]) -> Jet:
        """A map linear in each of several jets jointly (cat, stack, where)."""
        nodes = [p.primal if isinstance(p.primal, fx.Node) else None for p in parts]
        primal = fn([self._as_node(p) for p in parts])
        if all(p.const for p in parts):
            return self.const(primal)

        def rule(kappa):
            vals = [p.get(kappa) for p in parts]
            if all(v is None for v in vals):
                return None
            return fn([self.b.materialize(v, n) for v, n in zip(vals, nodes)])

        return Jet(self, primal, rule)

    def _as_node(self, p: Jet) -> fx.Node:
        if isinstance(p.primal, fx.Node):
            return p.primal
        raise TypeError("internal: expected a tensor-valued jet")

    def add(self, a: Jet, b: Jet, alpha: float = 1.0) -> Jet:
        primal = self._num(a.primal, b.primal, lambda x, y: self.b.add(x, self.b.scale(y, alpha)),
                           lambda x, y: x + alpha * y)
        if a.const and b.const:
            return self.const(primal)
        return Jet(self, primal,
                   lambda k: self.b.add(a.get(k), self.b.scale(b.get(k), alpha)))

    def affine(self, a: Jet, scale: float, shift: float) -> Jet:
        """``scale * a + shift`` (scalars)."""
        return self.add(self.scale(a, scale), self.const(float(shift)))

    def scale(self, a: Jet, c: float) -> Jet:
        p = a.primal
        primal = self._num(p, float(c), self.b.mul, lambda x, y: x * y)
        if a.const:
            return self.const(primal)
        return Jet(self, primal, lambda k: self.b.scale(a.get(k), c))

    def mul(self, a: Jet, b: Jet) -> Jet:
        """Elementwise product (Leibniz rule)."""
        return self.bilinear(a, b, None)

    def bilinear(self, a: Jet, b: Jet, op) -> Jet:
        """A bilinear op: elementwise product when ``op`` is None, else e.g. aten.mm."""
        bld = self.b

        def apply(x: Val, y: Val, like_x, like_y) -> Val:
            if x is None or y is None:
                return None
            if op == aten.mm.default:
                narrow = bld.mm_narrow(x, y, like_x, like_y)
                if narrow is not None:
                    return narrow
            return bld.op(op, bld.materialize(x, like_x), bld.materialize(y, like_y))

        if op is None:
            primal = self._num(a.primal, b.primal, bld.mul, lambda x, y: x * y)
        else:
            primal = bld.op(op, a.node(), b.node())
        if a.const and b.const:
            return self.const(primal)

        def rule(kappa):
            if op is None:
                return bld.sum_of_products((a.get(t), b.get(r), m)
                                           for t, r, m in _jets.product_terms(kappa))
            return bld.total(
                bld.scale(apply(a.get(t), b.get(r), a.primal, b.primal), m)
                for t, r, m in _jets.product_terms(kappa))

        return Jet(self, primal, rule)

    def chain(self, a: Jet, primal: Any, psi: Callable[[Jet], Jet]) -> Jet:
        """``phi(a)`` given its primal and ``psi(result) -> phi'(a)`` as a jet (the
        result is passed so that e.g. exp, tanh can use their own coefficients)."""
        if a.const:
            return self.const(primal)
        result = Jet(self, primal, None)
        result.const = False
        holder: list[Jet] = []

        def rule(kappa):
            if not holder:
                holder.append(psi(result))
            d = holder[0]
            return self.b.sum_of_products((d.get(t), a.get(r), m)
                                          for t, r, m in _jets.composition_terms(kappa))

        result.rule = rule
        return result

    def _num(self, x, y, node_op, num_op):
        if isinstance(x, fx.Node) or isinstance(y, fx.Node):
            out = node_op(float(x) if isinstance(x, (int, float)) else x,
                          float(y) if isinstance(y, (int, float)) else y)
            if out is None:  # a primal times 0: a value, not a structural zero
                node = x if isinstance(x, fx.Node) else y
                out = self.b.op(aten.mul.Tensor, node, 0.0)
            return out
        return num_op(x, y)

    # -- elementwise functions through the chain rule ----------------------------
    def unary(self, name: str, a: Jet, p: float | None = None) -> Jet:
        """``name(a)`` for the functions in ``_UNARY``; memoized per (name, a, p)."""
        # keyed on the jet's identity: ``a`` is kept in the key, so that a freed
        # jet's id can never be reused for another one while the entry lives
        return self.derived((name, _Identity(a), p), lambda: _UNARY[name](self, a, p))


class _Identity:
    """Hashes and compares by the identity of the object it holds (and keeps it alive)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def _pow(ctx: Context, a: Jet, p: float) -> Jet:
    if p == 0:
        return ctx.const(1.0)
    if p == 1:
        return a
    if not isinstance(a.primal, fx.Node):
        return ctx.const(float(a.primal) ** p)
    primal = ctx.b.op(aten.pow.Tensor_Scalar, a.primal, p)
    return ctx.chain(a, primal, lambda r: ctx.scale(ctx.unary("pow", a, p - 1), p))


def _from_output(name: str):
    """phi' read off the output ``r`` (``core._formulas.OUTPUT_POLYNOMIALS``):
    ``c0 + c1 r + c2 r^2``, with the square as one product."""
    c0, c1, c2 = _formulas.OUTPUT_POLYNOMIALS[name]

    def psi(c: Context, a: Jet, r: Jet) -> Jet:
        out = c.scale(c.mul(r, r), c2)
        if c1:
            out = c.add(out, r, c1)
        return c.affine(out, 1.0, c0) if c0 else out
    return psi


def _simple(target, psi):
    def make(ctx: Context, a: Jet, p):
        primal = ctx.b.op(target, a.node())
        return ctx.chain(a, primal, lambda r: psi(ctx, a, r))
    return make


_UNARY: dict[str, Callable[[Context, Jet, Any], Jet]] = {
    "pow": _pow,
    "sin": _simple(aten.sin.default, lambda c, a, r: c.unary("cos", a)),
    "cos": _simple(aten.cos.default, lambda c, a, r: c.scale(c.unary("sin", a), -1.0)),
    "exp": _simple(aten.exp.default, lambda c, a, r: r),
    "expm1": _simple(aten.expm1.default, lambda c, a, r: c.unary("exp", a)),
    "log": _simple(aten.log.default, lambda c, a, r: c.unary("pow", a, -1.0)),
    "log1p": _simple(aten.log1p.default,
                     lambda c, a, r: c.unary("pow", c.affine(a, 1.0, 1.0), -1.0)),
    "sqrt": _simple(aten.sqrt.default, lambda c, a, r: c.scale(c.unary("pow", a, -0.5), 0.5)),
    "rsqrt": _simple(aten.rsqrt.default, lambda c, a, r: c.scale(c.unary("pow", a, -1.5), -0.5)),
    "reciprocal": _simple(aten.reciprocal.default,
                          lambda c, a, r: c.scale(c.unary("pow", a, -2.0), -1.0)),
    "tanh": _simple(aten.tanh.default, _from_output("tanh")),
    "tan": _simple(aten.tan.default, _from_output("tan")),
    "sigmoid": _simple(aten.sigmoid.default, _from_output("sigmoid")),
    "atan": _simple(aten.atan.default,
                    lambda c, a, r: c.unary("pow", c.affine(c.mul(a, a), 1.0, 1.0), -1.0)),
    "asin": _simple(aten.asin.default,
                    lambda c, a, r: c.unary("pow", c.affine(c.mul(a, a), -1.0, 1.0), -0.5)),
    "acos": _simple(aten.acos.default, lambda c, a, r: c.scale(
        c.unary("pow", c.affine(c.mul(a, a), -1.0, 1.0), -0.5), -1.0)),
    "atanh": _simple(aten.atanh.default,
                     lambda c, a, r: c.unary("pow", c.affine(c.mul(a, a), -1.0, 1.0), -1.0)),
    "sinh": _simple(aten.sinh.default, lambda c, a, r: c.unary("cosh", a)),
    "cosh": _simple(aten.cosh.default, lambda c, a, r: c.unary("sinh", a)),
    "erf": _simple(aten.erf.default, lambda c, a, r: c.scale(
        c.unary("exp", c.scale(c.mul(a, a), -1.0)), 2.0 / math.sqrt(math.pi))),
}
