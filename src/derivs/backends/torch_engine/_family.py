"""Collapsed Taylor operators in PyTorch with the directions stacked on one axis.

A collapsed operator of order ``K`` along ``N`` directions ``v_n`` with weights
``w_n`` is ``L f(x) = sum_n w_n d^K/dt^K f(x + t v_n)`` (plus ``Df(x)[top]`` when
the input carries a top coefficient of its own, e.g. a drift). The Laplacian is
``K = 2`` along the unit directions, a weighted second-order operator ``K = 2``
along the columns of its diffusion factor, the Bi-Laplacian ``K = 4`` along the
pair directions of ``core._directions``.

Every intermediate ``v`` carries its value ``p``, its lower coefficients ``c_k =
d^k v / dt^k`` (``k < K``, derivative-normalized as in ``core._jets``) of every
direction, and one collapsed top coefficient ``l = sum_n w_n c_K[n]``. The lower
coefficients are one tensor ``c`` of shape ``(depth * N, *v.shape)``: levels
``1 .. depth`` stacked (deeper levels are zero; a seed has depth 1). Stacking
makes each linear rule one batched op over every level and direction instead of
``(K - 1) * N`` small ones: the unrolled graph of a 50-input MLP's Laplacian runs
about 1200 ATen ops per call, this about 40.

It interprets the captured ATen graph (``_capture``) at call time with plain
tensor ops, so it composes with autograd and ``torch.func``. Common ops have
hand-written rules (Faa di Bruno with ``phi^(m)`` for elementwise ops: NOTE
[elementwise derivatives]); any other op goes through ``torch.func.jvp`` along
the direction's Taylor polynomial (``_generic``): exact for every op PyTorch can
differentiate forward.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ...core._directions import faa_di_bruno
from .._common import Fallback, numel
from ._capture import Capture, StateError, shared_capture
from ._engine import _top_level_offsets, fallback
from ._rules import Unsupported

aten = torch.ops.aten


@dataclasses.dataclass
class Directions:
    """What one call propagates: ``rows`` of shape ``(N, *x.shape)`` (direction
    ``n`` in every sample; may be an expanded view), ``weights`` ``(N,)`` (None: all
    ones), the order ``K`` and the input's own top coefficient (None: zero)."""

    rows: torch.Tensor
    weights: torch.Tensor | None
    order: int
    top: torch.Tensor | None = None


class _Ctx:
    """The order, the direction count and the weighted family sum of one call."""

    def __init__(self, d: Directions):
        self.K, self.N, self.w = d.order, d.rows.shape[0], d.weights

    def levels(self, j: "_Jet") -> list:
        """``[c_1, ..., c_{K-1}]`` of ``j``: views of its stack, None past its depth."""
        out: list = [None] * (self.K - 1)
        if j.c is not None:
            for k in range(j.depth):
                out[k] = j.c[k * self.N:(k + 1) * self.N]
        return out

    def wsum(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """``sum_n w_n t[n]`` over the leading (direction) axis."""
        if t is None:
            return None
        t = _compact(t)  # repeated (stride-0) rows: reduce them once
        if self.w is None:
            return t.sum(0)
        return torch.tensordot(self.w.to(t.dtype), t, dims=1)


class _Jet:
    """A value ``p``, its stacked lower coefficients ``c`` (``depth`` levels of ``N``
    rows; None is zero) and its collapsed top coefficient ``l`` (None is zero)."""

    __slots__ = ("p", "c", "depth", "l")

    def __init__(self, p: Any, c: Any = None, l: Any = None, depth: int | None = None):
        self.p, self.c, self.l = p, c, l
        self.depth = 0 if c is None else (1 if depth is None else depth)

    @property
    def const(self) -> bool:
        return self.c is None and self.l is None


def _stack(levels: list) -> tuple[torch.Tensor | None, int]:
    """Levels (None is zero) as one stack and its depth (trailing zeros dropped)."""
    depth = max((k + 1 for k, v in enumerate(levels) if v is not None), default=0)
    if depth == 0:
        return None, 0
    present = [v for v in levels[:depth] if v is not None]
    shape = torch.broadcast_shapes(*(v.shape for v in present))
    like = present[0]
    parts = [torch.zeros(shape, dtype=like.dtype, device=like.device) if v is None
             else v.expand(shape) for v in levels[:depth]]
    return (parts[0] if depth == 1 else torch.cat(parts)), depth


class FamilyProgram:
    """A collapsed operator of ``f`` for one argument signature."""

    def __init__(self, cap: Capture, selected_leaf: int, batch_axis: int | None):
        self.graph = cap.graph.graph
        self.literals = {n: getattr(cap.graph, n.target) for n in self.graph.nodes
                         if n.op == "get_attr"}
        self.placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        tensor_leaves = [i for i, t in enumerate(cap.is_tensor) if t]
        self.selected = tensor_leaves.index(selected_leaf)
        self.out_spec, self.batch_axis = cap.out_spec, batch_axis
        self.lifted, self.valid = cap.lifted, cap.valid
        self.need_c: set = set()  # nodes whose lower coefficients are read

    def __call__(self, args: tuple, kwargs: dict, directions: Directions | None = None) -> Any:
        tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs))
                   if isinstance(leaf, torch.Tensor)] + list(self.lifted)
        return pytree.tree_unflatten(self.run(tensors, directions), self.out_spec)

    def run(self, tensors: list, directions: Directions | None = None) -> list:
        """The operator's outputs (flat) for the graph's inputs ``tensors`` (the
        arguments' tensors, then the lifted ones)."""
        if directions is None:  # the Laplacian
            x = tensors[self.selected]
            directions = Directions(unit_seeds(x, self.batch_axis), None, 2)
        ctx = _Ctx(directions)
        env: dict[fx.Node, _Jet] = {}
        for k, (ph, t) in enumerate(zip(self.placeholders, tensors)):
            if k == self.selected:
                env[ph] = _Jet(t, directions.rows.to(t.dtype), directions.top)
            else:
                env[ph] = _Jet(t)
        env.update({n: _Jet(v) for n, v in self.literals.items()})
        outs = None
        for node in self.graph.nodes:
            if node.op == "call_function":
                env[node] = _apply(ctx, node, env, node in self.need_c)
            elif node.op == "output":
                outs = [_top_of(env[o]) for o in node.args[0]]
        return outs


