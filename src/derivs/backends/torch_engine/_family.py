"""Collapsed operators in PyTorch with the coefficients stacked on one axis.

A pass seeds ``G`` groups (seed vectors ``s_g``: the unit directions of a
Laplacian or Bi-Laplacian, the columns of a diffusion factor) and computes ``L f
= sum_alpha c_alpha d^alpha f`` for multi-indices over the groups, plus ``Df[top]``
for a drift the input carries itself. Every intermediate carries its value, the
coefficients of the layout's rows (``core._stacked``: the proper sub-multi-
indices of the terms, by level) as one tensor of shape ``(rows, *v.shape)``, and
one collapsed top coefficient. A stack may hold only a prefix of the rows (a seed
holds level 1): the rows past it are zero.

Stacking makes each linear rule one batched op over every row instead of one op
per coefficient: the unrolled graph of a 50-input MLP's Laplacian runs about 1200
ATen ops per call, this about 40. Nonlinear rules follow NOTE [stacked rules]
(``core._stacked``): gathered products over index tables.

It interprets the captured ATen graph (``_capture``) at call time with plain
tensor ops, so it composes with autograd and ``torch.func``. Common ops have
hand-written rules (elementwise ops by their derivatives ``phi^(m)``: NOTE
[elementwise derivatives]); any other op goes through nested ``torch.func.jvp``
(``_generic``): exact for every op PyTorch can differentiate forward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ...core import _formulas, _ledger, _regions
from ...core import _univariate as U
from ...core._stacked import Layout, Table
from .._common import Fallback, numel
from .._common import add as _add
from . import _contracted
from . import _pointwise  # also fills the series rule registry
from . import _replay
from ._capture import (Capture, StateError, block_tag, complex_values, inside_trace,
                       shared_capture)
from ._engine import _top_level_offsets, fallback
from ._registry import (CLOSED_FORMS, CONSTANT_OPS, FAMILY_RULES, SERIES_RULES, Unsupported,
                        deffamily)

aten = torch.ops.aten


class Seeds:
    """What one call propagates: the layout, ``seeds`` of shape ``(G, *x.shape)``
    (group ``g``'s seed in every sample; may be an expanded view) and the input's
    own top coefficient ``top`` (a drift; None is zero)."""

    def __init__(self, layout: Layout, seeds: torch.Tensor, top: torch.Tensor | None = None,
                 picks: tuple | None = None):
        self.layout, self.seeds, self.top = layout, seeds, top
        # (indices, scale): seed g is scale * e_{indices[g]} (NOTE [picked seeds])
        self.picks = picks


# NOTE [device constants]: the tables' index and weight tensors are made once per
# layout and device and kept with the program, not made per call: on a GPU each
# ``torch.as_tensor(numpy, device="cuda")`` is a blocking copy from pageable memory,
# which waits for every kernel queued before it, so a per-call copy inside the
# interpretation drains the launch queue once per table (dozens of times per call).
# Inside a trace (make_fx for torch_compile=True) a fresh context is used: its
# tensors belong to that trace.
class _Ctx:
    """The layout's tables, prepared for the call's device: columns as slices
    where they are contiguous (a univariate layout), else index tensors."""

    def __init__(self, layout: Layout, device):
        self.layout, self.device = layout, device
        self.R = layout.size
        self._prepared: dict = {}
        k = layout.contracted  # NOTE [contracted Bi-Laplacian]
        self._maps = None if k is None else _contracted.Maps(k, device)

    @property
    def contracted(self) -> "_contracted.Maps | None":
        """The contracted rules' maps, while the layout offers them (a benchmark
        A/B switches them off on a live layout)."""
        return self._maps if self.layout.contracted is not None else None

    def whole_levels(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A stack cut at a level's end (zero-padded to the next one if not)."""
        ends = self.layout.level_end
        return c if c.shape[0] in ends else _padded(c, next(e for e in ends
                                                             if e > c.shape[0]), like)

    def tables(self, kind: str, limit: int) -> list:
        """``(m, columns, target, weight)`` per table of ``kind`` ("rows" or "top")
        limited to blocks below ``limit``; a column is None for the whole stack in
        order, a slice, or an index tensor; ``target`` is ``(level, None | index,
        None | scatter)`` for rows tables (None, None: the whole level in order; a
        scatter: NOTE [scatter by matmul])."""
        key = (kind, limit)
        hit = self._prepared.get(key)
        if hit is None:
            source = self.layout.row_tables if kind == "rows" else self.layout.top_tables
            hit = []
            for t in source:
                t = t.limited(limit)
                if t is not None:
                    hit.append((t.m, self._columns(t.blocks, limit), self._target(t),
                                _Weights(t.weight, self.device)))
            self._prepared[key] = hit
        return hit

    def _columns(self, blocks: np.ndarray, limit: int) -> list:
        cols: list = []
        for i in range(blocks.shape[1]):  # identical columns share one object (squares)
            col = blocks[:, i]
            same = next((cols[k] for k in range(i) if np.array_equal(blocks[:, k], col)),
                        False)
            if same is not False:
                cols.append(same)
            elif np.array_equal(col, np.arange(limit)):
                cols.append(None)
            elif np.array_equal(col, np.arange(col[0], col[0] + len(col))):
                cols.append(slice(int(col[0]), int(col[0]) + len(col)))
            else:
                cols.append(torch.as_tensor(col, device=self.device))
        return cols

    def _target(self, t: Table):
        if t.target_level is None:
            return None
        size = self.level_size(t.target_level)
        whole = len(t.target) == size and np.array_equal(t.target, np.arange(size))
        if whole:
            return t.target_level, None, None
        if len(t.target) >= 2 * size:  # NOTE [scatter by matmul]
            scatter = np.zeros((size, len(t.target)))
            np.add.at(scatter, (t.target, np.arange(len(t.target))), t.weight)
            return t.target_level, None, _Scatter(scatter, self.device)
        return t.target_level, torch.as_tensor(t.target, device=self.device), None

    def level_size(self, level: int) -> int:
        return self.layout.level_end[level - 1] - self.layout.level_start(level)


# NOTE [scatter by matmul]: a rows table whose entries outnumber its target rows
# at least twice (the Bi-Laplacian's merged third level: about 20 entries per row,
# NOTE [merged rows]) adds its weighted products into them with one matmul by a
# (rows x entries) matrix holding the weights, instead of a weight multiply, a
# zero fill and an index_add over the entries: one pass over the products, not
# three. Tables with few entries per row keep the index_add (the matmul's cost
# grows with rows x entries).
class _Scatter:
    """A dense (rows x entries) weighted scatter matrix."""

    def __init__(self, matrix: np.ndarray, device):
        self.matrix = _DeviceArray(matrix, device)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        m = self.matrix.tensor(t.dtype)
        return (m @ t.reshape(t.shape[0], -1)).reshape((m.shape[0],) + tuple(t.shape[1:]))


