"""Trace once, specialize, run lean: the PyTorch derivative engine.

For each (argument shapes/dtypes/devices, non-tensor argument values) of a
transform, ``f`` is captured once as an ATen graph (``_capture.py``: every tensor
``f`` reads becomes a graph input, and a guard proves the rest unchanged before a
cached graph is reused). A new FX graph is then built that computes exactly the
requested partials, with jets over that graph (``_jet.py``, ``_rules.py``), and
it is cached in the transform's bounded LRU cache. The graph runs as ordinary
ATen ops, so autograd records it: training through it and differentiating it
again work, and ``torch.func`` transforms apply to it.

NOTE [fallbacks]: anything the engine cannot handle exactly (an op without a
rule, data-dependent control flow, RNG, in-place updates of inputs, has_aux,
unhashable non-tensor arguments) gives a ``Fallback`` with the
reason; the transform then runs the general nested-forward path. The decision is
cached for the signature (under the same guard), so a fallback costs one failed
trace, once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ...core import _ledger
from ...core._spec import Spec
from .._common import Fallback, numel, sample_shape
from ._builder import Builder, Column
from ._capture import (BUILD_LOCK, StateError, cache_key, complex_values, outside_functorch,
                       shared_capture)
from ._jet import Context, Jet
from ._interpret import interpret
from ._registry import Unsupported
from ._runner import python_runner


@dataclasses.dataclass
class Compiled:
    module: fx.GraphModule
    out_spec: Any
    n_out: int
    build_seconds: float
    ops: int
    lifted: tuple = ()  # tensors f reads besides its arguments, passed live
    valid: Any = None  # () -> bool: the capture's guard (NOTE [state guards])
    runner: Any = None  # module's program, run without FX's per-op frames

    @property
    def note(self) -> str:
        lifted = f", {len(self.lifted)} tensors f reads lifted to inputs" if self.lifted else ""
        return (f"derivative graph of {self.ops} ops, built in {self.build_seconds:.3f} s"
                f"{lifted}, cached per argument signature under a state guard")


def lookup(spec: Spec, args: tuple, kwargs: dict) -> Compiled | None:
    """The hot path: a graph already built for these tensors' signature whose
    state guard still holds, or None. Only plain calls: tensors, no kwargs."""
    if kwargs:
        return None
    key = cache_key(args, kwargs)
    entry = None if key is None else spec.cache.get(key)
    if type(entry) is Compiled and entry.valid():
        return entry
    return None


def build(spec: Spec, args: tuple, kwargs: dict) -> Compiled | Fallback:
    t0 = time.perf_counter()
    if spec.has_aux:
        return Fallback("has_aux=True (auxiliary outputs run on the general path)")
    offsets = _top_level_offsets(args)
    selected_leaf = {offsets[a]: slot for slot, a in enumerate(spec.argnums)}
    cap = None
    try:
        cap = shared_capture(spec.cache, spec.fun, args, kwargs)
        complex_op = complex_values(cap)  # NOTE [complex intermediates]
        if complex_op is not None:
            raise Unsupported(f"f has complex intermediates ({complex_op}); the traced "
                              "rules are real")
        with BUILD_LOCK, outside_functorch(), _ledger.phase("build"):
            module, n_ops = _derivative_module(spec, cap.graph, cap.is_tensor,
                                               selected_leaf)
        if spec.torch_compile:
            # Compiles lazily on the first run; the user asked for it by name.
            module = torch.compile(module, fullgraph=True, dynamic=False)
            runner = module.forward
        else:
            runner = python_runner(module)  # NOTE [runner]
    except StateError:
        raise
    except Unsupported as e:
        return fallback(str(e), getattr(e, "valid", None) or (cap and cap.valid))
    except Exception as e:  # tracing failed: data-dependent control flow, ...
        return fallback(f"could not capture f as a graph ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                         cap and cap.valid)
    return Compiled(module, cap.out_spec, len(cap.graph.graph.output_node().args[0]),
                    time.perf_counter() - t0, n_ops, cap.lifted, cap.valid, runner)


@dataclasses.dataclass
class GuardedFallback(Fallback):
    """A fallback decided for one state of what f reads (e.g. a module in train
    mode): retried when that state changes."""

    valid: Any = None


def fallback(reason: str, valid=None) -> Fallback:
    """A Fallback, kept under ``valid`` (a capture's guard) when there is one."""
    return Fallback(reason) if valid is None else GuardedFallback(reason, valid)


def run(compiled: Compiled, args: tuple, kwargs: dict, n_requests: int) -> list[Any]:
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    else:
        tensors = args
    outs = compiled.runner(*tensors, *compiled.lifted)
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


def _derivative_module(spec: Spec, traced: fx.GraphModule, is_tensor, selected_leaf):
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    fake_mode = getattr(placeholders[0].meta.get("val") if placeholders else None,
                        "fake_mode", None)
    if fake_mode is None:
        raise Unsupported("f has no tensor inputs to trace with")
    b = Builder(fake_mode)
    new_ph = [b.placeholder(f"arg{i}", n.meta["val"]) for i, n in enumerate(placeholders)]
    tensor_leaf_index = [i for i, t in enumerate(is_tensor) if t]
    slot_of_ph = {p: selected_leaf[leaf] for p, leaf in enumerate(tensor_leaf_index)
                  if leaf in selected_leaf}
    seed_nodes: dict[tuple[int, int], Any] = {}
    results: list[fx.Node] = []
    for groups, keys in spec.plan.jet_reads():
        ctx = Context(b, spec.batch_axis, len(groups))
        env: dict[fx.Node, Jet] = {}
        for k, (ph, new) in enumerate(zip(placeholders, new_ph)):
            env[ph] = _input_jet(ctx, new, slot_of_ph.get(k), groups, spec.batch_axis,
                                 seed_nodes)
        outs = interpret(ctx, traced, env, keep_primals=True)
        for r, key in keys:
            for out in outs:
                results.append((r, b.materialize(out.get(key), out.primal)))
    results.sort(key=lambda rv: rv[0])
    b.graph.output(tuple(v for _, v in results))
    b.graph.eliminate_dead_code()
    module = fx.GraphModule(b.constants, b.graph)
    n_ops = sum(1 for n in b.graph.nodes if n.op == "call_function")
    return module, n_ops


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
            return Column(1.0, vector_axis, flat, sshape[0], val.dtype, val.device)
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