# The Laplacian's program (the family with unit directions by default).
FamilyLaplacian = FamilyProgram


def prepare(f: Callable, args: tuple, kwargs: dict, argnum: int,
            batch_axis: int | None, cache=None) -> FamilyProgram | Fallback:
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
    program = FamilyProgram(cap, _top_level_offsets(args)[argnum], batch_axis)
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
    program.need_c = _lower_readers(traced.graph, live)
    return program


def _lower_readers(graph: fx.Graph, live: set) -> set:
    """The live nodes whose stacked lower coefficients something reads: the inputs
    of a node that needs its own, and the inputs that a node's collapsed
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


def unit_seeds(x: torch.Tensor, batch_axis: int | None) -> torch.Tensor:
    """``rows[i] = e_i`` over the sample shape, the same in every sample."""
    if batch_axis is None:
        n = x.numel()
        return torch.eye(n, dtype=x.dtype, device=x.device).reshape((n,) + tuple(x.shape))
    b = batch_axis % x.ndim
    sample = tuple(x.shape[:b]) + tuple(x.shape[b + 1:])
    n = numel(sample)
    eye = torch.eye(n, dtype=x.dtype, device=x.device).reshape((n,) + sample)
    return eye.unsqueeze(1 + b).expand((n,) + tuple(x.shape))


def shared_rows(rows: np.ndarray, x: torch.Tensor, batch_axis: int | None) -> torch.Tensor:
    """Flat directions ``(N, D)`` as ``(N, *x.shape)``, the same in every sample."""
    t = torch.as_tensor(rows, dtype=x.dtype, device=x.device)
    if batch_axis is None:
        return t.reshape((t.shape[0],) + tuple(x.shape))
    b = batch_axis % x.ndim
    sample = tuple(x.shape[:b]) + tuple(x.shape[b + 1:])
    return t.reshape((t.shape[0],) + sample).unsqueeze(1 + b).expand(
        (t.shape[0],) + tuple(x.shape))


def _top_of(j: _Jet) -> torch.Tensor:
    return torch.zeros_like(j.p) if j.l is None else j.l.expand_as(j.p)


def _lift(g: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """Stacked coefficients of a value of rank < ``ndim``: singleton axes after the
    direction axis, so that they broadcast like the value itself."""
    if g is None or g.ndim - 1 >= ndim:
        return g
    return g.reshape((g.shape[0],) + (1,) * (ndim - g.ndim + 1) + tuple(g.shape[1:]))


def _plus(x: torch.Tensor | None, dx: int, y: torch.Tensor | None, dy: int, n: int):
    """The sum of two stacks of depths ``dx``, ``dy`` (levels of ``n`` rows)."""
    if x is None:
        return y, dy
    if y is None:
        return x, dx
    if dx == dy:
        return x + y, dx
    if dx < dy:
        x, dx, y, dy = y, dy, x, dx
    head = x[:dy * n] + y
    tail = x[dy * n:]
    tail = tail.expand((tail.shape[0],) + tuple(head.shape[1:]))
    return torch.cat([head, tail]), dx


def _primal(a, env):
    if isinstance(a, fx.Node):
        return env[a].p
    if isinstance(a, (list, tuple)):
        return [_primal(x, env) for x in a]
    return a


def _apply(ctx: _Ctx, node: fx.Node, env: dict, want_c: bool) -> _Jet:
    if node.target in _SEQUENCE_RULES:  # cat / stack: a list of values first
        return _SEQUENCE_RULES[node.target](ctx, node, env, want_c)
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
    jet = rule(ctx, node.target, jets, out, kw, want_c)
    if not want_c:
        jet.c, jet.depth = None, 0  # rules may compute it anyway when it is free
    return jet


# -- rules ---------------------------------------------------------------------------
def _linear_first(ctx, target, jets, out, kw, want_c) -> _Jet:
    """Linear in the first argument, the others constant (views, reductions, ...):
    every level and direction is mapped by the same op (vmapped: dims are handled
    by vmap)."""
    a, rest = jets[0], [j.p for j in jets[1:]]
    if any(not j.const for j in jets[1:]):
        return _generic(ctx, target, jets, out, kw, want_c)
    op = lambda v: target(v, *rest, **kw)  # noqa: E731
    c = None if a.c is None or not want_c else torch.func.vmap(op)(a.c)
    return _Jet(out, c, None if a.l is None else op(a.l), a.depth)


def _view(ctx, target, jets, out, kw, want_c) -> _Jet:
    """view / reshape / expand to a given size: the stacked axis goes first."""
    a, size = jets[0], list(jets[1].p)
    top = None if a.l is None else target(a.l, size)
    if a.c is None or not want_c:
        return _Jet(out, None, top)
    fn = torch.Tensor.expand if target == aten.expand.default else torch.Tensor.reshape
    return _Jet(out, fn(a.c, [a.c.shape[0]] + size), top, a.depth)


def _sum_like(sign: float):
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        """add / sub (alpha scales the second term)."""
        a, b = jets[0], jets[1]
        alpha = sign * kw.get("alpha", 1)
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        c, depth = _plus(_lift(a.c, nd), a.depth,
                         None if b.c is None else alpha * _lift(b.c, nd), b.depth, ctx.N)
        l = _add(a.l, None if b.l is None else alpha * b.l)
        return _Jet(out, c, l, depth)
    return rule


def _add(x, y):
    if x is None:
        return y
    if y is None:
        return x
    return x + y


def _bilinear(product: Callable, linear_a: Callable, linear_b: Callable):
    """A rule for an op bilinear in its two arguments (``product(a, b)``), with
    ``linear_a(stack, b)`` / ``linear_b(a, stack)`` mapping a whole stack through
    one factor (one batched op): Leibniz's rule per level,
    ``c_k = sum_j C(k, j) a_j b_{k-j}``, and collapsed at the top."""
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        a, b = jets[0], jets[1]
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        K, n = ctx.K, ctx.N
        c = depth = None
        if want_c:  # the levels' terms with a_0 or b_0 first: one op over the stack
            c, depth = _plus(None if a.c is None else linear_a(_lift(a.c, nd), b.p), a.depth,
                             None if b.c is None else linear_b(a.p, _lift(b.c, nd)), b.depth,
                             n)
        l = _add(None if a.l is None else product(a.l, b.p),
                 None if b.l is None else product(a.p, b.l))
        if a.c is not None and b.c is not None:
            la, lb = ctx.levels(a), ctx.levels(b)
            la = [None if v is None else _lift(v, nd) for v in la]
            lb = [None if v is None else _lift(v, nd) for v in lb]

            def cross(k):
                terms = [math.comb(k, j) * product(la[j - 1], lb[k - j - 1])
                         for j in range(1, k) if la[j - 1] is not None
                         and lb[k - j - 1] is not None]
                return sum(terms[1:], terms[0]) if terms else None

            l = _add(l, ctx.wsum(cross(K)))
            if want_c and K > 2:
                levels = [None] * (K - 1)
                if c is not None:
                    levels[:depth] = [c[k * n:(k + 1) * n] for k in range(depth)]
                extra = [cross(k) for k in range(1, K)]
                if any(e is not None for e in extra):
                    c, depth = _stack([_add(v, e) for v, e in zip(levels, extra)])
        return _Jet(out, c, l, depth)
    return rule


_mul = _bilinear(torch.mul, torch.mul, torch.mul)


def _broadcast_matmul(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``g @ w`` where rows of ``g`` that are repeats (stride 0, e.g. a seed shared
    by every sample) are multiplied once and broadcast back."""
    compact = _compact(g, keep_last=1)
    if compact is g:
        return torch.matmul(g, w)
    prod = torch.matmul(compact, w)
    return prod.expand(tuple(g.shape[:-1]) + tuple(prod.shape[-1:]))


