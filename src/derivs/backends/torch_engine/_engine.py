"""Trace once, specialize, run lean: the PyTorch derivative engine.

For each (argument shapes/dtypes/devices, non-tensor argument values) of a
transform, ``f`` is captured once as an ATen graph with ``make_fx`` in fake mode
(no real computation; data-dependent control flow raises instead of being
silently specialized). A new FX graph is then built that computes exactly the
requested partials, with jets over that graph (``_jet.py``, ``_rules.py``), and
it is cached in the transform's bounded LRU cache. The graph runs as ordinary
ATen ops, so autograd records it: training through it and differentiating it
again work, and ``torch.func`` transforms apply to it.

NOTE [fallbacks]: anything the engine cannot handle exactly (an op without a
rule, data-dependent control flow, closed-over tensors, RNG, in-place updates of
inputs, has_aux, unhashable non-tensor arguments) gives a ``Fallback`` with the
reason; the transform then runs the general nested-forward path. The decision is
cached for the signature, so a fallback costs one failed trace, once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx

from .._common import Fallback, numel, referenced_values, sample_shape
from ._builder import Builder, Narrow, is_mutating, is_random
from ._jet import Context, Jet
from ._rules import RULES, Unsupported


_aten = torch.ops.aten
_BUILD_LOCK = threading.RLock()


@dataclasses.dataclass
class Compiled:
    module: fx.GraphModule
    out_spec: Any
    n_out: int
    build_seconds: float
    ops: int

    @property
    def note(self) -> str:
        return (f"derivative graph of {self.ops} ops, built in {self.build_seconds:.3f} s, "
                "cached per argument signature")


_PLAIN = (int, float, bool, str, complex, type(None))


def captured_values(fun) -> tuple:
    """Python values that ``fun`` reads from its closure cells and module globals
    and that a trace would bake in as constants (numbers, strings, and tuples of
    them): part of the cache key, so changing one gives a new graph. Values read
    deeper, inside functions that ``fun`` calls, are not seen (see the README)."""
    return tuple(v if name is None else (name, v)
                 for name, v in referenced_values(fun) if _plain(v))


def _plain(v) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(map(_plain, v)))


def cache_key(transform, args: tuple, kwargs: dict) -> Any:
    """What the derivative graph depends on besides f and the request: tensor
    metadata, the values of non-tensor arguments, and the plain values f captures.
    None if not hashable."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        sig = tuple((a.shape, a.dtype, a.device) for a in args)
    else:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        parts = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                parts.append((leaf.shape, leaf.dtype, leaf.device))
            elif isinstance(leaf, _PLAIN):
                parts.append((type(leaf), leaf))
            else:
                return None
        sig = (str(spec), tuple(parts))
    return sig, captured_values(transform.fun)


def tracing_active(args: tuple) -> bool:
    """Inside another trace (e.g. derivs of derivs): build nothing there; the
    general path composes with the outer trace."""
    return get_proxy_mode() is not None or any(isinstance(a, FakeTensor) for a in args)


def lookup(transform, args: tuple, kwargs: dict) -> Compiled | None:
    """The hot path: a graph already built for these tensors' signature (which was
    validated when it was built), or None. Only plain calls: tensors, no kwargs."""
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    entry = transform.cache.get(cache_key(transform, args, kwargs))
    return entry if isinstance(entry, Compiled) else None


def capture(fun, args: tuple, kwargs: dict, side: dict) -> tuple[fx.GraphModule, list[bool]]:
    """``fun`` as a functional ATen graph (fake tensors, core decompositions) over
    the tensor leaves of ``(args, kwargs)``, and which leaves are tensors.
    ``side["spec"]`` receives the output tree. Raises Unsupported (or whatever
    tracing raises) when f cannot be captured."""
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]

    def flat_fn(*tensors):
        it = iter(tensors)
        full = [next(it) if t else leaf for t, leaf in zip(is_tensor, leaves)]
        a, kw = pytree.tree_unflatten(full, in_spec)
        out = fun(*a, **kw)
        out_leaves, side["spec"] = pytree.tree_flatten(out)
        for leaf in out_leaves:
            if not (isinstance(leaf, torch.Tensor) and leaf.is_floating_point()):
                raise Unsupported("f returned a non-floating or non-tensor output")
        return tuple(out_leaves)

    # Metadata is read here, where torch.func wrappers report per-sample shapes.
    examples = [torch.empty(leaf.shape, dtype=leaf.dtype, device=leaf.device)
                for leaf, t in zip(leaves, is_tensor) if t]
    # Tracing uses process-wide dispatcher state: one build at a time. Only the
    # first call of each signature builds; cached graphs run concurrently.
    with _BUILD_LOCK, _outside_functorch():
        # functionalize: in-place updates of intermediates (common inside ATen
        # decompositions) become pure ops; an update of an input stays visible
        # as copy_ and is rejected by _check_pure.
        traced = make_fx(torch.func.functionalize(flat_fn), _decompositions(),
                         tracing_mode="fake")(*examples)
    _out_of_place_views(traced.graph)
    for node in traced.graph.nodes:
        if node.op == "call_function":
            _check_pure(node)
        elif node.op == "get_attr" and not all(
                u.target == torch.ops.aten.lift_fresh_copy.default for u in node.users):
            # Tensors that f creates from Python data (torch.tensor(2.0)) are traced
            # as constants copied by lift_fresh_copy: part of f, safe to keep. Any
            # other constant is a tensor f closes over, which may change between calls.
            raise Unsupported("f closes over a tensor; pass it as an argument instead")
    return traced, is_tensor


