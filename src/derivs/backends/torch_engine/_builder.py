"""An FX graph builder that simplifies while it emits.

Values handled by the builder (``Val``) are an ``fx.Node``, a Python float (a
tensor filled with that constant: the all-ones tangent of a one-element sample is
``1.0``) or ``None`` (a structural zero). Arithmetic folds these statically, so a
one-hot tangent's zeros and ones never reach the emitted graph, and every emitted
call is memoized on (op, arguments): common subexpressions are emitted once.
Every node carries its fake-tensor value in ``meta["val"]`` so rules know shapes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
import torch.fx as fx

aten = torch.ops.aten


class Column(NamedTuple):
    """A tensor that is zero except at position ``pos`` along ``axis`` (counted from
    the right, so it survives broadcasting), where it equals ``val`` (a node with
    size 1 on that axis, or a float). The one-hot tangent of a vector coordinate is
    ``Column(1.0, ...)``: products with it are column slices, and products of two
    different columns are structural zeros."""

    val: Any
    axis: int
    pos: int
    size: int
    dtype: torch.dtype
    device: torch.device


Val = Union[fx.Node, float, Column, None]


def is_random(target) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(target, "tags", ())


def is_mutating(target) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is not None and schema.is_mutable


def _is_neg(v: Any) -> bool:
    return isinstance(v, fx.Node) and v.target == aten.neg.default


def _narrow(n: Column, val: Any) -> Val:
    return None if val is None else n._replace(val=val)


def _key(a: Any) -> Any:
    if isinstance(a, (list, tuple)):
        return ("seq", tuple(_key(x) for x in a))
    if isinstance(a, fx.Node):
        return a
    return (type(a), a)


class Builder:
    def __init__(self, fake_mode):
        self.graph = fx.Graph()
        self.fake_mode = fake_mode
        self.constants: dict[str, torch.Tensor] = {}
        self._memo: dict[Any, fx.Node] = {}
        self._real: dict[fx.Node, torch.Tensor] = {}  # values of constant nodes

    # -- emission ----------------------------------------------------------------
    def placeholder(self, name: str, meta_val) -> fx.Node:
        node = self.graph.placeholder(name)
        node.meta["val"] = meta_val
        return node

    def constant(self, tensor: torch.Tensor) -> fx.Node:
        name = f"_derivs_const{len(self.constants)}"
        self.constants[name] = tensor
        node = self.graph.get_attr(name)
        node.meta["val"] = self.fake_mode.from_tensor(tensor)
        self._real[node] = tensor
        return node

    def uniform(self, v: Val) -> Val:
        """A constant node whose entries are all equal, as that Python float."""
        t = self._real.get(v) if isinstance(v, fx.Node) else None
        if t is None or t.numel() == 0 or not t.is_floating_point():
            return v
        first = t.reshape(-1)[0]
        return float(first) if bool((t == first).all()) else v

    def op(self, target, *args, **kwargs) -> fx.Node:
        key = (target, _key(args), _key(sorted(kwargs.items())))
        node = self._memo.get(key)
        if node is None and self._foldable(target, args, kwargs):
            # NOTE [constant folding]: ops on seeds and literals only (e.g. the mean of
            # a one-hot tangent) are evaluated once, here, instead of on every call.
            real = lambda a: self._real[a] if isinstance(a, fx.Node) else a
            value = target(*fx.node.map_arg(args, real), **fx.node.map_arg(kwargs, real))
            node = self._memo[key] = self.constant(value)
        if node is None:
            node = self.graph.call_function(target, args, kwargs)
            with self.fake_mode:
                node.meta["val"] = target(*fx.node.map_arg(args, lambda n: n.meta["val"]),
                                          **fx.node.map_arg(kwargs, lambda n: n.meta["val"]))
            self._memo[key] = node
        return node

    def _foldable(self, target, args, kwargs) -> bool:
        nodes = []
        fx.node.map_arg((args, kwargs), nodes.append)
        if not nodes or not all(n in self._real for n in nodes):
            return False
        schema = getattr(target, "_schema", None)
        return (not is_random(target) and not is_mutating(target)
                and len(getattr(schema, "returns", ())) == 1)

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["val"].shape)

    # -- folding arithmetic on Vals -----------------------------------------------
    def add(self, a: Val, b: Val) -> Val:
        if a is None:
            return b
        if b is None:
            return a
        if isinstance(a, Column) or isinstance(b, Column):
            if (isinstance(a, Column) and isinstance(b, Column)
                    and a[1:] == b[1:]):
                return _narrow(a, self.add(a.val, b.val))
            return self.add(self.densify(a), self.densify(b))
        if isinstance(a, float) and isinstance(b, float):
            return a + b
        if isinstance(a, float):
            a, b = b, a
        if isinstance(b, float):
            if b == 0.0:
                return a
            if _is_neg(a):  # -x + c = c - x
                return self.op(aten.rsub.Scalar, a.args[0], b)
            return self.op(aten.add.Tensor, a, b)
        if _is_neg(b):  # a + (-y) = a - y
            return self.op(aten.sub.Tensor, a, b.args[0])
        if _is_neg(a):
            return self.op(aten.sub.Tensor, b, a.args[0])
        return self.op(aten.add.Tensor, a, b)

    def mul(self, a: Val, b: Val) -> Val:
        if a is None or b is None:
            return None
        if isinstance(b, Column):
            a, b = b, a
        if isinstance(a, Column):
            if isinstance(b, Column):
                if a.axis != b.axis or a.size != b.size:
                    return self.mul(a, self.densify(b))
                return None if a.pos != b.pos else _narrow(a, self.mul(a.val, b.val))
            return _narrow(a, self.mul(a.val, self.column(b, a)))
        if isinstance(a, float) and isinstance(b, float):
            return a * b
        if isinstance(a, float):
            a, b = b, a
        if isinstance(b, float):
            if _is_neg(a):  # -(x) * c = x * (-c): no separate negation
                a, b = a.args[0], -b
            if b == 1.0:
                return a
            if b == 0.0:
                return None
            if b == -1.0:
                return self.op(aten.neg.default, a)
            return self.op(aten.mul.Tensor, a, b)
        return self.op(aten.mul.Tensor, a, b)

    def scale(self, a: Val, c: float) -> Val:
        return self.mul(a, float(c))

    def total(self, terms) -> Val:
        out: Val = None
        for t in terms:
            out = self.add(out, t)
        return out

    def sum_of_products(self, terms) -> Val:
        """``sum m * x * y`` over ``(x, y, m)``; products of two tensors accumulate
        with one fused ``addcmul`` each instead of a mul, a scale and an add."""
        out: Val = None
        for x, y, m in terms:
            if x is None or y is None:
                continue
            x, y, m = self._pull_sign(x, y, float(m))
            if (isinstance(out, fx.Node) and isinstance(x, fx.Node) and isinstance(y, fx.Node)
                    and self._broadcasts_to(x, y, out)):
                out = self.op(aten.addcmul.default, out, x, y, value=m)
            else:
                out = self.add(out, self.scale(self.mul(x, y), m))
        return out

    def _pull_sign(self, x: Val, y: Val, m: float):
        """Moves negations of the factors into the multiplicity (exact)."""
        for _ in range(2):
            if _is_neg(x):
                x, m = x.args[0], -m
            if _is_neg(y):
                y, m = y.args[0], -m
        return x, y, m

    def _broadcasts_to(self, x: fx.Node, y: fx.Node, out: fx.Node) -> bool:
        """addcmul would keep ``out``'s shape (no broadcasting of the accumulator)."""
        shape = torch.broadcast_shapes(self.shape(x), self.shape(y), self.shape(out))
        return tuple(shape) == self.shape(out)

    def column(self, b: Val, n: Column) -> Val:
        """The part of ``b`` that multiplies ``n``'s nonzero position."""
        if not isinstance(b, fx.Node):
            return b
        shape = self.shape(b)
        if len(shape) >= -n.axis and shape[n.axis] == n.size:
            d = len(shape) + n.axis
            return self.op(aten.slice.Tensor, b, d, n.pos, n.pos + 1)
        return b  # b broadcasts along the axis

    def elementwise(self, target, a: Val, b: fx.Node) -> Val:
        """``target(a, b)`` for an op linear in ``a`` (mul, div by ``b``)."""
        if a is None:
            return None
        if isinstance(a, Column):
            val = a.val
            if isinstance(val, float):  # keep the size-1 axis: a node is needed
                val = self.op(aten.full.default, [1] * -a.axis, val, dtype=a.dtype,
                              device=a.device)
            return _narrow(a, self.op(target, val, self.column(b, a)))
        if isinstance(a, float):
            raise TypeError("internal: elementwise() needs a tensor or Column operand")
        return self.op(target, a, b)

    def mm_narrow(self, x: Val, y: Val, like_x: fx.Node, like_y: fx.Node) -> Val:
        """``x @ y`` (2-d) when one factor is a Column column/row block: a one-hot
        column of ``x`` picks one row of ``y`` (an outer product instead of a matrix
        product); a one-hot row of ``y`` picks one column of ``x``. None otherwise."""
        if isinstance(x, Column) and isinstance(y, fx.Node) and x.axis == -1:
            row = self.op(aten.slice.Tensor, self.materialize(y, like_y), 0, x.pos, x.pos + 1)
            return self.mul(self.materialize(x.val, self._col_like(like_x)), row)
        if isinstance(y, Column) and isinstance(x, fx.Node) and y.axis == -2:
            col = self.op(aten.slice.Tensor, self.materialize(x, like_x), 1, y.pos, y.pos + 1)
            return self.mul(col, self.materialize(y.val, self._row_like(like_y)))
        return None

    def _col_like(self, like: fx.Node) -> fx.Node:
        return self.op(aten.slice.Tensor, like, 1, 0, 1)

    def _row_like(self, like: fx.Node) -> fx.Node:
        return self.op(aten.slice.Tensor, like, 0, 0, 1)

    def densify(self, v: Val) -> Val:
        """A Column as an ordinary node: its column at its position along the axis,
        zero elsewhere. Selected, not multiplied by a one-hot: an infinite column
        value (the derivative of sqrt at 0 along a seeded coordinate) must not turn
        every other position into ``inf * 0 = nan``."""
        if not isinstance(v, Column):
            return v
        key = ("onehot", v.axis, v.pos, v.size, v.device)
        hot = self._memo.get(key)
        if hot is None:
            t = torch.zeros((v.size,) + (1,) * (-v.axis - 1), dtype=torch.bool, device=v.device)
            t[v.pos] = True
            hot = self._memo[key] = self.constant(t)
        if isinstance(v.val, float):
            return self.op(aten.where.ScalarSelf, hot, v.val,
                           self.op(aten.zeros.default, [1] * -v.axis, dtype=v.dtype,
                                   device=v.device))
        return self.op(aten.where.ScalarOther, hot, v.val, 0.0)

    def materialize(self, v: Val, like: fx.Node) -> fx.Node:
        """``v`` as a node of ``like``'s shape, dtype and device."""
        val = like.meta["val"]
        v = self.densify(v)
        if v is None:
            return self.op(aten.zeros.default, list(val.shape), dtype=val.dtype,
                           device=val.device)
        if isinstance(v, float):
            return self.op(aten.full.default, list(val.shape), v, dtype=val.dtype,
                           device=val.device)
        return self.fit(v, like)

    def fit(self, v: Val, like: fx.Node) -> Val:
        """Broadcasts a node coefficient to the shape of the value it belongs to."""
        if isinstance(v, fx.Node) and self.shape(v) != self.shape(like):
            return self.op(aten.expand.default, v, list(self.shape(like)))
        return v
