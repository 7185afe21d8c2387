"""An FX graph builder that simplifies while it emits.

Values handled by the builder (``Val``) are an ``fx.Node``, a Python float (a
tensor filled with that constant: the all-ones tangent of a one-element sample is
``1.0``) or ``None`` (a structural zero). Arithmetic folds these statically, so a
one-hot tangent's zeros and ones never reach the emitted graph, and every emitted
call is memoized on (op, arguments): common subexpressions are emitted once.
Every node carries its fake-tensor value in ``meta["val"]`` so rules know shapes.
"""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.fx as fx

aten = torch.ops.aten
Val = Union[fx.Node, float, None]


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
        tags = getattr(target, "tags", ())
        schema = getattr(target, "_schema", None)
        return (torch.Tag.nondeterministic_seeded not in tags
                and not (schema is not None and schema.is_mutable)
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
        if isinstance(a, float) and isinstance(b, float):
            return a + b
        if isinstance(a, float):
            a, b = b, a
        if isinstance(b, float):
            return a if b == 0.0 else self.op(aten.add.Tensor, a, b)
        return self.op(aten.add.Tensor, a, b)

    def mul(self, a: Val, b: Val) -> Val:
        if a is None or b is None:
            return None
        if isinstance(a, float) and isinstance(b, float):
            return a * b
        if isinstance(a, float):
            a, b = b, a
        if isinstance(b, float):
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

    def materialize(self, v: Val, like: fx.Node) -> fx.Node:
        """``v`` as a node of ``like``'s shape, dtype and device."""
        val = like.meta["val"]
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
