"""What an operator's first call spent, by phase, for ``explain``.

NOTE [first-call ledger]: the first call of an operator pays for work that later
calls reuse while the argument signature and f's state hold: the batch-axis proof,
the capture (PyTorch: f traced to an ATen graph) or trace (JAX: a jaxpr), the
build of the derivative program, and ``torch.compile``. Users who see a slow first
call need to know which. The operator's call records its first call's wall time in
its :class:`Ledger`; the code of each phase wraps itself in :func:`phase`, which
adds to the ledger of the call in progress (a context variable, so that threads
fill their own) and costs one lookup when none is. An operator called inside
another's first call (derivs' own per-sample operator under ``batch_axis``, or a
user's operator inside f) adds to the outer ledger: that is where the time went.
Phases can nest (a batch proof may capture f): each is timed whole, so they are
reported as parts, not as a sum. Under ``jax.jit`` the first call is a trace, and
XLA compiles after it returns: that time is not the operator's to see.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_CURRENT: contextvars.ContextVar["Ledger | None"] = contextvars.ContextVar(
    "derivs_first_call_ledger", default=None)


class Ledger:
    """The first call's wall time and its phases (seconds, in the order first seen)."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.phases: dict[str, float] = {}
        self._claimed = False
        self._lock = threading.Lock()

    def call(self, run: Callable[[], Any]) -> Any:
        """``run()``, recorded if it is the first call (one thread records; a call
        that fails leaves the ledger for the next one)."""
        if _CURRENT.get() is not None:  # inside another first call: that one records
            return run()
        with self._lock:
            first = not self._claimed
            self._claimed = True
        if not first:
            return run()
        token = _CURRENT.set(self)
        t0 = time.perf_counter()
        try:
            out = run()
        except BaseException:
            with self._lock:
                self._claimed, self.phases = False, {}
            raise
        finally:
            _CURRENT.reset(token)
        self.seconds = time.perf_counter() - t0
        return out

    def note(self) -> str | None:
        """One line for ``explain``, or None before the first call."""
        if self.seconds is None:
            return None
        parts = ", ".join(f"{name} {s:.2f} s" for name, s in self.phases.items())
        return (f"first call: {self.seconds:.2f} s"
                + (f", including {parts}" if parts else "")
                + " (later calls with the same argument signature reuse that work)")


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Times the enclosed work as ``name`` in the first call in progress, if any."""
    ledger = _CURRENT.get()
    if ledger is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        ledger.phases[name] = ledger.phases.get(name, 0.0) + time.perf_counter() - t0