class _Rows:
    """Accumulates a rule's contributions to the rows of level >= 2 on top of its
    first-order part ``base`` (a stack prefix), and builds the stack once."""

    def __init__(self, ctx: _Ctx, base: torch.Tensor | None):
        self.ctx, self.base, self.extra = ctx, base, {}
        self.scaled: dict = {}  # (level, id(scale)) -> [scale, scattered sum]

    def add(self, target, weight: _Weights, t: torch.Tensor,
            scale: torch.Tensor | None = None) -> None:
        """Adds ``scale * (the weighted entries t, scattered to their rows)``.
        ``scale`` is a factor common to every entry (``phi^(m)``): it multiplies
        the scattered rows, fewer than the entries, once per distinct factor."""
        level, index, scatter = target
        if scatter is not None:
            t = scatter(t)
        else:
            t = _weighted(weight, t)
            if index is not None:
                full = torch.zeros((self.ctx.level_size(level),) + tuple(t.shape[1:]),
                                   dtype=t.dtype, device=t.device)
                t = full.index_add(0, index, t)
        if scale is None:
            self.extra[level] = _add(self.extra.get(level), t)
            return
        slot = self.scaled.setdefault((level, id(scale)), [scale, None])
        slot[1] = _add(slot[1], t)

    def stack(self) -> torch.Tensor | None:
        for (level, _), (scale, t) in self.scaled.items():
            self.extra[level] = _add(self.extra.get(level), scale * t)
        self.scaled = {}
        if not self.extra:
            return self.base
        layout = self.ctx.layout
        have = 0 if self.base is None else self.base.shape[0]
        like = next(iter(self.extra.values()))
        parts = []
        for level in range(1, max(self.extra) + 1):
            lo, hi = layout.level_start(level), layout.level_end[level - 1]
            part = _add(self.base[lo:hi] if hi <= have else None, self.extra.get(level))
            if part is None:
                part = torch.zeros((hi - lo,) + tuple(like.shape[1:]), dtype=like.dtype,
                                   device=like.device)
            parts.append(part)
        shape = torch.broadcast_shapes(*(p.shape[1:] for p in parts))
        return torch.cat([p.expand((p.shape[0],) + tuple(shape)) for p in parts])


def _gather(stack: torch.Tensor, col) -> torch.Tensor:
    """Rows ``col`` of a stack: all (None), a slice (a view) or an index tensor."""
    return stack if col is None else stack[col]


class _DeviceArray:
    """A NumPy constant of the tables, and its device tensor per dtype, made once
    per context (NOTE [device constants])."""

    def __init__(self, array: np.ndarray, device):
        self.numpy, self.device, self._tensors = array, device, {}

    def tensor(self, dtype) -> torch.Tensor:
        w = self._tensors.get(dtype)
        if w is None:
            w = self._tensors[dtype] = torch.as_tensor(self.numpy, dtype=dtype,
                                                       device=self.device)
        return w


class _Weights(_DeviceArray):
    """A table's entry weights (all ones: no multiply at all)."""

    def __init__(self, weight: np.ndarray, device):
        super().__init__(weight, device)
        self.ones = bool(np.all(weight == 1.0))


def _weighted(weight: _Weights, t: torch.Tensor) -> torch.Tensor:
    """``weight[i] * t[i]`` (all-ones skip the multiply)."""
    if weight.ones:
        return t
    return weight.tensor(t.dtype).reshape((-1,) + (1,) * (t.ndim - 1)) * t


def _wsum(weight: _Weights, t: torch.Tensor) -> torch.Tensor:
    """``sum_i weight[i] * t[i]``."""
    t = _compact(t)  # repeated (stride-0) rows: reduce them once
    if weight.ones:
        return t.sum(0)
    return torch.tensordot(weight.tensor(t.dtype), t, dims=1)


