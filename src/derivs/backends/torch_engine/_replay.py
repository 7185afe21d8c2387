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
- It runs on fresh stand-ins of the inputs (``_capture.trace_inputs``), without
  autograd: make_fx gives one object passed twice one placeholder, so a trace of a
  call with ``x is y`` (an RBF network's centres as the points) would read y for x
  on every later call; and a trace with autograd would run the caller's
  saved-tensor hooks (activation checkpointing) on fake tensors. The graph is
  recorded below autograd either way, and a replay with grad records its own.
- What the interpretation reads in Python is in the key: every input tensor's
  shape, strides, storage offset, dtype and device (the arguments', the lifted
  state's, the seeds'), the layout object and its one switch (``contracted``, which
  a benchmark turns off on a live layout), and whether a top coefficient is given.
  The program itself is kept per grad, inference and deterministic mode
  (``_capture.cache_key``), and its state guard is checked before it runs.
- Tensors are graph inputs, read live on every call: the arguments, the lifted
  state (a trained weight), the seeds (fresh random directions) and the capture's
  constants. Only tensors the interpretation makes itself (the layout's index
  tables) are graph constants.

Not replayed (interpreted, as before): inside a torch.func transform or a trace
being built around the call (the outer transform or trace then sees the
interpreter's ops), under autocast (the trace would record the casts autocast
inserted, and replaying would apply it again), while a TorchFunctionMode or
TorchDispatchMode is active (``torch.device(...)``, a FlopCounterMode: the trace
would run through it), while autograd saves tensors through hooks (activation
checkpointing: its recomputation must save what its forward saved, and a replay
saves other tensors than the interpretation), and with picked seeds (they change
which ops the program runs, NOTE [picked seeds], and are not an input of the
trace). ``torch_compile=True`` traces the same way into Inductor
(``_family.CompiledProgram``).

Cost: the trace took 0.09-0.13 s for the zoo's MLPs, 0.3 s for its gated MLP and
0.7 s for its transformer (make_fx through fake tensors, about 100
interpretations' worth), paid once per signature on its ``REPLAY_AFTER + 1``-th
call, never on a first call.
"""

from __future__ import annotations

import threading

import torch
import torch.fx as fx

from ...core import _ledger
from ...core._cache import LRUCache
from ._capture import (BUILD_LOCK, _layout, autocast_enabled, clean_dispatch_state,
                       clear_fake_caches, inside_functorch, inside_trace, trace_inputs,
                       user_modes)

# Interpretations of a signature before it is traced: a signature called this often
# is in a loop, where the trace (about 100 interpretations) pays back; one called
# once or twice never pays for it.
REPLAY_AFTER = 3


class _Entry:
    """One signature: how often it was interpreted, then its graph (or why none)."""

    __slots__ = ("layout", "count", "graph", "why")

    def __init__(self, layout):
        # the layout is held, so no other layout takes its id while this entry lives
        self.layout, self.count = layout, 0
        self.graph: fx.GraphModule | None = None
        self.why: str | None = None


def _saving_through_hooks() -> bool:
    """Autograd saves tensors through hooks (activation checkpointing, offloading).
    A replay saves other tensors than the interpretation (``mm`` where it ran
    ``matmul``), and checkpointing's recomputation must save what its forward
    saved: a forward interpreted on a signature's last interpreted call would be
    recomputed by a replay. So under such hooks every call is interpreted."""
    if not torch.is_grad_enabled():
        return False
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except AttributeError:  # a private query; without it, assume hooks
        return True


class Replays:
    """The traced replays of one family program, per signature (NOTE [replay])."""

    def __init__(self, program, maxsize: int = 16):
        self.program = program
        self.entries = LRUCache(maxsize)
        self.constants = constants(program)
        self._lock = threading.Lock()

    def run(self, tensors: list, seeds) -> list | None:
        """The program's flat outputs by replay, or None: interpret this call."""
        if (seeds.picks is not None or inside_functorch() or inside_trace(tensors)
                or autocast_enabled() or user_modes() or _saving_through_hooks()):
            return None
        layout = seeds.layout
        given = [seeds.seeds] if seeds.top is None else [seeds.seeds, seeds.top]
        # each tensor's layout as a capture keys it (its stand-in has no autograd, so
        # requires_grad is not read)
        key = (id(layout), layout.contracted is not None, tuple(map(_layout, tensors)),
               tuple(map(_layout, given)))
        entry = self.entries.get(key)
        if entry is None:
            entry = _Entry(layout)
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

    def _trace(self, entry: _Entry, tensors: list, given: list, make_seeds: type
               ) -> fx.GraphModule | None:
        with BUILD_LOCK:
            if entry.graph is not None or entry.why is not None:  # another thread's
                return entry.graph
            try:
                with _ledger.phase("trace for replay"):
                    entry.graph = trace(self.program, entry.layout, tensors, given, make_seeds)
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


def constants(program) -> dict:
    """The capture's tensor constants: inputs of a traced program, like every tensor
    it reads."""
    return {n: v for n, v in program.literals.items() if isinstance(v, torch.Tensor)}


def trace(program, layout, tensors: list, given: list, make_seeds: type) -> fx.GraphModule:
    """``program``'s interpretation for ``layout`` as one ATen graph of (``tensors``,
    the capture's tensor :func:`constants`, the seeds[, their top coefficient]),
    traced on fake stand-ins without autograd (NOTE [replay]); raises what the trace
    raises, leaving the dispatch state and fake-tensor caches clean. ``make_seeds``:
    ``_family.Seeds`` (``_family`` holds the replays)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    mine = constants(program)
    names, count = list(mine), len(tensors)

    def flat(*ts):
        rest = ts[count + len(names):]
        seeds = make_seeds(layout, rest[0], rest[1] if len(rest) > 1 else None)
        given_constants = dict(zip(names, ts[count:count + len(names)]))
        return program.run(list(ts[:count]), seeds, {**program.literals, **given_constants})

    with BUILD_LOCK:
        try:
            with clean_dispatch_state(), torch.no_grad():
                return make_fx(flat, tracing_mode="fake")(
                    *trace_inputs([*tensors, *mine.values(), *given]))
        finally:
            clear_fake_caches()  # as after a capture: nothing leaks into the next trace
