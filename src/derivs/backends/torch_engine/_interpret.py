"""Interpreting an ATen graph with jets, and the rule for ops without a hand rule.

``interpret`` runs the rule of each node over a graph (the captured ``f``, or an
op's forward-mode formula); nodes that no differentiated input reaches are copied
as constants.

NOTE [generic rule]: an op without a hand-written rule takes its derivatives from
PyTorch's own forward-mode formula, as the JAX engine takes JAX's JVP rules. The
formula is captured once per op signature as an ATen graph ``T(a, t) =
jvp(op)(a; t)``. By the JVP recursion, the coefficient ``kappa`` of ``y = op(a)``
with ``kappa_g >= 1`` is the coefficient ``kappa - e_g`` of ``T(a, D_g a)``, where
``D_g a`` is ``a``'s jet shifted by one along ``g``: the formula's graph is
interpreted with jets, its own ops by their rules (recursively, at a lower order).
Exact at every order for any op PyTorch differentiates forward; a hand rule only
makes it cheaper. Ops with no floating output (comparisons, ``isnan``) have no
derivative and are copied.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ...core import _jets
from ...core._cache import LRUCache
from ._builder import Builder, is_mutating, is_random
from ._jet import Context, Jet
from . import _rules  # noqa: F401  (fills the jet rule registry)
from ._registry import JET_RULES, Unsupported, defjet


class Jets(list):
    """The jets of an op with several outputs (read through ``getitem``);
    ``primal`` is the op's node (a tuple value)."""

    def __init__(self, jets, primal):
        super().__init__(jets)
        self.primal = primal


def interpret(ctx: Context, graph: fx.GraphModule, env: dict, depends: set | None = None,
              keep_primals: bool = False) -> list:
    """Jets of ``graph``'s outputs given ``env`` (placeholder -> jet). Nodes outside
    ``depends`` (default: those reached by a non-constant placeholder jet) are
    copied. ``keep_primals``: every primal is the exact op the graph ran."""
    b = ctx.b
    for n in graph.graph.nodes:
        if n.op == "get_attr":
            env[n] = ctx.const(b.constant(getattr(graph, n.target)))
    if depends is None:
        depends = dependent_nodes(graph, {p for p, j in env.items() if not _const(j)})
    J = jet_lookup(ctx, env)
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node not in depends:
            env[node] = ctx.const(copy_node(b, node, J))
            continue
        jet = JET_RULES.get(node.target, generic_rule)(ctx, node, J)
        if keep_primals and isinstance(jet, Jet) and isinstance(jet.primal, fx.Node):
            jet.primal = copy_node(b, node, J)  # the exact op f itself ran
        env[node] = jet
    return [env[o] if isinstance(o, fx.Node) else ctx.const(o)
            for o in graph.graph.output_node().args[0]]


def _const(j) -> bool:
    return all(x.const for x in j) if isinstance(j, Jets) else j.const


def copy_node(b: Builder, node: fx.Node, J) -> fx.Node:
    return b.op(node.target, *fx.node.map_arg(node.args, lambda a: J(a).primal),
                **fx.node.map_arg(node.kwargs, lambda a: J(a).primal))


def jet_lookup(ctx: Context, env: dict):
    def J(a):
        if isinstance(a, fx.Node):
            return env[a]
        return ctx.const(a)
    return J


def dependent_nodes(graph: fx.GraphModule, seeded: set) -> set:
    dep = set(seeded)
    for node in graph.graph.nodes:
        if node.op == "call_function" and any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    return dep


def _getitem(ctx, node, J):
    whole = J(node.args[0])
    if isinstance(whole, Jets):
        return whole[node.args[1]]
    return ctx.const(ctx.b.op(operator.getitem, whole.primal, node.args[1]))


defjet(operator.getitem)(_getitem)


# -- the generic rule (NOTE [generic rule]) ----------------------------------------------
_FORMULAS = LRUCache(maxsize=256)  # op signature -> traced forward-mode formula