_matmul = _bilinear(torch.matmul, _broadcast_matmul, torch.matmul)


def _compact(t: torch.Tensor, keep_last: int = 0) -> torch.Tensor:
    """``t`` with its repeated (stride-0) axes cut to length 1, except the first
    (directions) and the last ``keep_last``; ``t`` itself if it has none."""
    index, cut = [slice(None)] * t.ndim, False
    for d in range(1, t.ndim - keep_last):
        if t.stride(d) == 0 and t.shape[d] > 1:
            index[d], cut = slice(0, 1), True
    return t[tuple(index)] if cut else t


def _addmm(ctx, target, jets, out, kw, want_c) -> _Jet:
    """``beta * bias + alpha * (a @ b)``."""
    bias, prod = jets[0], _matmul(ctx, aten.mm.default, jets[1:3], out, {}, want_c)
    beta, alpha = kw.get("beta", 1), kw.get("alpha", 1)
    nd = out.ndim
    c, depth = _plus(None if bias.c is None else _times(beta, _lift(bias.c, nd)), bias.depth,
                     None if prod.c is None else _times(alpha, prod.c), prod.depth, ctx.N)
    l = _add(None if bias.l is None else _times(beta, bias.l),
             None if prod.l is None else _times(alpha, prod.l))
    return _Jet(out, c, l, depth)