def build(transform, args: tuple, kwargs: dict) -> Compiled | Fallback:
    t0 = time.perf_counter()
    if transform.has_aux:
        return Fallback("has_aux=True (auxiliary outputs run on the general path)")
    offsets = _top_level_offsets(args)
    selected_leaf = {offsets[a]: slot for slot, a in enumerate(transform.argnums)}
    side: dict[str, Any] = {}
    try:
        traced, is_tensor = capture(transform.fun, args, kwargs, side)
        with _BUILD_LOCK, _outside_functorch():
            module, n_ops = _derivative_module(transform, traced, is_tensor, selected_leaf)
        if transform.torch_compile:
            # Compiles lazily on the first run; the user asked for it by name.
            module = torch.compile(module, fullgraph=True, dynamic=False)
    except Unsupported as e:
        return Fallback(str(e))
    except Exception as e:  # tracing failed: data-dependent control flow, closures, ...
        return Fallback(f"could not capture f as a graph ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})")
    return Compiled(module, side["spec"], len(traced.graph.output_node().args[0]),
                    time.perf_counter() - t0, n_ops)


_DECOMPOSITIONS: dict | None = None
_EXTRA_DECOMPOSED = [
    _aten._softmax.default, _aten._log_softmax.default, _aten.native_layer_norm.default,
    _aten.gelu.default, _aten.elu.default, _aten.leaky_relu.default,
    _aten.linalg_vector_norm.default, _aten.mish.default, _aten.hardtanh.default,
]


def _decompositions() -> dict:
    """PyTorch's own decompositions for the ops that have no jet rule (softmax,
    layer_norm, gelu, softplus, ...): they become ops that do. Ops with a rule stay
    whole, since a dedicated rule (prod, addmm) beats its decomposition."""
    global _DECOMPOSITIONS
    if _DECOMPOSITIONS is None:
        from torch._decomp import core_aten_decompositions, decomposition_table

        # Core ATen decompositions, plus composite ops that core ATen keeps whole but
        # whose decompositions stay at the ATen level (others would go down to prims).
        table = dict(core_aten_decompositions())
        for op in _EXTRA_DECOMPOSED:
            if op in decomposition_table:
                table[op] = decomposition_table[op]
        _DECOMPOSITIONS = {op: fn for op, fn in table.items() if op not in RULES}
    return _DECOMPOSITIONS


def _outside_functorch():
    """Traces see plain tensors even when the call happens inside torch.func.vmap /
    grad: the graph depends on per-sample shapes only, and the transforms apply
    when the built graph runs."""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return contextlib.nullcontext()
    try:
        from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    except ImportError as e:  # a private helper; without it, use the general path
        raise Unsupported("called inside a torch.func transform") from e
    return temporarily_clear_interpreter_stack()


def run(compiled: Compiled, args: tuple, kwargs: dict, n_requests: int) -> list[Any]:
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    else:
        tensors = args
    outs = compiled.module.forward(*tensors)  # skips nn.Module.__call__ hooks
    if compiled.out_spec.is_leaf():
        return list(outs)
    n = compiled.n_out
    return [pytree.tree_unflatten(list(outs[r * n:(r + 1) * n]), compiled.out_spec)
            for r in range(n_requests)]


def _top_level_offsets(args: tuple) -> list[int]:
    offsets, k = [], 0
    for a in args:
        offsets.append(k)
        k += len(pytree.tree_leaves(a))
    return offsets


# In-place view ops that ATen decompositions apply to fresh intermediates (matmul of
# a vector squeezes its result in place); functionalization leaves them.
_INPLACE_VIEWS = {
    _aten.squeeze_.dim: _aten.squeeze.dim, _aten.squeeze_.dims: _aten.squeeze.dims,
    _aten.squeeze_.default: _aten.squeeze.default,
    _aten.unsqueeze_.default: _aten.unsqueeze.default,
    _aten.t_.default: _aten.t.default, _aten.transpose_.default: _aten.transpose.int,
}


def _out_of_place_views(graph: fx.Graph) -> None:
    """Rewrites an in-place view op to its out-of-place twin when nothing else sees
    the tensor it changes (it has no other user and is not an input)."""
    for node in graph.nodes:
        twin = _INPLACE_VIEWS.get(node.target)
        if twin is None:
            continue
        src = node.args[0]
        if src.op != "placeholder" and len(src.users) == 1:
            node.target = twin