def generic_rule(ctx: Context, node: fx.Node, J) -> Jet | Jets:
    target = node.target
    if is_random(target):
        raise Unsupported(f"f draws random numbers ({target})")
    if is_mutating(target):
        raise Unsupported(f"f updates a tensor in place ({target})")
    b = ctx.b
    leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
    jets = [J(a) if isinstance(a, fx.Node) else None for a in leaves]
    primal = copy_node(b, node, J)
    out_val = node.meta.get("val")
    outs = out_val if isinstance(out_val, (tuple, list)) else [out_val]
    floating = [isinstance(o, torch.Tensor) and o.is_floating_point() for o in outs]
    diff = [i for i, j in enumerate(jets) if j is not None and not _const(j)
            and _floating(leaves[i])]
    multi = isinstance(out_val, (tuple, list))
    parts = [b.op(operator.getitem, primal, k) for k in range(len(outs))] if multi else [primal]
    if not diff or not any(floating):
        return Jets([ctx.const(p) for p in parts], primal) if multi else ctx.const(primal)
    decomposed = _decomposed(target, leaves, spec)
    if decomposed is not None:  # PyTorch's decomposition, in ops with rules
        env = dict(zip([n for n in decomposed.graph.nodes if n.op == "placeholder"],
                       [j for j in jets if j is not None]))
        made = interpret(ctx, decomposed, env)
        return Jets(made, primal) if multi else made[0]
    formula = _formula(target, leaves, spec, diff, floating, outs)
    if multi:
        # An output PyTorch marks non-differentiable (the LU factors of solve) gets
        # no tangent: it would read as a zero derivative, which is wrong.
        dead = formula.meta["derivs_undefined"]
        for user in node.users:
            k = user.args[1] if user.target is operator.getitem and user.users else None
            if k is not None and floating[k] and sum(floating[:k]) in dead:
                raise Unsupported(f"PyTorch defines no derivative for output {k} of "
                                  f"{target}, and f uses it")
    tangent_jets: dict[int, list] = {}  # group -> jets of the formula's outputs

    def along(g: int) -> list:
        if g not in tangent_jets:
            env: dict[fx.Node, Any] = {}
            phs = [n for n in formula.graph.nodes if n.op == "placeholder"]
            tensor_leaves = [i for i, v in enumerate(leaves) if isinstance(v, fx.Node)]
            for ph, i in zip(phs, tensor_leaves):
                env[ph] = jets[i]
            for ph, i in zip(phs[len(tensor_leaves):], diff):
                env[ph] = _shifted(ctx, jets[i], g)
            tangent_jets[g] = interpret(ctx, formula, env)
        return tangent_jets[g]

    def make(k: int, part) -> Jet:
        if not floating[k]:
            return ctx.const(part)
        slot = sum(floating[:k])  # the formula returns floating tangents only

        def rule(kappa):
            g = max(i for i, c in enumerate(kappa) if c > 0)
            lower = tuple(c - (i == g) for i, c in enumerate(kappa))
            return along(g)[slot].get(lower)

        jet = Jet(ctx, part, rule)
        jet.expands = True  # collapsed keys: summed from count vectors
        return jet

    made = [make(k, p) for k, p in enumerate(parts)]
    return Jets(made, primal) if multi else made[0]