def _times(c, t: torch.Tensor) -> torch.Tensor:
    """``c * t``, without a full-size multiply for the usual ``c == 1`` (nn.Linear)."""
    return t if c == 1 else c * t


# NOTE [elementwise derivatives]: a unary elementwise op is given by
# ``derivatives(x, y, m)``: its first ``m`` derivatives at the input ``x`` (``y`` is
# the op's output), as a list. Faa di Bruno then gives every level,
# ``c_k = sum_partitions mult * phi^(#parts) * prod a_part``; ``phi^(m)`` does not
# depend on the direction, so at the top it multiplies the weighted family sum of
# the products once.
def _elementwise(derivatives: Callable):
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        a = jets[0]
        if any(not j.const for j in jets[1:]):
            return _generic(ctx, target, jets, out, kw, want_c)
        K, n = ctx.K, ctx.N
        top_order = K if a.c is not None else 1
        d = derivatives(a.p, out, top_order)
        c = None if a.c is None or not want_c else d[0] * a.c
        depth = a.depth if c is not None else 0
        l = None if a.l is None else d[0] * a.l
        if a.c is None:
            return _Jet(out, c, l, depth)
        la = ctx.levels(a)

        def product(parts):
            vals = [la[p - 1] for p in parts]
            if any(v is None for v in vals):
                return None
            if len(vals) == 2 and vals[0] is vals[1] and vals[0].ndim:
                v = _compact(vals[0])  # repeated rows: square once
                return v * v
            out_ = vals[0]
            for v in vals[1:]:
                out_ = out_ * v
            return out_

        def nonlinear(k, family_sum: bool):
            total = None
            for mult, parts in faa_di_bruno(k):
                if len(parts) == 1:
                    continue
                p = product(parts)
                if p is None:
                    continue
                p = ctx.wsum(p) if family_sum else p
                total = _add(total, (mult * d[len(parts) - 1]) * p)
            return total

        l = _add(l, nonlinear(K, True))
        if want_c and K > 2:
            levels = [None] * (K - 1)
            levels[:depth] = [c[k * n:(k + 1) * n] for k in range(depth)]
            extra = [nonlinear(k, False) for k in range(1, K)]
            if any(e is not None for e in extra):
                c, depth = _stack([_add(v, e) for v, e in zip(levels, extra)])
        return _Jet(out, c, l, depth)
    return rule


