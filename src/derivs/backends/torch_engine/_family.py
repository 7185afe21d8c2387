"""The Laplacian in PyTorch with the D unit directions stacked on one axis.

The collapsed second-order jet of ``f`` carries, for every intermediate ``v``, its
value, the first-order coefficients ``G[i] = dv/dx_i`` of all D directions as one
tensor ``G`` of shape ``(D, *v.shape)``, and one collapsed coefficient ``L =
sum_i d^2 v/dx_i^2`` (2 + D values, as in the unrolled engine). Stacking the
directions makes each rule one batched op instead of D small ones: the unrolled
graph of a 50-input MLP runs about 1200 ATen ops per call, this about 40.

It interprets the captured ATen graph (``_engine.capture``) at call time with
plain tensor ops, so it composes with autograd and ``torch.func``. Common ops have
hand-written rules; any other op goes through ``torch.func.jvp`` (first order
vmapped over the directions, second order forward over forward): exact for every
op PyTorch can differentiate forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .._common import Fallback, add as _add, numel
from ._capture import Capture, StateError, shared_capture
from ._engine import _top_level_offsets, fallback
from ._rules import Unsupported

aten = torch.ops.aten


class FamilyLaplacian:
    """The Laplacian of ``f`` for one argument signature."""

    def __init__(self, cap: Capture, selected_leaf: int, batch_axis: int | None):
        self.graph = cap.graph.graph
        self.literals = {n: getattr(cap.graph, n.target) for n in self.graph.nodes
                         if n.op == "get_attr"}
        self.placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        tensor_leaves = [i for i, t in enumerate(cap.is_tensor) if t]
        self.selected = tensor_leaves.index(selected_leaf)
        self.out_spec, self.batch_axis = cap.out_spec, batch_axis
        self.lifted, self.valid = cap.lifted, cap.valid
        self.need_g: set = set()  # nodes whose first-order coefficients are read

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs))
                   if isinstance(leaf, torch.Tensor)] + list(self.lifted)
        env: dict[fx.Node, _Jet] = {}
        for k, (ph, t) in enumerate(zip(self.placeholders, tensors)):
            env[ph] = _Jet(t, _seeds(t, self.batch_axis) if k == self.selected else None)
        env.update({n: _Jet(v) for n, v in self.literals.items()})
        outs = None
        for node in self.graph.nodes:
            if node.op == "call_function":
                env[node] = _apply(node, env, node in self.need_g)
            elif node.op == "output":
                outs = [_laplacian_of(env[o]) for o in node.args[0]]
        return pytree.tree_unflatten(outs, self.out_spec)


def prepare(f: Callable, args: tuple, kwargs: dict, argnum: int,
            batch_axis: int | None, cache=None) -> FamilyLaplacian | Fallback:
    """The family program for these arguments, or why there is none (a fallback
    is kept under the capture's guard, so a change of state retries)."""
    try:
        cap = shared_capture(cache, f, args, kwargs)
    except StateError:
        raise
    except Unsupported as e:
        return fallback(str(e), getattr(e, "valid", None))
    except Exception as e:  # tracing failed: data-dependent control flow, ...
        return Fallback(f"could not capture f as a graph ({type(e).__name__})")
    program = FamilyLaplacian(cap, _top_level_offsets(args)[argnum], batch_axis)
    traced = cap.graph
    live = {program.placeholders[program.selected]}
    for n in traced.graph.nodes:  # what the rules cannot see: keep to the unrolled engine
        if n.op != "call_function" or not any(a in live for a in n.all_input_nodes):
            continue
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.is_floating_point():
            continue  # comparisons, indices: no derivative
        live.add(n)
        if any(isinstance(v, fx.Node) and v in live for v in n.kwargs.values()):
            return fallback(f"{n.target} takes a differentiated tensor as a keyword", cap.valid)
        if not isinstance(n.meta.get("val"), torch.Tensor):
            return fallback(f"{n.target} has several outputs", cap.valid)
        if n.target not in _SEQUENCE_RULES and any(
                isinstance(a, (list, tuple)) and any(x in live for x in a) for a in n.args):
            return fallback(f"{n.target} takes a list of differentiated tensors", cap.valid)
    program.need_g = _first_order_readers(traced.graph, live)
    return program


def _first_order_readers(graph: fx.Graph, live: set) -> set:
    """The live nodes whose stacked first-order coefficients something reads: the
    inputs of a node that needs its own, and the inputs that a node's collapsed
    coefficient is nonlinear in. The outputs need only their collapsed one."""
    need: set = set()
    for n in reversed(graph.nodes):
        if n not in live or n.op != "call_function":
            continue
        inputs = [a for a in n.all_input_nodes if a in live]
        if n in need or n.target not in _LINEAR_IN_EACH or (
                n.target in _BILINEAR and len(inputs) > 1):
            need.update(inputs)
    return need

class _Jet:
    """A value ``p``, its stacked first-order coefficients ``g`` (leading axis: the
    directions) and its collapsed second-order coefficient ``l``; None is zero."""

    __slots__ = ("p", "g", "l")

    def __init__(self, p: Any, g: Any = None, l: Any = None):
        self.p, self.g, self.l = p, g, l

    @property
    def const(self) -> bool:
        return self.g is None and self.l is None


def _seeds(x: torch.Tensor, batch_axis: int | None) -> torch.Tensor:
    """``G[i] = e_i`` over the sample shape, the same in every sample."""
    if batch_axis is None:
        n = x.numel()
        return torch.eye(n, dtype=x.dtype, device=x.device).reshape((n,) + tuple(x.shape))
    b = batch_axis % x.ndim
    sample = tuple(x.shape[:b]) + tuple(x.shape[b + 1:])
    n = numel(sample)
    eye = torch.eye(n, dtype=x.dtype, device=x.device).reshape((n,) + sample)
    return eye.unsqueeze(1 + b).expand((n,) + tuple(x.shape))


def _laplacian_of(j: _Jet) -> torch.Tensor:
    return torch.zeros_like(j.p) if j.l is None else j.l.expand_as(j.p)


def _lift(g: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """Stacked coefficients of a value of rank < ``ndim``: singleton axes after the
    direction axis, so that they broadcast like the value itself."""
    if g is None or g.ndim - 1 >= ndim:
        return g
    return g.reshape((g.shape[0],) + (1,) * (ndim - g.ndim + 1) + tuple(g.shape[1:]))


def _primal(a, env):
    if isinstance(a, fx.Node):
        return env[a].p
    if isinstance(a, (list, tuple)):
        return [_primal(x, env) for x in a]
    return a


def _apply(node: fx.Node, env: dict, want_g: bool) -> _Jet:
    if node.target in _SEQUENCE_RULES:  # cat / stack: a list of values first
        return _SEQUENCE_RULES[node.target](node, env, want_g)
    J = lambda a: env[a] if isinstance(a, fx.Node) else _Jet(_primal(a, env))  # noqa: E731
    jets = [J(a) for a in node.args]
    primals = [j.p for j in jets]
    kw = {k: _primal(v, env) for k, v in node.kwargs.items()}
    out = node.target(*primals, **kw)
    if isinstance(out, torch.Tensor) and not out.is_floating_point():
        return _Jet(out)  # comparisons, indices: no derivative
    if all(j.const for j in jets) and not any(
            isinstance(v, fx.Node) and not env[v].const for v in node.kwargs.values()):
        return _Jet(out)
    rule = _RULES.get(node.target)
    if rule is None or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        rule = _generic
    jet = rule(node.target, jets, out, kw, want_g)
    if not want_g:
        jet.g = None  # rules may compute it anyway when it is free
    return jet


# -- rules ---------------------------------------------------------------------------
def _linear_first(target, jets, out, kw, want_g) -> _Jet:
    """Linear in the first argument, the others constant (views, reductions, ...):
    each direction is mapped by the same op (vmapped: dims are handled by vmap)."""
    a, rest = jets[0], [j.p for j in jets[1:]]
    if any(not j.const for j in jets[1:]):
        return _generic(target, jets, out, kw, want_g)
    op = lambda v: target(v, *rest, **kw)  # noqa: E731
    g = None if a.g is None or not want_g else torch.func.vmap(op)(a.g)
    return _Jet(out, g, None if a.l is None else op(a.l))


def _view(target, jets, out, kw, want_g) -> _Jet:
    """view / reshape / expand to a given size: the direction axis goes first."""
    a, size = jets[0], list(jets[1].p)
    if a.g is None or not want_g:
        return _Jet(out, None, None if a.l is None else target(a.l, size))
    fn = torch.Tensor.expand if target == aten.expand.default else torch.Tensor.reshape
    return _Jet(out, fn(a.g, [a.g.shape[0]] + size), None if a.l is None else target(a.l, size))


def _sum_like(sign: float):
    def rule(target, jets, out, kw, want_g) -> _Jet:
        """add / sub (alpha scales the second term)."""
        a, b = jets[0], jets[1]
        alpha = sign * kw.get("alpha", 1)
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        g = _add(_lift(a.g, nd), None if b.g is None else alpha * _lift(b.g, nd))
        l = _add(a.l, None if b.l is None else alpha * b.l)
        return _Jet(out, g, l)
    return rule


def _mul(target, jets, out, kw, want_g) -> _Jet:
    a, b = jets[0], jets[1]
    nd = out.ndim if isinstance(out, torch.Tensor) else 0
    ga, gb = _lift(a.g, nd), _lift(b.g, nd)
    g = None
    if want_g:
        g = _add(None if ga is None else ga * b.p, None if gb is None else a.p * gb)
    l = _add(None if a.l is None else a.l * b.p, None if b.l is None else a.p * b.l)
    if ga is not None and gb is not None:
        l = _add(l, 2 * (ga * gb).sum(0))
    return _Jet(out, g, l)


def _matmul(target, jets, out, kw, want_g) -> _Jet:
    """mm / matmul / bmm: bilinear; torch.matmul broadcasts the direction axis."""
    a, b = jets[0], jets[1]
    g = None
    if want_g:
        g = _add(None if a.g is None else _broadcast_matmul(a.g, b.p),
                 None if b.g is None else torch.matmul(a.p, b.g))
    l = _add(None if a.l is None else target(a.l, b.p),
             None if b.l is None else target(a.p, b.l))
    if a.g is not None and b.g is not None:
        l = _add(l, 2 * torch.matmul(a.g, b.g).sum(0))
    return _Jet(out, g, l)


def _broadcast_matmul(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``g @ w`` where rows of ``g`` that are repeats (stride 0, e.g. a seed shared
    by every sample) are multiplied once and broadcast back."""
    compact = _compact(g, keep_last=1)
    if compact is g:
        return torch.matmul(g, w)
    prod = torch.matmul(compact, w)
    return prod.expand(tuple(g.shape[:-1]) + tuple(prod.shape[-1:]))


def _compact(t: torch.Tensor, keep_last: int = 0) -> torch.Tensor:
    """``t`` with its repeated (stride-0) axes cut to length 1, except the first
    (directions) and the last ``keep_last``; ``t`` itself if it has none."""
    index, cut = [slice(None)] * t.ndim, False
    for d in range(1, t.ndim - keep_last):
        if t.stride(d) == 0 and t.shape[d] > 1:
            index[d], cut = slice(0, 1), True
    return t[tuple(index)] if cut else t


def _addmm(target, jets, out, kw, want_g) -> _Jet:
    """``beta * bias + alpha * (a @ b)``."""
    bias, prod = jets[0], _matmul(aten.mm.default, jets[1:3], None, {}, want_g)
    beta, alpha = kw.get("beta", 1), kw.get("alpha", 1)
    nd = out.ndim
    g = _add(None if bias.g is None else _times(beta, _lift(bias.g, nd)),
             None if prod.g is None else _times(alpha, prod.g))
    l = _add(None if bias.l is None else _times(beta, bias.l),
             None if prod.l is None else _times(alpha, prod.l))
    return _Jet(out, g, l)


def _times(c, t: torch.Tensor) -> torch.Tensor:
    """``c * t``, without a full-size multiply for the usual ``c == 1`` (nn.Linear)."""
    return t if c == 1 else c * t


def _elementwise(d1: Callable, d2: Callable):
    """A unary elementwise op from its first and second derivative (given the
    input and the op's output)."""
    def rule(target, jets, out, kw, want_g) -> _Jet:
        a = jets[0]
        if any(not j.const for j in jets[1:]):
            return _generic(target, jets, out, kw, want_g)
        first = d1(a.p, out)
        g = None if a.g is None or not want_g else first * a.g
        l = None if a.l is None else first * a.l
        if a.g is not None:
            c = _compact(a.g)  # repeated rows: square and sum them once
            l = _add(l, d2(a.p, out, first) * (c * c).sum(0))
        return _Jet(out, g, l)
    return rule


def _pow_scalar(target, jets, out, kw, want_g) -> _Jet:
    p = jets[1].p
    if p == 0:
        return _Jet(out)
    if p == 1:
        return _Jet(out, jets[0].g, jets[0].l)
    return _elementwise(lambda x, y: p * x ** (p - 1),
                        lambda x, y, d: p * (p - 1) * x ** (p - 2))(target, jets, out, kw,
                                                                    want_g)


def _generic(target, jets, out, kw, want_g=True) -> _Jet:
    """Any op, by ``torch.func``: ``G = vmap(jvp)``, and ``L`` = the jvp along the
    collapsed coefficients plus ``sum_i`` of forward-over-forward along ``G[i]``."""
    live = [i for i, j in enumerate(jets) if not j.const]
    primals = tuple(jets[i].p for i in live)

    def fn(*xs):
        full = [j.p for j in jets]
        for i, x in zip(live, xs):
            full[i] = x
        return target(*full, **kw)

    def zeros_or(v, j):
        return torch.zeros_like(j.p) if v is None else v

    stacked = [jets[i].g for i in live]
    g = l = None
    if any(s is not None for s in stacked):
        n = next(s.shape[0] for s in stacked if s is not None)
        tangents = [torch.zeros((n,) + tuple(jets[i].p.shape), dtype=jets[i].p.dtype,
                                device=jets[i].p.device) if s is None else s.expand(
                                    (n,) + tuple(jets[i].p.shape))
                    for i, s in zip(live, stacked)]

        def first(*ts):
            return torch.func.jvp(fn, primals, ts)[1]

        def second(*ts):
            return torch.func.jvp(lambda *z: torch.func.jvp(fn, z, ts)[1], primals, ts)[1]

        g = torch.func.vmap(first)(*tangents)
        l = torch.func.vmap(second)(*tangents).sum(0)
    if any(jets[i].l is not None for i in live):
        l = _add(l, torch.func.jvp(fn, primals, tuple(zeros_or(jets[i].l, jets[i])
                                                      for i in live))[1])
    return _Jet(out, g, l)


def _tanh_d2(x, y, d):
    return -2 * y * d


def _join(node: fx.Node, env: dict, want_g: bool) -> _Jet:
    """cat / stack along ``dim``: linear; zeros stand in for constant parts."""
    parts = [env[a] if isinstance(a, fx.Node) else _Jet(a) for a in node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = node.target([j.p for j in parts], dim)
    d = dim % out.ndim  # in the output's rank: stack adds an axis

    def joined(coefficient, lead: tuple):
        vals = [coefficient(j) for j in parts]
        if all(v is None for v in vals):
            return None
        like = next(v for v in vals if v is not None)
        vals = [torch.zeros(lead + tuple(j.p.shape), dtype=like.dtype, device=like.device)
                if v is None else v.expand(lead + tuple(j.p.shape)) for v, j in zip(vals, parts)]
        return node.target(vals, d + len(lead))

    n = next((j.g.shape[0] for j in parts if j.g is not None), None)
    g = joined(lambda j: j.g, (n,)) if want_g and n is not None else None
    return _Jet(out, g, joined(lambda j: j.l, ()))


_SEQUENCE_RULES = {aten.cat.default: _join, aten.stack.default: _join}

# Linear in each argument (the collapsed coefficient reads no first-order one) ...
_LINEAR_IN_EACH = {
    aten.add.Tensor, aten.sub.Tensor, aten.view.default, aten._unsafe_view.default,
    aten.reshape.default, aten.expand.default, aten.neg.default, aten.clone.default,
    aten.select.int, aten.slice.Tensor, aten.t.default, aten.transpose.int,
    aten.permute.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.sum.dim_IntList, aten.sum.default, aten.mean.dim,
    aten.mul.Tensor, aten.mm.default, aten.bmm.default, aten.matmul.default,
    aten.addmm.default, aten.cat.default, aten.stack.default,
}
# ... except these, when more than one argument is differentiated.
_BILINEAR = {aten.mul.Tensor, aten.mm.default, aten.bmm.default, aten.matmul.default,
             aten.addmm.default}

_RULES: dict[Any, Callable] = {
    aten.mm.default: _matmul, aten.bmm.default: _matmul, aten.matmul.default: _matmul,
    aten.addmm.default: _addmm,
    aten.add.Tensor: _sum_like(1.0), aten.sub.Tensor: _sum_like(-1.0),
    aten.mul.Tensor: _mul,
    aten.tanh.default: _elementwise(lambda x, y: 1 - y * y, _tanh_d2),
    aten.sigmoid.default: _elementwise(lambda x, y: y * (1 - y),
                                       lambda x, y, d: d * (1 - 2 * y)),
    aten.sin.default: _elementwise(lambda x, y: torch.cos(x), lambda x, y, d: -y),
    aten.cos.default: _elementwise(lambda x, y: -torch.sin(x), lambda x, y, d: -y),
    aten.exp.default: _elementwise(lambda x, y: y, lambda x, y, d: y),
    aten.log.default: _elementwise(lambda x, y: 1 / x, lambda x, y, d: -d * d),
    aten.pow.Tensor_Scalar: _pow_scalar,
    aten.view.default: _view, aten._unsafe_view.default: _view,
    aten.reshape.default: _view, aten.expand.default: _view,
    aten.neg.default: _linear_first, aten.clone.default: _linear_first,
    aten.select.int: _linear_first, aten.slice.Tensor: _linear_first,
    aten.t.default: _linear_first, aten.transpose.int: _linear_first,
    aten.permute.default: _linear_first, aten.unsqueeze.default: _linear_first,
    aten.squeeze.dim: _linear_first, aten.squeeze.dims: _linear_first,
    aten.sum.dim_IntList: _linear_first, aten.sum.default: _linear_first,
    aten.mean.dim: _linear_first,
}