class _Jet:
    """A value ``p``, its stack ``c`` (a prefix of the layout's rows; None is
    zero) and its collapsed top coefficient ``l`` (None is zero); ``k``, on the
    selected input only: its stack's rows as picked coordinates (NOTE [picked
    seeds])."""

    __slots__ = ("p", "c", "l", "k")

    def __init__(self, p: Any, c: Any = None, l: Any = None):
        self.p, self.c, self.l, self.k = p, c, l, None

    @property
    def const(self) -> bool:
        return self.c is None and self.l is None

    @property
    def rows(self) -> int:
        return 0 if self.c is None else self.c.shape[0]


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
        self.need_c: set = set()  # nodes whose stacked coefficients are read
        self.need_rows: set = set()  # the same when the outputs' own rows are read
        # NOTE [elementwise regions]: fused members -> their region's root, and the
        # members whose stacks something outside their region reads
        self.members: dict = {}
        self.exports: set = set()
        # NOTE [closed forms]: a block's output -> (rule, input, params, kwargs), and
        # the block's other ops (computed by the output's rule, never run)
        self.blocks: dict = {}
        self.inside: set = set()
        self._contexts: dict = {}  # (id(layout), device) -> (layout, _Ctx)
        self._laplacians: dict = {}
        self.replays = _replay.Replays(self)

    def __call__(self, args: tuple, kwargs: dict, seeds: Seeds | None = None) -> Any:
        tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs))
                   if isinstance(leaf, torch.Tensor)] + list(self.lifted)
        if seeds is None:  # the Laplacian
            seeds = self.laplacian_seeds(tensors[self.selected])
        out = self.replays.run(tensors, seeds)  # NOTE [replay]
        if out is None:
            out = self.run(tensors, seeds)
        return pytree.tree_unflatten(out, self.out_spec)

    def laplacian_seeds(self, x: torch.Tensor, diagonal: bool = False) -> Seeds:
        """Unit seeds with the Laplacian's layout, or (``diagonal``) the layout
        that reads the Hessian diagonal's rows ``(i, i)`` off the outputs."""
        n = numel(tuple(x.shape)) if self.batch_axis is None else numel(
            tuple(s for i, s in enumerate(x.shape) if i != self.batch_axis % x.ndim))
        layout = self._laplacians.get((n, diagonal))
        if layout is None:
            layout = (Layout(n, (), read=[(i, i) for i in range(n)]) if diagonal
                      else Layout(n, [(1.0, (i, i)) for i in range(n)]))
            self._laplacians[(n, diagonal)] = layout
        return Seeds(layout, unit_seeds(x, self.batch_axis))

    def _pickable(self, x: torch.Tensor) -> bool:
        """Whether picked seeds index the last axis of a ``(batch, n)`` input, as
        ``_picked_mm`` reads them."""
        return x.ndim == 2 and self.batch_axis is not None and self.batch_axis % 2 == 0

    def picked_reads(self, x: torch.Tensor) -> tuple[int, int]:
        """``(gathered, dense)``: the input's uses that read picked seeds as a gather
        (the left factor of ``mm`` / ``addmm``) and those that read them dense."""
        ph = self.placeholders[self.selected]
        users = list(ph.users)
        if not self._pickable(x):
            return 0, len(users)
        gathered = sum(1 for u in users if (u.target == aten.mm.default and u.args[0] is ph)
                       or (u.target == aten.addmm.default and u.args[1] is ph))
        return gathered, len(users) - gathered

    def _context(self, layout: Layout, x: torch.Tensor) -> _Ctx:
        """The layout's prepared tables on x's device, kept across calls (NOTE
        [device constants]); a fresh one inside a trace, whose tensors must not
        outlive it."""
        if inside_trace((x,)):
            return _Ctx(layout, x.device)
        key = (id(layout), x.device)
        hit = self._contexts.get(key)
        if hit is None or hit[0] is not layout:
            hit = self._contexts[key] = (layout, _Ctx(layout, x.device))
        return hit[1]

    def run(self, tensors: list, seeds: Seeds, literals: dict | None = None) -> list:
        """The operator's outputs (flat) for the graph's inputs ``tensors`` (the
        arguments' tensors, then the lifted ones); ``literals`` replaces the
        capture's constants (a replay's trace takes them as inputs)."""
        x = tensors[self.selected]
        layout = seeds.layout
        ctx = self._context(layout, x)
        s = seeds.seeds.to(x.dtype)
        groups = layout.seed_groups
        c = s if groups == tuple(range(s.shape[0])) else s[torch.as_tensor(groups)]
        top = seeds.top
        for coef, g in layout.first_order:  # first-order terms: the seeds themselves
            top = _add(top, coef * s[g])
        env: dict[fx.Node, _Jet] = {}
        for k, (ph, t) in enumerate(zip(self.placeholders, tensors)):
            env[ph] = _Jet(t, c, top) if k == self.selected else _Jet(t)
        if seeds.picks is not None and c is s and self._pickable(x):
            env[self.placeholders[self.selected]].k = seeds.picks
        env.update({n: _Jet(v) for n, v in
                    (self.literals if literals is None else literals).items()})
        outs = None
        need = self.need_rows if layout.read else self.need_c
        series: dict = {}  # region values as univariate series (NOTE [elementwise regions])
        frees = self.frees
        inside = self.inside
        for node in self.graph.nodes:
            if node.op == "call_function":
                if node in inside:
                    continue
                root = self.members.get(node)
                if root is None:
                    env[node] = _apply(ctx, node, env, node in need)
                else:
                    env[node] = self._fused(ctx, node, root, env, series, layout.order,
                                            node in need)
                for dead in frees.get(node, ()):  # NOTE [last use]
                    env.pop(dead, None)
                    series.pop(dead, None)
            elif node.op == "output":
                if layout.read:  # the read rows, stacked first: (len(read), *out)
                    outs = [_rows_of(env[o], layout.read_rows) for o in node.args[0]]
                else:
                    outs = [_top_of(env[o]) for o in node.args[0]]
        return outs

    @functools.cached_property
    def frees(self) -> dict:
        """NOTE [last use]: the values (jets, stacks, series) each node is the last to
        read, dropped once it has run, as generated graph code and torch.fx's
        Interpreter drop theirs: a call's peak memory is the live set's, not every
        intermediate's. A fused region's members read their root's stack too."""
        last: dict = {}
        for node in self.graph.nodes:
            if node.op != "call_function" or node in self.inside:
                continue
            reads = list(node.all_input_nodes)
            root = self.members.get(node)
            if root is not None:
                reads.append(root)
            block = self.blocks.get(node)
            if block is not None:
                reads.append(block[1])
            for r in reads:
                last[r] = node
        out = self.graph.output_node()
        for o in out.all_input_nodes:
            last.pop(o, None)  # read by the output: kept to the end
        frees: dict = {}
        for value, node in last.items():
            frees.setdefault(node, []).append(value)
        return frees


    def _fused(self, ctx: _Ctx, node: fx.Node, root: fx.Node, env: dict, series: dict,
               m: int, want_c: bool) -> _Jet:
        """A member of a fused region: its series from its inputs' (the root's is
        ``[r, 1, 0, ..]``); read outside the region, its stack and top come from
        the root's by the elementwise rule with the series' derivatives."""
        if root not in series:
            series[root] = U.Series(U.variable(env[root].p, m))

        def arg(a):
            if isinstance(a, fx.Node):
                return series[a] if a in series else env[a].p
            return a

        block = self.blocks.get(node)
        if block is not None:  # NOTE [closed forms]
            rule, x, params, kw = block
            u = series[x]
            y, d = rule(u[0], m, *params, **kw)
            s = series[node] = U.Series([y] + U.compose(d, u, m))
        else:
            args = [arg(a) for a in node.args]
            kw = {k: _primal(v, env) for k, v in node.kwargs.items()}
            s = series[node] = SERIES_RULES[node.target].rule(args, kw, m)
        if node not in self.exports:
            return _Jet(s[0])
        return _unary_stack(ctx, env[root], s[0], list(s[1:]), want_c)


def _fused_regions(graph: fx.Graph, live: set) -> dict:
    """The fused regions of a graph (NOTE [elementwise regions]): ``member -> root``
    for every region that holds an op a linear rule cannot take alone (a
    nonlinear op, a product of two of its values, an op without a family rule);
    regions of linear maps only keep their own (cheaper) rules."""
    def pointwise(n: fx.Node) -> bool:
        entry = SERIES_RULES.get(n.target)
        if entry is None or not entry.takes(dict(n.kwargs)):
            return False
        return not any(isinstance(v, fx.Node) and v in live for v in n.kwargs.values())

    def key(n: fx.Node):
        val = n.meta.get("val")
        return (tuple(val.shape), val.dtype) if isinstance(val, torch.Tensor) else None

    items = [(n, [a for a in n.all_input_nodes if a in live], pointwise(n))
             for n in graph.nodes if n.op == "call_function" and n in live]
    root_of = _regions.elementwise_regions(items, key)
    fused = {}
    for root, members in _regions.by_root(root_of).items():
        if any(_needs_fusion(n, live) for n in members):
            fused.update((n, root) for n in members)
    return fused