def _floating(v) -> bool:
    val = v.meta.get("val") if isinstance(v, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _shifted(ctx: Context, a: Jet, g: int) -> Jet:
    """``D_g a``: the jet whose coefficient ``tau`` is ``a``'s at ``tau + e_g``."""
    b = ctx.b
    like = a.node()

    def coefficient(tau):
        return a.get(tuple(t + (i == g) for i, t in enumerate(tau)))

    first = a.get(_jets.unit(ctx.groups, g))
    return Jet(ctx, b.materialize(first, like), coefficient)


def _put(leaves: list, at, values) -> list:
    """``leaves`` with ``values`` at positions ``at`` (a new list)."""
    out = list(leaves)
    for i, v in zip(at, values):
        out[i] = v
    return out


def _call(target, leaves: list, spec):
    args, kwargs = pytree.tree_unflatten(leaves, spec)
    return target(*args, **kwargs)


def _signature(target, leaves, spec, extra=()) -> tuple:
    metas = [v.meta.get("val") if isinstance(v, fx.Node) else None for v in leaves]
    return (target, str(spec), tuple(extra), tuple(
        (tuple(m.shape), m.dtype, str(m.device)) if isinstance(m, torch.Tensor)
        else ("static", repr(v)) for m, v in zip(metas, leaves)))


_DECOMPOSED = LRUCache(maxsize=256)


def _decomposed(target, leaves, spec) -> fx.GraphModule | None:
    """``target`` as PyTorch's own decomposition into other ATen ops (batch norm,
    cumprod, pooling, upsampling ...), captured once per signature; None for
    elementwise ops (their forward-mode formula is shorter) and ops without one."""
    from torch._decomp import decomposition_table
    from torch.fx.experimental.proxy_tensor import make_fx

    from ._capture import clean_dispatch_state, decompositions, functional

    if target not in decomposition_table or torch.Tag.pointwise in getattr(target, "tags", ()):
        return None
    key = _signature(target, leaves, spec)
    hit = _DECOMPOSED.get(key)
    if hit is not None:
        return hit or None
    tensor_at = [i for i, v in enumerate(leaves) if isinstance(v, fx.Node)]

    def fn(*xs):
        out = _call(target, _put(leaves, tensor_at, xs), spec)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    table = dict(decompositions())
    table[target] = decomposition_table[target]
    graph = False
    try:
        with clean_dispatch_state():
            g = make_fx(fn, table, tracing_mode="fake")(
                *[_example(leaves[i].meta["val"]) for i in tensor_at])
        g = functional(g)
        ops = [n.target for n in g.graph.nodes if n.op == "call_function"]
        if target not in ops and not any(
                getattr(t, "namespace", "aten") == "prims" or is_random(t) or is_mutating(t)
                for t in ops):
            graph = g
    except Exception:  # noqa: BLE001 - no usable decomposition: the formula path
        pass
    _DECOMPOSED.put(key, graph)
    return graph or None


def _formula(target, leaves, spec, diff, floating, out_metas) -> fx.GraphModule:
    """``(tensor args..., tangents of diff args...) -> floating output tangents`` of
    ``target``, captured once per signature with make_fx (fake tensors)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from ._capture import clean_dispatch_state, decompositions, functional

    metas = [v.meta.get("val") if isinstance(v, fx.Node) else None for v in leaves]
    key = _signature(target, leaves, spec, diff)
    hit = _FORMULAS.get(key)
    if hit is not None:
        return hit
    tensor_at = [i for i, v in enumerate(leaves) if isinstance(v, fx.Node)]
    undefined: set[int] = set()  # outputs an own formula leaves undefined

    def fn(*xs):
        full = _put(leaves, tensor_at, xs)
        tangents = xs[len(tensor_at):]

        def op(*d):
            out = _call(target, _put(full, diff, d), spec)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(o for o, fl in zip(outs, floating) if fl)

        own = _OWN_FORMULAS.get(target)
        if own is not None:
            args, kwargs = pytree.tree_unflatten(full, spec)
            t_args, _ = pytree.tree_unflatten(_put([None] * len(full), diff, tangents), spec)
            outs = own(*args, tangents=t_args, **kwargs)
            kept = [t for t, fl in zip(outs, floating) if fl]
            undefined.update(k for k, t in enumerate(kept) if t is None)
            return tuple(_example(o) if t is None else t
                         for o, t, fl in zip(out_metas, outs, floating) if fl)
        _, t_out = torch.func.jvp(op, tuple(full[i] for i in diff), tuple(tangents))
        return tuple(t_out)

    examples = [_example(metas[i]) for i in tensor_at] + [_example(metas[i]) for i in diff]
    try:
        with clean_dispatch_state():
            graph = make_fx(fn, decompositions(), tracing_mode="fake")(*examples)
    except Exception as e:  # no forward-mode formula, or one that cannot be traced
        raise Unsupported(f"no derivative rule for {target}, and its forward-mode formula "
                          f"cannot be captured ({type(e).__name__})") from e
    graph.graph.eliminate_dead_code()  # functorch's shape checks, the primal output
    try:
        graph = functional(graph)
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"the forward-mode formula of {target} cannot be made "
                          f"functional ({type(e).__name__})") from e
    phs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    reached = dependent_nodes(graph, set(phs[len(tensor_at):]))
    graph.meta["derivs_undefined"] = undefined if target in _OWN_FORMULAS else {
        k for k, o in enumerate(graph.graph.output_node().args[0]) if o not in reached}
    for n in graph.graph.nodes:
        if n.op == "call_function" and (is_random(n.target) or is_mutating(n.target)):
            raise Unsupported(f"the forward-mode formula of {target} is not pure")
    _FORMULAS.put(key, graph)
    return graph


# -- forward-mode formulas written here ---------------------------------------------------
# NOTE [own formulas]: PyTorch's formulas for these ops read auxiliary outputs (the LU
# factors) that PyTorch marks non-differentiable, so they cannot be differentiated
# again. These are the same derivatives written with the op itself: the JVP
# recursion then reaches every order.
def _zero_if_none(t, like):
    return torch.zeros_like(like) if t is None else t


def _solve_ex_formula(A, B, *, tangents, left=True, check_errors=False):
    dA, dB = _zero_if_none(tangents[0], A), _zero_if_none(tangents[1], B)
    X = torch.linalg.solve(A, B, left=left)
    if left:  # A X = B:  A dX = dB - dA X
        vector = B.ndim == A.ndim - 1
        dAX = (dA @ X.unsqueeze(-1)).squeeze(-1) if vector else dA @ X
        dX = torch.linalg.solve(A, dB - dAX, left=True)
    else:  # X A = B:  dX A = dB - X dA
        dX = torch.linalg.solve(A, dB - X @ dA, left=False)
    return dX, None, None, None


def _trace_solve(A, dA):
    return torch.linalg.solve(A, dA).diagonal(dim1=-2, dim2=-1).sum(-1)


def _det_formula(A, *, tangents):
    return torch.linalg.det(A) * _trace_solve(A, tangents[0]), None, None


def _slogdet_formula(A, *, tangents):
    sign = torch.linalg.slogdet(A)[0]  # piecewise constant: derivative zero
    return torch.zeros_like(sign), _trace_solve(A, tangents[0]), None, None


def _triangular_solve_formula(B, A, upper=True, transpose=False, unitriangular=False, *,
                              tangents):
    dB, dA = _zero_if_none(tangents[0], B), _zero_if_none(tangents[1], A)
    X = torch.triangular_solve(B, A, upper, transpose, unitriangular)[0]
    M = dA.triu() if upper else dA.tril()  # only this triangle of A is read
    if unitriangular:
        M = M - torch.diag_embed(M.diagonal(dim1=-2, dim2=-1))
    if transpose:
        M = M.mT
    dX = torch.triangular_solve(dB - M @ X, A, upper, transpose, unitriangular)[0]
    return dX, dA


_OWN_FORMULAS = {
    torch.ops.aten._linalg_solve_ex.default: _solve_ex_formula,
    torch.ops.aten._linalg_det.default: _det_formula,
    torch.ops.aten._linalg_slogdet.default: _slogdet_formula,
    torch.ops.aten.triangular_solve.default: _triangular_solve_formula,
}


def _example(meta: torch.Tensor) -> torch.Tensor:
    """A real tensor of ``meta``'s metadata (make_fx fakes it; values are unread)."""
    return torch.zeros(meta.shape, dtype=meta.dtype, device=meta.device)