def _derivative_module(transform, traced: fx.GraphModule, is_tensor, selected_leaf):
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    fake_mode = getattr(placeholders[0].meta.get("val") if placeholders else None,
                        "fake_mode", None)
    if fake_mode is None:
        raise Unsupported("f has no tensor inputs to trace with")
    b = Builder(fake_mode)
    literals = {n: b.constant(getattr(traced, n.target)) for n in traced.graph.nodes
                if n.op == "get_attr"}  # Python-data constants (checked by capture)
    new_ph = [b.placeholder(f"arg{i}", n.meta["val"]) for i, n in enumerate(placeholders)]
    tensor_leaf_index = [i for i, t in enumerate(is_tensor) if t]
    slot_of_ph = {p: selected_leaf[leaf] for p, leaf in enumerate(tensor_leaf_index)
                  if leaf in selected_leaf}
    depends = _dependent_nodes(traced, {placeholders[p] for p in slot_of_ph})
    seed_nodes: dict[tuple[int, int], Any] = {}
    results: list[fx.Node] = []
    out_nodes = traced.graph.output_node().args[0]
    for groups, keys in transform.plan.jet_reads():
        ctx = Context(b, transform.batch_axis)
        env: dict[fx.Node, Jet] = {}
        for k, (ph, new) in enumerate(zip(placeholders, new_ph)):
            env[ph] = _input_jet(ctx, new, slot_of_ph.get(k), groups, transform.batch_axis,
                                 seed_nodes)
        env.update({n: ctx.const(v) for n, v in literals.items()})
        J = _jet_lookup(ctx, env)
        for node in traced.graph.nodes:
            if node.op != "call_function":
                continue
            if node not in depends:
                env[node] = ctx.const(_copy(b, node, J))
                continue
            rule = RULES.get(node.target)
            if rule is None:
                raise Unsupported(f"no derivative rule for {node.target} yet")
            jet = rule(ctx, node, J)
            if isinstance(jet.primal, fx.Node):
                jet.primal = _copy(b, node, J)  # the exact op f itself ran
            env[node] = jet
        for r, key in keys:
            for out in out_nodes:
                results.append((r, b.materialize(env[out].get(key), env[out].primal)))
    results.sort(key=lambda rv: rv[0])
    b.graph.output(tuple(v for _, v in results))
    b.graph.eliminate_dead_code()
    module = fx.GraphModule(b.constants, b.graph)
    n_ops = sum(1 for n in b.graph.nodes if n.op == "call_function")
    return module, n_ops


def _check_pure(node: fx.Node) -> None:
    """Random draws and in-place updates run on the general path (issue: a cached
    graph must mean exactly what f means, call after call)."""
    target = node.target
    if is_random(target):
        raise Unsupported(f"f draws random numbers ({target})")
    if is_mutating(target):
        raise Unsupported(f"f updates a tensor in place ({target})")


def _copy(b: Builder, node: fx.Node, J) -> fx.Node:
    m = lambda a: J(a).primal if isinstance(a, fx.Node) else a
    args = [[m(x) for x in a] if isinstance(a, (list, tuple)) else m(a) for a in node.args]
    return b.op(node.target, *args, **{k: m(v) for k, v in node.kwargs.items()})


def _jet_lookup(ctx: Context, env: dict):
    def J(a):
        if isinstance(a, fx.Node):
            return env[a]
        return ctx.const(a)
    return J


def _dependent_nodes(traced: fx.GraphModule, seeded: set) -> set:
    dep = set(seeded)
    for node in traced.graph.nodes:
        if node.op == "call_function" and any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    return dep


def _input_jet(ctx: Context, node: fx.Node, slot: int | None, groups, batch_axis, seed_nodes
               ) -> Jet:
    if slot is None:
        return ctx.const(node)
    mine = {g: flat for g, (s, flat) in enumerate(groups) if s == slot}
    if not mine:
        return ctx.const(node)
    val = node.meta["val"]
    sshape = sample_shape(tuple(val.shape), batch_axis)
    one_element = numel(sshape) == 1
    ndim = len(val.shape)
    vector_axis = None  # the axis of a 1-d sample, counted from the right
    if len(sshape) == 1:
        axis = next(d for d in range(ndim) if batch_axis is None or d != batch_axis % ndim)
        vector_axis = axis - ndim

    def seed(flat: int):
        if one_element:
            return 1.0  # the all-ones tangent: folds away in every product
        if vector_axis is not None:
            return Narrow(1.0, vector_axis, flat, sshape[0], val.dtype, val.device)
        key = (slot, flat)
        if key not in seed_nodes:
            t = torch.zeros(numel(sshape), dtype=val.dtype, device=val.device)
            t[flat] = 1
            t = t.reshape(sshape)
            if batch_axis is not None:
                t = t.unsqueeze(batch_axis % len(val.shape))
            seed_nodes[key] = ctx.b.constant(t)
        return seed_nodes[key]

    def rule(kappa):
        if sum(kappa) != 1:
            return None
        g = kappa.index(1)
        return seed(mine[g]) if g in mine else None

    jet = Jet(ctx, node, rule)
    jet.seeds, jet.expands = mine, True
    return jet