def _blocks(graph: fx.Graph, members: dict) -> tuple[dict, set]:
    """NOTE [closed forms] (``_closed_forms.py``): the tagged decompositions that can
    be taken whole: one input in the same fused region (its root or a member), one
    output that anything outside reads, the same shape and dtype in and out, every
    other op read only inside. Returns ``(output -> (rule, input, params, kwargs),
    the other ops)``; any other block keeps its op-by-op series."""
    groups: dict = {}
    for n in graph.nodes:
        tag = block_tag(n) if n.op == "call_function" else None
        if tag is not None and tag[0] in CLOSED_FORMS:
            groups.setdefault(tag[1], (tag, []))[1].append(n)
    blocks, inside = {}, set()
    for (op, _, params, kwargs), nodes in groups.values():
        block = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in block}
        outs = [n for n in nodes if any(u not in block for u in n.users)]
        if len(inputs) != 1 or len(outs) != 1:
            continue
        (x,), out = inputs, outs[0]
        root = members.get(out)
        if root is None or not (x is root or members.get(x) is root):
            continue
        vx, vo = x.meta.get("val"), out.meta.get("val")
        if not (isinstance(vx, torch.Tensor) and isinstance(vo, torch.Tensor)
                and vx.shape == vo.shape and vx.dtype == vo.dtype):
            continue
        blocks[out] = (CLOSED_FORMS[op], x, params, kwargs)
        inside.update(n for n in nodes if n is not out)
    return blocks, inside


def _needs_fusion(n: fx.Node, live: set) -> bool:
    entry = FAMILY_RULES.get(n.target)
    if entry is None:
        return True
    positions = [i for i, a in enumerate(n.args) if isinstance(a, fx.Node) and a in live]
    return entry.reads_lower_coefficients(positions)


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
    complex_op = complex_values(cap)  # NOTE [complex intermediates] in _capture.py
    if complex_op is not None:
        return fallback(f"f has complex intermediates ({complex_op}); the traced rules "
                        "are real", cap.valid)
    with _ledger.phase("build"):  # NOTE [first-call ledger]
        program = FamilyProgram(cap, _top_level_offsets(args)[argnum], batch_axis)
    traced = cap.graph
    live = {program.placeholders[program.selected]}
    for n in traced.graph.nodes:  # what the rules cannot see: keep to the unrolled engine
        if n.op != "call_function" or not any(a in live for a in n.all_input_nodes):
            continue
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.is_floating_point():
            continue  # comparisons, indices: no derivative
        if n.target in CONSTANT_OPS:
            continue  # zeros_like, sign, floor: values without a derivative
        live.add(n)
        if any(isinstance(v, fx.Node) and v in live for v in n.kwargs.values()):
            return fallback(f"{n.target} takes a differentiated tensor as a keyword", cap.valid)
        if not isinstance(n.meta.get("val"), torch.Tensor):
            return fallback(f"{n.target} has several outputs", cap.valid)
        entry = FAMILY_RULES.get(n.target)
        if not (entry is not None and entry.sequence) and any(
                isinstance(a, (list, tuple)) and any(x in live for x in a) for a in n.args):
            return fallback(f"{n.target} takes a list of differentiated tensors", cap.valid)
    outputs = {a for a in traced.graph.output_node().args[0] if isinstance(a, fx.Node)}
    program.members = _fused_regions(traced.graph, live)
    program.exports = {n for n in program.members
                       if n in outputs or any(u in live and u not in program.members
                                              for u in n.users)}
    program.blocks, program.inside = _blocks(traced.graph, program.members)
    program.need_c = _lower_readers(traced.graph, live, program.members)
    program.need_rows = _lower_readers(traced.graph, live, program.members, outputs & live)
    return program


def _lower_readers(graph: fx.Graph, live: set, members: dict,
                   outputs: set = frozenset()) -> set:
    """The live nodes whose stacked lower coefficients something reads: the inputs
    of a node that needs its own, and the inputs that a node's collapsed
    coefficient is nonlinear in; ``outputs`` whose rows are read themselves (else
    the outputs need only their collapsed coefficient). A fused region reads its
    root's stack (its exports are elementwise functions of the root)."""
    need: set = set(outputs)
    for n in reversed(graph.nodes):
        if n not in live or n.op != "call_function":
            continue
        if n in members:
            need.add(members[n])
            continue
        inputs = [a for a in n.all_input_nodes if a in live]
        entry = FAMILY_RULES.get(n.target)
        # positions of the differentiated arguments, with repeats (``t * t``)
        positions = [i for i, a in enumerate(n.args) if isinstance(a, fx.Node) and a in live]
        if n in need or entry is None or entry.reads_lower_coefficients(positions):
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


def shared_rows(rows, x: torch.Tensor, batch_axis: int | None) -> torch.Tensor:
    """Flat directions ``(N, D)`` (NumPy, or a tensor) as ``(N, *x.shape)``, the
    same in every sample."""
    t = torch.as_tensor(rows, dtype=x.dtype, device=x.device)
    if batch_axis is None:
        return t.reshape((t.shape[0],) + tuple(x.shape))
    b = batch_axis % x.ndim
    sample = tuple(x.shape[:b]) + tuple(x.shape[b + 1:])
    return t.reshape((t.shape[0],) + sample).unsqueeze(1 + b).expand(
        (t.shape[0],) + tuple(x.shape))


def _top_of(j: _Jet) -> torch.Tensor:
    return torch.zeros_like(j.p) if j.l is None else j.l.expand_as(j.p)


def _rows_of(j: _Jet, rows: tuple) -> torch.Tensor:
    """Rows ``rows`` of ``j``'s stack (zeros past it), shaped ``(len(rows), *p)``."""
    stack = _padded(j.c, max(rows) + 1, j.p)
    index = torch.as_tensor(rows, device=stack.device)
    return stack[index].expand((len(rows),) + tuple(j.p.shape))