def _poly_in_output(first: np.ndarray):
    """Derivatives of an op with ``phi' = P(phi)`` (a polynomial, highest power
    first: tanh ``1 - y^2``, sigmoid ``y - y^2``): ``phi^(m+1) = (phi^(m))'(y) P(y)``."""
    polys = [np.poly1d(first)]

    def derivatives(x, y, m):
        while len(polys) < m:
            polys.append(np.polyder(polys[-1]) * polys[0])
        return [_horner(p, y) for p in polys[:m]]
    return derivatives


def _horner(p: np.poly1d, y: torch.Tensor) -> torch.Tensor:
    coeffs = [float(c) for c in p.coeffs]
    out = torch.full_like(y, coeffs[0]) if len(coeffs) == 1 else coeffs[0] * y + coeffs[1]
    for c in coeffs[2:]:
        out = out * y + c
    return out


def _cyclic(first_four: Callable):
    """sin, cos: derivatives repeat with period four."""
    def derivatives(x, y, m):
        base = first_four(x, y)
        return [base[k % 4] for k in range(m)]
    return derivatives


def _exp_derivatives(x, y, m):
    return [y] * m


def _log_derivatives(x, y, m):
    inv = 1 / x
    out, power = [], inv
    for k in range(1, m + 1):
        out.append((-1) ** (k - 1) * math.factorial(k - 1) * power)
        power = power * inv
    return out


def _pow_scalar(ctx, target, jets, out, kw, want_c) -> _Jet:
    p = jets[1].p
    if p == 0:
        return _Jet(out)
    if p == 1:
        return _Jet(out, jets[0].c, jets[0].l, jets[0].depth)

    def derivatives(x, y, m):
        res, coef = [], 1.0
        for k in range(1, m + 1):
            coef *= p - k + 1
            res.append(coef * x ** (p - k) if coef != 0 else torch.zeros_like(x))
        return res
    return _elementwise(derivatives)(ctx, target, jets, out, kw, want_c)


def _generic(ctx, target, jets, out, kw, want_c=True) -> _Jet:
    """Any op, by ``torch.func``: along each direction the op's value on the
    Taylor polynomial ``x(t) = sum_j a_j t^j / j!`` of each input (orders below
    ``K``), differentiated ``k`` times in ``t`` by nested ``jvp`` (vmapped over the
    directions); the top adds the ``jvp`` along the inputs' collapsed coefficients
    (the top is linear in them)."""
    K, n = ctx.K, ctx.N
    live = [i for i, j in enumerate(jets) if not j.const]
    primals = tuple(jets[i].p for i in live)

    def fn(*xs):
        full = [j.p for j in jets]
        for i, x in zip(live, xs):
            full[i] = x
        return target(*full, **kw)

    def zeros_or(v, j):
        return torch.zeros_like(j.p) if v is None else v

    c = depth = l = None
    stacked = [ctx.levels(jets[i]) for i in live]
    if any(jets[i].c is not None for i in live):
        def per_level(lv, j):
            return [torch.zeros((n,) + tuple(j.p.shape), dtype=j.p.dtype, device=j.p.device)
                    if v is None else v.expand((n,) + tuple(j.p.shape)) for v in lv]
        levels = [per_level(lv, jets[i]) for lv, i in zip(stacked, live)]

        def along(*coeffs):  # one direction: coeffs[i][k] is input i's level k + 1
            def h(t):
                return fn(*(p + sum(cf[k] * t ** (k + 1) / math.factorial(k + 1)
                                    for k in range(K - 1))
                            for p, cf in zip(primals, coeffs)))
            outs, g = [], h
            for _ in range(K):
                g = _derivative(g)
                outs.append(g(torch.zeros((), dtype=primals[0].dtype, device=primals[0].device)))
            return tuple(outs)

        flat = [torch.stack(lv) for lv in levels]  # (K - 1, n, ...)
        res = torch.func.vmap(lambda *cs: along(*[list(cf) for cf in cs]),
                              in_dims=1)(*flat)
        l = ctx.wsum(res[K - 1])
        if want_c:
            c, depth = _stack(list(res[:K - 1]))
    if any(jets[i].l is not None for i in live):
        l = _add(l, torch.func.jvp(fn, primals, tuple(zeros_or(jets[i].l, jets[i])
                                                      for i in live))[1])
    return _Jet(out, c, l, depth or 0)


