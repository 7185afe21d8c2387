"""A family program's interpretation traced once per signature and replayed.

NOTE [replay]: the stacked family interpreter (``_family.FamilyProgram.run``)
decides in Python, per node and per call, which rule applies and how (tables,
fused regions, what is freed). On small networks that Python is a large part of
the call: PyTorch CPU, D = 10, width 64, tanh MLP, 256 points, the interpretation
took 1.58 ms of which the ATen ops' own dispatch and work were 1.36 ms; one point,
0.59 against 0.39 ms (GELU, SiLU, Mish, Fourier and residual networks likewise,
10-17%; a one-layer transformer 62 against 53 ms). Once a signature has been
interpreted ``REPLAY_AFTER`` times (a loop, by then), the interpretation is traced
into one ATen graph and later calls run the graph's generated code: the same ops
in the same order (bitwise the same values), and each intermediate freed after its
last use as the interpreter frees it (NOTE [last use]).

What a replay may depend on, and why it is sound:

- The trace runs with fake tensors (``make_fx(tracing_mode="fake")``): they have
  no values, so Python in the interpretation cannot have branched on one (reading
  a value raises, and the signature stays interpreted).
- Everything the interpretation can read in Python is in the key: every input
  tensor's shape, strides, storage offset, dtype, device and ``requires_grad`` (the
  arguments', the lifted state's, the seeds'), the layout object and whether a top
  coefficient is given. The program itself is kept per grad mode, inference mode
  and deterministic mode (``_capture.cache_key``), and its state guard is checked
  before it runs.
- Tensors are graph inputs, read live on every call: the arguments, the lifted
  state (a trained weight), the seeds and the capture's constants. Only tensors the
  interpretation makes itself (the layout's index tables) are graph constants.

Not replayed (interpreted, as before): inside a torch.func transform or a trace
being built around the call (the outer transform or trace then sees the
interpreter's ops), under autocast (the trace records the casts autocast inserted,
and replaying would apply it again), and with picked seeds (their indices are
Python data, NOTE [picked seeds]). ``torch_compile=True`` traces the same way into
Inductor (``_family.CompiledProgram``).

Cost: the trace takes 0.07-0.13 s for the zoo's MLPs and 0.7 s for its transformer
(make_fx through fake tensors, about 100 interpretations' worth), paid once per
signature on its ``REPLAY_AFTER + 1``-th call, never on a first call.
"""

from __future__ import annotations

import threading

import torch
import torch.fx as fx

from ...core import _ledger
from ...core._cache import LRUCache
from ._capture import BUILD_LOCK, autocast_enabled, clean_dispatch_state, inside_functorch, \
    inside_trace

# Interpretations of a signature before it is traced: a signature called this often
# is in a loop, where the trace (about 100 interpretations) pays back; one called
# once or twice never pays for it.
REPLAY_AFTER = 3


class _Entry:
    """One signature: how often it was interpreted, then its graph (or why none)."""

    __slots__ = ("layout", "count", "graph", "why")

    def __init__(self, layout):
        self.layout, self.count = layout, 0  # the layout is held: its id stays unique
        self.graph: fx.GraphModule | None = None
        self.why: str | None = None


def _signature(t: torch.Tensor) -> tuple:
    """What a trace of the interpretation may have read of a tensor in Python."""
    return (t.shape, t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad)


class Replays:
    """The traced replays of one family program, per signature (NOTE [replay])."""

    def __init__(self, program, maxsize: int = 16):
        self.program = program
        self.entries = LRUCache(maxsize)
        # the capture's tensor constants: inputs of the graph, like every tensor it reads
        self.constants = {n: v for n, v in program.literals.items()
                          if isinstance(v, torch.Tensor)}
        self._lock = threading.Lock()

    def run(self, tensors: list, seeds) -> list | None:
        """The program's flat outputs by replay, or None: interpret this call."""
        if (seeds.picks is not None or inside_functorch() or inside_trace(tensors)
                or autocast_enabled()):
            return None
        given = [seeds.seeds] if seeds.top is None else [seeds.seeds, seeds.top]
        key = (id(seeds.layout), tuple(map(_signature, tensors)),
               tuple(map(_signature, given)))
        entry = self.entries.get(key)
        if entry is None or entry.layout is not seeds.layout:
            entry = _Entry(seeds.layout)
            self.entries.put(key, entry)
        graph = entry.graph
        if graph is None:
            with self._lock:
                entry.count += 1
                if entry.why is not None or entry.count <= REPLAY_AFTER:
                    return None
            graph = self._trace(entry, tensors, given, type(seeds))
            if graph is None:
                return None
        return list(graph(*tensors, *self.constants.values(), *given))

    def _trace(self, entry: _Entry, tensors: list, given: list, Seeds: type
               ) -> fx.GraphModule | None:
        """The interpretation as an ATen graph of (tensors, constants, seeds[, top]);
        ``Seeds``: ``_family.Seeds``, which holds these replays."""
        from torch.fx.experimental.proxy_tensor import make_fx

        p, layout = self.program, entry.layout
        names = list(self.constants)
        count, n_lit = len(tensors), len(names)

        def flat(*ts):
            rest = ts[count + n_lit:]
            seeds = Seeds(layout, rest[0], rest[1] if len(rest) > 1 else None)
            constants = {**p.literals, **dict(zip(names, ts[count:count + n_lit]))}
            return p.run(list(ts[:count]), seeds, constants)

        with BUILD_LOCK:
            if entry.graph is not None or entry.why is not None:  # another thread's
                return entry.graph
            try:
                with _ledger.phase("trace for replay"), clean_dispatch_state():
                    entry.graph = make_fx(flat, tracing_mode="fake")(
                        *tensors, *self.constants.values(), *given)
            except Exception as e:  # noqa: BLE001 - interpreted for good, with the reason
                entry.why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return entry.graph

    def describe(self, picked: bool = False) -> str:
        """For ``explain``: when the program is replayed, and where it is so far."""
        if picked:
            return ("the family program is interpreted on every call: picked seeds are "
                    "not replayed (NOTE [replay])")
        entries = self.entries.values()
        done = sum(e.graph is not None for e in entries)
        failed = [e.why for e in entries if e.why is not None]
        text = (f"the family program is interpreted for an argument signature's first "
                f"{REPLAY_AFTER} calls, then traced once and replayed as straight-line ATen "
                f"code (NOTE [replay]; not inside torch.func transforms, traces or autocast); "
                f"signatures replayed so far: {done} of {len(entries)}")
        if failed:
            text += f"; interpreted for good where the trace failed ({failed[0]})"
        return text