def _lift(g: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """Stacked coefficients of a value of rank < ``ndim``: singleton axes after the
    direction axis, so that they broadcast like the value itself."""
    if g is None or g.ndim - 1 >= ndim:
        return g
    return g.reshape((g.shape[0],) + (1,) * (ndim - g.ndim + 1) + tuple(g.shape[1:]))


def _plus(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of two stacks (prefixes of the rows, of any lengths)."""
    if x is None:
        return y
    if y is None:
        return x
    if x.shape[0] == y.shape[0]:
        return x + y
    if x.shape[0] < y.shape[0]:
        x, y = y, x
    head = x[:y.shape[0]] + y
    tail = x[y.shape[0]:]
    return torch.cat([head, tail.expand((tail.shape[0],) + tuple(head.shape[1:]))])


def _padded(c: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A stack extended with zero rows to ``rows`` rows."""
    if c is None:
        return torch.zeros((rows,) + tuple(like.shape), dtype=like.dtype, device=like.device)
    if c.shape[0] == rows:
        return c
    pad = torch.zeros((rows - c.shape[0],) + tuple(c.shape[1:]), dtype=c.dtype,
                      device=c.device)
    return torch.cat([c, pad])


def _primal(a, env):
    if isinstance(a, fx.Node):
        return env[a].p
    if isinstance(a, (list, tuple)):
        return [_primal(x, env) for x in a]
    return a


def _apply(ctx: _Ctx, node: fx.Node, env: dict, want_c: bool) -> _Jet:
    entry = FAMILY_RULES.get(node.target)
    if entry is not None and entry.sequence:  # cat / stack: a list of values first
        return entry.rule(ctx, node, env, want_c)
    J = lambda a: env[a] if isinstance(a, fx.Node) else _Jet(_primal(a, env))  # noqa: E731
    jets = [J(a) for a in node.args]
    primals = [j.p for j in jets]
    kw = {k: _primal(v, env) for k, v in node.kwargs.items()}
    out = node.target(*primals, **kw)
    if isinstance(out, torch.Tensor) and not out.is_floating_point():
        return _Jet(out)  # comparisons, indices: no derivative
    if node.target in CONSTANT_OPS or all(j.const for j in jets) and not any(
            isinstance(v, fx.Node) and not env[v].const for v in node.kwargs.values()):
        return _Jet(out)
    rule = None if entry is None else entry.rule
    if rule is None or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        rule = _generic
    jet = rule(ctx, node.target, jets, out, kw, want_c)
    if not want_c:
        jet.c = None  # rules may compute it anyway when it is free
    return jet


# -- rules ---------------------------------------------------------------------------
def _linear_first(ctx, target, jets, out, kw, want_c) -> _Jet:
    """Linear in the first argument, the others constant (views, reductions, ...):
    every row is mapped by the same op (vmapped: dims are handled by vmap)."""
    a, rest = jets[0], [j.p for j in jets[1:]]
    if any(not j.const for j in jets[1:]):
        return _generic(ctx, target, jets, out, kw, want_c)
    op = lambda v: target(v, *rest, **kw)  # noqa: E731
    c = None if a.c is None or not want_c else torch.func.vmap(op)(a.c)
    return _Jet(out, c, None if a.l is None else op(a.l))


def _view(ctx, target, jets, out, kw, want_c) -> _Jet:
    """view / reshape / expand to a given size: the stacked axis goes first."""
    a, size = jets[0], list(jets[1].p)
    # coefficients need not have the value's strides (a view of the value may not
    # be one of them): reshape, which copies only when it must
    fn = torch.Tensor.expand if target == aten.expand.default else torch.Tensor.reshape
    top = None if a.l is None else fn(a.l, size)
    if a.c is None or not want_c:
        return _Jet(out, None, top)
    return _Jet(out, fn(a.c, [a.c.shape[0]] + size), top)


def _sum_like(sign: float):
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        """add / sub (alpha scales the second term)."""
        a, b = jets[0], jets[1]
        alpha = sign * kw.get("alpha", 1)
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        c = _plus(_lift(a.c, nd), None if b.c is None else alpha * _lift(b.c, nd))
        l = _add(a.l, None if b.l is None else alpha * b.l)
        return _Jet(out, c, l)
    return rule


def _bilinear(product: Callable, linear_a: Callable, linear_b: Callable):
    """A rule for an op bilinear in its two arguments (``product(a, b)``), with
    ``linear_a(stack, b)`` / ``linear_b(a, stack)`` mapping a whole stack through
    one factor (one batched op). ``D^2 (ab)[u, v] = u_a v_b + v_a u_b`` and no
    higher term: the two-block entries of the tables (NOTE [stacked rules])."""
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        a, b = jets[0], jets[1]
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        c = None
        if want_c:
            c = _plus(None if a.c is None else linear_a(_lift(a.c, nd), b.p),
                      None if b.c is None else linear_b(a.p, _lift(b.c, nd)))
        l = _add(None if a.l is None else product(a.l, b.p),
                 None if b.l is None else product(a.p, b.l))
        if (a.c is not None and b.c is not None and ctx.contracted is not None
                and product in (torch.mul, torch.matmul)):  # NOTE [contracted Bi-Laplacian]
            cross, top = _contracted.bilinear(
                ctx.contracted, product, _lift(ctx.whole_levels(a.c, a.p), nd),
                _lift(ctx.whole_levels(b.c, b.p), nd), want_c)
            return _Jet(out, _plus(c, cross), _add(l, top))
        if a.c is not None and b.c is not None:
            rows = max(a.rows, b.rows)
            A, B = _lift(_padded(a.c, rows, a.p), nd), _lift(_padded(b.c, rows, b.p), nd)

            def pairs(i, j):
                u = product(_gather(A, i), _gather(B, j))
                if A is B and i is j:  # a square (x * x): both orders are the same
                    return 2 * u
                return u + product(_gather(A, j), _gather(B, i))

            for m, cols, _, weight in ctx.tables("top", rows):
                if m == 2:  # a bilinear op has no higher derivative
                    l = _add(l, _wsum(weight, pairs(*cols)))
            if want_c:
                acc = _Rows(ctx, c)
                for m, cols, target_, weight in ctx.tables("rows", rows):
                    if m == 2:
                        acc.add(target_, weight, pairs(*cols))
                c = acc.stack()
        return _Jet(out, c, l)
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


def _mv_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mv`` with leading (stacked) axes on either factor."""
    return torch.matmul(a, b.unsqueeze(-1)).squeeze(-1)


def _mv_stack(a: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """``mv(a, row)`` for every row of a stack: one matrix product ``stack @ a^T``."""
    return torch.matmul(stack, a.T) if a.ndim == 2 else _mv_product(a, stack)


_mv = _bilinear(_mv_product, torch.matmul, _mv_stack)


def _compact(t: torch.Tensor, keep_last: int = 0) -> torch.Tensor:
    """``t`` with its repeated (stride-0) axes cut to length 1, except the first
    (rows) and the last ``keep_last``; ``t`` itself if it has none."""
    index, cut = [slice(None)] * t.ndim, False
    for d in range(1, t.ndim - keep_last):
        if t.stride(d) == 0 and t.shape[d] > 1:
            index[d], cut = slice(0, 1), True
    return t[tuple(index)] if cut else t


# NOTE [picked seeds] (PyTorch): a coordinate-sampling estimator's seeds are
# ``scale * e_i`` at the drawn coordinates (NOTE [coordinate sampling] in
# _estimators.py). Where the input ``(batch, n)`` enters a matrix product ``x @ w``
# (``nn.Linear``: ``addmm``), row ``g`` of the product's stack is ``scale *
# w[i_g]``, shared by every sample: a gather of ``S`` rows of ``w`` instead of an
# ``S x n`` one-hot times ``n x width`` product, so the first layer's tangent work
# does not grow with ``n``. Every other use of the input reads the dense seeds.
def _picked_mm(a: _Jet, b: _Jet, out: torch.Tensor, want_c: bool) -> _Jet | None:
    if a.k is None or not b.const or b.p.ndim != 2 or a.c is None:
        return None
    index, scale = a.k
    rows = b.p[index.to(b.p.device)] * scale  # (S, width)
    c = rows.unsqueeze(1).expand((rows.shape[0],) + tuple(out.shape)) if want_c else None
    return _Jet(out, c, None if a.l is None else a.l @ b.p)


def _mm(ctx, target, jets, out, kw, want_c) -> _Jet:
    picked = _picked_mm(jets[0], jets[1], out, want_c)
    return picked if picked is not None else _matmul(ctx, target, jets, out, kw, want_c)


def _addmm(ctx, target, jets, out, kw, want_c) -> _Jet:
    """``beta * bias + alpha * (a @ b)``."""
    bias, prod = jets[0], _mm(ctx, aten.mm.default, jets[1:3], out, {}, want_c)
    beta, alpha = kw.get("beta", 1), kw.get("alpha", 1)
    nd = out.ndim
    c = _plus(None if bias.c is None else _times(beta, _lift(bias.c, nd)),
              None if prod.c is None else _times(alpha, prod.c))
    l = _add(None if bias.l is None else _times(beta, bias.l),
             None if prod.l is None else _times(alpha, prod.l))
    return _Jet(out, c, l)


def _times(c, t: torch.Tensor) -> torch.Tensor:
    """``c * t``, without a full-size multiply for the usual ``c == 1`` (nn.Linear)."""
    return t if c == 1 else c * t


# NOTE [elementwise derivatives]: a unary elementwise op is given by
# ``derivatives(x, y, m)``: its first ``m`` derivatives at the input ``x`` (``y`` is
# the op's output), as a list. ``D^m phi[u_1..u_m] = phi^(m) * prod u_i``, and
# ``phi^(m)`` is the same for every row, so each block count ``m`` costs one
# gathered product and one multiply by ``phi^(m)``.
def _elementwise(derivatives: Callable):
    def rule(ctx, target, jets, out, kw, want_c) -> _Jet:
        a = jets[0]
        if any(not j.const for j in jets[1:]):
            return _generic(ctx, target, jets, out, kw, want_c)
        return _unary_stack(ctx, a, out, derivatives(a.p, out, ctx.layout.order), want_c)
    return rule


def _unary_stack(ctx: _Ctx, a: _Jet, out: torch.Tensor, d: list, want_c: bool) -> _Jet:
    """``phi(a)`` given ``d = [phi'(a), ..., phi^(m)(a)]`` (entries: tensors, floats or
    None for zero; ``m`` at least the layout's order)."""
    rows = a.rows
    if rows and ctx.contracted is not None:  # NOTE [contracted Bi-Laplacian]
        nd = out.ndim if isinstance(out, torch.Tensor) else 0
        full = [0.0 if v is None else v for v in d[:4]]
        c, l = _contracted.unary(ctx.contracted, _lift(ctx.whole_levels(a.c, a.p), nd),
                                 a.l, full, want_c)
        return _Jet(out, c, l)
    top_tables = ctx.tables("top", rows) if rows else []
    row_tables = ctx.tables("rows", rows) if rows and want_c else []
    c = None if a.c is None or not want_c else U.mul(d[0], a.c)
    l = None if a.l is None else U.mul(d[0], a.l)
    if not rows:
        return _Jet(out, c, l)

    def product(cols):
        if len(cols) == 2 and cols[0] is cols[1]:  # a square: once, on compact rows
            v = _compact(_gather(a.c, cols[0]))
            return v * v
        u = _gather(a.c, cols[0])
        for col in cols[1:]:
            u = u * _gather(a.c, col)
        return u

    for m, cols, _, weight in top_tables:
        if d[m - 1] is not None:
            l = _add(l, U.mul(d[m - 1], _wsum(weight, product(cols))))
    if row_tables:
        acc = _Rows(ctx, c)
        for m, cols, target_, weight in row_tables:
            if d[m - 1] is not None:
                acc.add(target_, weight, product(cols), scale=d[m - 1])
        c = acc.stack()
    if c is not None and tuple(c.shape[1:]) != tuple(out.shape):  # phi' was a float
        c = c.expand((c.shape[0],) + tuple(out.shape))
    return _Jet(out, c, l)


def _poly_in_output(name: str):
    """Derivatives of an op whose ``phi'`` is a polynomial in its output ``y``
    (``core._formulas``: tanh ``1 - y^2``, sigmoid ``y - y^2``), each evaluated at
    ``y`` by Horner's rule."""
    first = _formulas.OUTPUT_POLYNOMIALS[name]

    def derivatives(x, y, m):
        return [_formulas.horner(p, y, constant=lambda c, like: torch.full_like(like, c))
                for p in _formulas.derivative_polynomials(first, m)]
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
        return _Jet(out, jets[0].c, jets[0].l)

    def derivatives(x, y, m):
        res, coef = [], 1.0
        for k in range(1, m + 1):
            coef *= p - k + 1
            res.append(coef * x ** (p - k) if coef != 0 else torch.zeros_like(x))
        return res
    return _elementwise(derivatives)(ctx, target, jets, out, kw, want_c)


def _generic(ctx, target, jets, out, kw, want_c=True) -> _Jet:
    """Any op, by ``torch.func``: ``D phi`` is a ``jvp`` (vmapped over the rows),
    ``D^m phi[u_1..u_m]`` is ``m`` nested ``jvp``s (vmapped over a table's entries);
    the top adds the ``jvp`` along the inputs' collapsed coefficients."""
    live = [i for i, j in enumerate(jets) if not j.const]
    primals = tuple(jets[i].p for i in live)

    def fn(*xs):
        full = [j.p for j in jets]
        for i, x in zip(live, xs):
            full[i] = x
        return target(*full, **kw)

    def zeros_or(v, j):
        return torch.zeros_like(j.p) if v is None else v

    c = l = None
    rows = max(jets[i].rows for i in live)
    if rows:
        stacks = [_padded(jets[i].c, rows, jets[i].p).expand((rows,) + tuple(jets[i].p.shape))
                  for i in live]
        if want_c:
            c = torch.func.vmap(lambda *us: torch.func.jvp(fn, primals, us)[1])(*stacks)
        acc = _Rows(ctx, c) if want_c else None
        for kind in ("top", "rows") if want_c else ("top",):
            for m, cols, target_, weight in ctx.tables(kind, rows):
                blocks = [[_gather(st, col) for st in stacks] for col in cols]
                u = torch.func.vmap(lambda *flat, m=m: _nested_jvp(fn, primals, flat, m))(
                    *[t for block in blocks for t in block])
                if kind == "top":
                    l = _add(l, _wsum(weight, u))
                else:
                    acc.add(target_, weight, u)
        if want_c:
            c = acc.stack()
    if any(jets[i].l is not None for i in live):
        l = _add(l, torch.func.jvp(fn, primals, tuple(zeros_or(jets[i].l, jets[i])
                                                      for i in live))[1])
    return _Jet(out, c, l)


def _nested_jvp(fn: Callable, primals: tuple, flat: tuple, m: int):
    """``D^m fn(primals)[u_1, ..., u_m]``; ``flat`` holds the ``m`` tangent tuples
    (one tangent per primal) one after the other."""
    k = len(primals)
    tangents = [tuple(flat[i * k:(i + 1) * k]) for i in range(m)]
    g = fn
    for u in tangents[:-1]:
        g = _directional(g, u)
    return torch.func.jvp(g, primals, tangents[-1])[1]


def _directional(g: Callable, u: tuple) -> Callable:
    return lambda *xs: torch.func.jvp(g, xs, u)[1]


def _join(ctx, node: fx.Node, env: dict, want_c: bool) -> _Jet:
    """cat / stack along ``dim``: linear; zeros stand in for constant parts."""
    parts = [env[a] if isinstance(a, fx.Node) else _Jet(a) for a in node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = node.target([j.p for j in parts], dim)
    d = dim % out.ndim  # in the output's rank: stack adds an axis
    rows = max(j.rows for j in parts)

    def joined(coefficient, lead: tuple):
        vals = [coefficient(j) for j in parts]
        if all(v is None for v in vals):
            return None
        like = next(v for v in vals if v is not None)
        vals = [torch.zeros(lead + tuple(j.p.shape), dtype=like.dtype, device=like.device)
                if v is None else v.expand(lead + tuple(j.p.shape)) for v, j in zip(vals, parts)]
        return node.target(vals, d + len(lead))

    def stack(j):  # at the common number of rows
        return None if j.c is None else _padded(j.c, rows, j.p)

    c = joined(stack, (rows,)) if want_c and rows else None
    return _Jet(out, c, joined(lambda j: j.l, ()))


def _copy(ctx, target, jets, out, kw, want_c) -> _Jet:
    """``copy(dest, src)`` (a functionalized ``dest.copy_(src)``, left by decompositions
    such as circular padding): ``src`` converted and broadcast to ``dest``; dest's
    values are overwritten, so only ``src`` has a derivative."""
    src = jets[1]

    def fit(v, lead: tuple):
        return v.to(out.dtype).expand(lead + tuple(out.shape))

    c = None if src.c is None or not want_c else fit(_lift(src.c, out.ndim), (src.rows,))
    return _Jet(out, c, None if src.l is None else fit(src.l, ()))


def _scatter_into(ctx, target, jets, out, kw, want_c) -> _Jet:
    """``slice_scatter`` / ``select_scatter(base, src, dim, ...)``: jointly linear in
    both, every coefficient scattered the same way (one axis further for stacks)."""
    base, src = jets[0], jets[1]
    rest = [j.p for j in jets[2:]]
    dim = (rest[0] if rest else kw.get("dim", 0)) % out.ndim
    more = rest[1:]

    def scatter(b, v, lead: int):
        return target(b, v, dim + lead, *more, **{k: w for k, w in kw.items() if k != "dim"})

    c = None
    rows = max(base.rows, src.rows)
    if want_c and rows:
        B = _padded(base.c, rows, base.p).expand((rows,) + tuple(base.p.shape))
        S = _padded(src.c, rows, src.p).expand((rows,) + tuple(src.p.shape))
        c = scatter(B, S, 1)
    l = None
    if base.l is not None or src.l is not None:
        l = scatter(torch.zeros_like(base.p) if base.l is None else base.l.expand_as(base.p),
                    torch.zeros_like(src.p) if src.l is None else src.l.expand_as(src.p), 0)
    return _Jet(out, c, l)


def _as_strided(ctx, target, jets, out, kw, want_c) -> _Jet:
    """NOTE [as_strided] (``_rules``): every coefficient gathered at the logical
    positions of the input that the output reads."""
    from ._rules import strided_positions

    a = jets[0]
    size, stride = list(jets[1].p), list(jets[2].p)
    offset = jets[3].p if len(jets) > 3 else kw.get("storage_offset")
    idx = strided_positions(a.p, size, stride, offset).to(a.p.device)
    c = None if a.c is None or not want_c else a.c.reshape(a.c.shape[0], -1)[:, idx]
    return _Jet(out, c, None if a.l is None else a.l.reshape(-1)[idx])


def _div(ctx, target, jets, out, kw, want_c) -> _Jet:
    """``a / b``: linear in ``a`` for a constant ``b``; otherwise ``a * (1 / b)``, the
    reciprocal by the elementwise rule (NOTE [elementwise derivatives])."""
    a, b = jets[0], jets[1]
    if b.const or kw.get("rounding_mode") is not None:
        return _linear_first(ctx, target, jets, out, kw, want_c)
    inv_p = 1 / b.p
    d, power = [], inv_p
    for k in range(1, ctx.layout.order + 1):  # (1/x)^(k) = (-1)^k k! x^-(k+1)
        power = power * inv_p
        d.append(((-1) ** k * math.factorial(k)) * power)
    inv = _unary_stack(ctx, b, inv_p, d, True)
    return _mul(ctx, aten.mul.Tensor, [a, inv], out, {}, want_c)


def _var(ctx, target, jets, out, kw, want_c) -> _Jet:
    """Variance over ``dim``: the mean of squared deviations, rescaled for the
    correction, from the linear, sum and elementwise rules."""
    a = jets[0]
    x = a.p
    dims = jets[1].p if len(jets) > 1 else None
    dims = list(range(x.ndim)) if dims is None or (not dims and x.ndim) else [
        d % max(x.ndim, 1) for d in dims]
    correction = kw.get("correction")
    correction = 1.0 if correction is None else float(correction)
    count = math.prod(x.shape[d] for d in dims) if dims else 1
    mean_p = x.mean(dims, keepdim=True)
    mean = _linear_first(ctx, aten.mean.dim, [a, _Jet(dims), _Jet(True)], mean_p, {}, True)
    dev = _sum_like(-1.0)(ctx, aten.sub.Tensor, [a, mean], x - mean_p, {}, True)
    sq = _unary_stack(ctx, dev, dev.p * dev.p, [2 * dev.p, 2.0] + [None] * (
        ctx.layout.order - 2), True)
    keepdim = bool(kw.get("keepdim", False))
    total = _linear_first(ctx, aten.sum.dim_IntList, [sq, _Jet(dims), _Jet(keepdim)],
                          sq.p.sum(dims, keepdim=keepdim), {}, want_c)
    scale = 1.0 / (count - correction) if count > correction else float("nan")
    return _Jet(out, None if total.c is None else scale * total.c,
                None if total.l is None else scale * total.l)


def _extreme(ctx, target, jets, out, kw, want_c) -> _Jet:
    """amax / amin over ``dim``: piecewise linear, the extreme entries' coefficients,
    shared evenly between ties (as PyTorch's own backward and the jet rule)."""
    a = jets[0]
    x = a.p
    dims = [d % max(x.ndim, 1) for d in (jets[1].p if len(jets) > 1 else [])]
    keepdim = bool(jets[2].p) if len(jets) > 2 else False
    if not dims:
        dims = list(range(x.ndim))
    hit = (x == target(x, dims, True)).to(x.dtype)
    weight = hit / hit.sum(dims, keepdim=True)

    def pick(v):
        return (v * weight).sum([d + v.ndim - x.ndim for d in dims], keepdim=keepdim)

    c = None if a.c is None or not want_c else pick(_lift(a.c, x.ndim))
    return _Jet(out, c, None if a.l is None else pick(a.l))


# -- the registry (``_registry.FAMILY_RULES``) -------------------------------------------
# ``linear`` decides whose lower coefficients a program keeps (``_lower_readers``):
# "joint" ops read none, "each" ops none with one differentiated argument (counted
# with repeats: ``t * t`` is a square), "first" ops none when only the first is.
deffamily(aten.cat.default, aten.stack.default, linear="joint", sequence=True)(_join)
deffamily(aten.add.Tensor, linear="joint")(_sum_like(1.0))
deffamily(aten.sub.Tensor, linear="joint")(_sum_like(-1.0))
deffamily(aten.view.default, aten._unsafe_view.default, aten.reshape.default,
          aten.expand.default, linear="joint")(_view)
deffamily(aten.neg.default, aten.clone.default, aten.select.int, aten.slice.Tensor,
          aten.t.default, aten.transpose.int, aten.permute.default, aten.unsqueeze.default,
          aten.squeeze.dim, aten.squeeze.dims, aten.sum.dim_IntList, aten.sum.default,
          aten.mean.dim, linear="joint")(_linear_first)
deffamily(aten.as_strided.default, linear="joint")(_as_strided)
deffamily(aten.copy.default, linear="joint")(_copy)
deffamily(aten.slice_scatter.default, aten.select_scatter.default,
          linear="joint")(_scatter_into)
deffamily(aten.div.Tensor, linear="first")(_div)
deffamily(aten.var.correction)(_var)
deffamily(aten.amax.default, aten.amin.default, linear="joint")(_extreme)
deffamily(aten.mul.Tensor, linear="each")(_mul)
deffamily(aten.bmm.default, aten.matmul.default, linear="each")(_matmul)
deffamily(aten.mm.default, linear="each")(_mm)
deffamily(aten.addmm.default, linear="each")(_addmm)
deffamily(aten.mv.default, linear="each")(_mv)
deffamily(aten.tanh.default)(_elementwise(_poly_in_output("tanh")))
deffamily(aten.sigmoid.default)(_elementwise(_poly_in_output("sigmoid")))
deffamily(aten.sin.default)(_elementwise(_pointwise.cyclic(torch.cos, 1.0)))
deffamily(aten.cos.default)(_elementwise(_pointwise.cyclic(torch.sin, -1.0)))
deffamily(aten.exp.default)(_elementwise(_exp_derivatives))
deffamily(aten.log.default)(_elementwise(_log_derivatives))
deffamily(aten.pow.Tensor_Scalar)(_pow_scalar)


class CompiledProgram:
    """A family program under ``torch.compile``: the interpretation traced once per
    signature to one ATen graph (``make_fx``; lifted tensors stay inputs, so they
    are read live), which Inductor compiles."""

    def __init__(self, program: FamilyProgram):
        self.program, self.valid = program, program.valid
        self.graphs: dict = {}

    def __call__(self, args: tuple, kwargs: dict, seeds: Seeds | None = None):
        p = self.program
        tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs))
                   if isinstance(leaf, torch.Tensor)] + list(p.lifted)
        if seeds is None:
            seeds = p.laplacian_seeds(tensors[p.selected])
        given = [seeds.seeds] + ([] if seeds.top is None else [seeds.top])
        # The trace takes Python branches on which axes repeat (stride 0, ``_compact``),
        # so those are part of the key as much as shapes: an expanded seed traced once
        # must not serve a dense one of the same shape.
        key = (id(seeds.layout), seeds.layout.contracted is not None, seeds.top is not None,
               tuple((tuple(t.shape), t.dtype, t.device,
                      tuple(d for d, st in enumerate(t.stride()) if st == 0 and t.shape[d] > 1))
                     for t in tensors + given))
        hit = self.graphs.get(key)
        if hit is None or hit[0] is not seeds.layout:
            with _ledger.phase("torch.compile"):  # compiles on its first run
                # traced as a replay is (NOTE [replay]): fake stand-ins, no autograd
                graph = _replay.trace(p, seeds.layout, tensors, given, Seeds)
                compiled = torch.compile(graph, fullgraph=True, dynamic=False)
                out = compiled(*tensors, *p.replays.constants.values(), *given)
            self.graphs[key] = (seeds.layout, compiled)
        else:
            out = hit[1](*tensors, *p.replays.constants.values(), *given)
        return pytree.tree_unflatten(list(out), p.out_spec)


def compiled(program: FamilyProgram) -> CompiledProgram:
    return CompiledProgram(program)