def _derivative(g: Callable) -> Callable:
    """``t -> dg/dt`` for a function of a scalar ``t``, by forward mode."""
    def dg(t):
        return torch.func.jvp(g, (t,), (torch.ones_like(t),))[1]
    return dg


def _join(ctx, node: fx.Node, env: dict, want_c: bool) -> _Jet:
    """cat / stack along ``dim``: linear; zeros stand in for constant parts."""
    parts = [env[a] if isinstance(a, fx.Node) else _Jet(a) for a in node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = node.target([j.p for j in parts], dim)
    d = dim % out.ndim  # in the output's rank: stack adds an axis
    depth = max(j.depth for j in parts)

    def joined(coefficient, lead: tuple):
        vals = [coefficient(j) for j in parts]
        if all(v is None for v in vals):
            return None
        like = next(v for v in vals if v is not None)
        vals = [torch.zeros(lead + tuple(j.p.shape), dtype=like.dtype, device=like.device)
                if v is None else v.expand(lead + tuple(j.p.shape)) for v, j in zip(vals, parts)]
        return node.target(vals, d + len(lead))

    def padded(j):  # the stack at the common depth
        if j.c is None:
            return None
        if j.depth == depth:
            return j.c
        pad = torch.zeros(((depth - j.depth) * ctx.N,) + tuple(j.c.shape[1:]),
                          dtype=j.c.dtype, device=j.c.device)
        return torch.cat([j.c, pad])

    c = joined(padded, (depth * ctx.N,)) if want_c and depth else None
    return _Jet(out, c, joined(lambda j: j.l, ()), depth if c is not None else 0)


_SEQUENCE_RULES = {aten.cat.default: _join, aten.stack.default: _join}

# Linear in each argument (the collapsed coefficient reads no lower one) ...
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
    aten.tanh.default: _elementwise(_poly_in_output(np.array([-1.0, 0.0, 1.0]))),
    aten.sigmoid.default: _elementwise(_poly_in_output(np.array([-1.0, 1.0, 0.0]))),
    aten.sin.default: _elementwise(_cyclic(lambda x, y: (torch.cos(x), -y, -torch.cos(x), y))),
    aten.cos.default: _elementwise(_cyclic(lambda x, y: (-torch.sin(x), -y, torch.sin(x), y))),
    aten.exp.default: _elementwise(_exp_derivatives),
    aten.log.default: _elementwise(_log_derivatives),
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


class CompiledProgram:
    """A family program under ``torch.compile``: the interpretation traced once per
    signature to one ATen graph (``make_fx``; lifted tensors stay inputs, so they
    are read live), which Inductor compiles."""

    def __init__(self, program: FamilyProgram):
        self.program, self.valid = program, program.valid
        self.graphs: dict = {}

    def __call__(self, args: tuple, kwargs: dict, directions: Directions | None = None):
        p = self.program
        tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs))
                   if isinstance(leaf, torch.Tensor)] + list(p.lifted)
        if directions is None:
            directions = Directions(unit_seeds(tensors[p.selected], p.batch_axis), None, 2)
        extras = [directions.rows, directions.weights, directions.top]
        present = tuple(e is not None for e in extras)
        given = [e for e in extras if e is not None]
        key = (directions.order, present,
               tuple((tuple(t.shape), t.dtype, t.device) for t in tensors + given))
        fn = self.graphs.get(key)
        if fn is None:
            order, count = directions.order, len(tensors)

            def flat(*ts):
                rest = iter(ts[count:])
                rows, weights, top = [next(rest) if q else None for q in present]
                return p.run(list(ts[:count]), Directions(rows, weights, order, top))

            from torch.fx.experimental.proxy_tensor import make_fx

            graph = make_fx(flat)(*tensors, *given)
            fn = torch.compile(graph, fullgraph=True, dynamic=False)
            self.graphs[key] = fn
        return pytree.tree_unflatten(list(fn(*tensors, *given)), p.out_spec)


def compiled(program: FamilyProgram) -> CompiledProgram:
    return CompiledProgram(program)
