"""Attacks from other threads while derivs captures (NOTE [stand-ins] in
``torch_engine/_capture.py``): the user's own eager calls of the same module must
keep working and give their values, and derivs' results must stay exact.

Before the capture stood tensors in through a thread-local mode, it swapped fake
tensors into the user's module for the length of a trace, and eager calls from
another thread failed (``fake_mode.in_kernel_invocation must be False``) or read
the stand-ins."""

from __future__ import annotations

import threading
import time

import torch
import torch.nn as nn

import derivs

from ._threads import run_in_threads


def _hessian_trace(f, x):
    H = torch.vmap(torch.func.hessian(lambda z: f(z[None])[0]))(x)
    return H.diagonal(dim1=-2, dim2=-1).sum(-1)


def test_eager_calls_of_a_module_derivs_is_capturing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.LayerNorm(16),
                          nn.Linear(16, 1)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        want_eager = model(x)
    errors, wrong, stop = [], [], threading.Event()

    def eager():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    got = model(x)
                if not torch.equal(got, want_eager):
                    wrong.append(got)
            except Exception as e:  # noqa: BLE001 - the attack's outcome
                errors.append(repr(e)[:200])

    def u(z):
        return model(z).sum(-1)

    thread = threading.Thread(target=eager)
    thread.start()
    try:
        results = []
        for _ in range(8):  # a fresh transform each time: a fresh capture each time
            results.append(derivs.laplacian(u, batch_axis=0)(x))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert not wrong
    want = _hessian_trace(u, x)
    for r in results:
        torch.testing.assert_close(r, want)


def test_captures_in_several_threads_at_once():
    """Threads capturing the same module (one capture at a time, BUILD_LOCK) and
    running cached graphs concurrently, each with its own data."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 1)).double()

    def u(z):
        return model(z).sum(-1)

    xs = [torch.randn(5 + k, 2, dtype=torch.float64) for k in range(4)]
    wants = [_hessian_trace(u, x) for x in xs]

    def work(k):
        lap = derivs.laplacian(u, batch_axis=0)
        for _ in range(5):
            torch.testing.assert_close(lap(xs[k]), wants[k])

    run_in_threads(work, 4)


def test_capture_leaves_the_module_untouched():
    """What f reads is never replaced in the user's objects, not even for the
    length of a trace: a thread watching the module sees its own parameters."""
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    own = [model[0].weight, model[0].bias, model[2].weight, model[2].bias]
    x = torch.randn(4, 3, dtype=torch.float64)
    replaced, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            now = [model[0].weight, model[0].bias, model[2].weight, model[2].bias]
            if any(a is not b for a, b in zip(now, own)):
                replaced.append(now)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        for _ in range(4):
            lap = derivs.laplacian(lambda z: model(z).sum(-1), batch_axis=0)
            lap(x)
    finally:
        stop.set()
        thread.join()
    assert "lifted to inputs" in str(lap.explain(x))  # the capture ran, not a fallback
    assert not replaced


SCALE = 1.0


def test_state_changed_by_another_thread_during_the_trace(monkeypatch):
    """NOTE [one state per capture]: another thread rebinds a global f reads while
    derivs traces f (after f read it). The graph must be traced from one state: the
    capture is retried, and the result is the new state's, from a graph (a fallback
    would evaluate f once per coordinate, each reading whichever value is current).
    The first trace of f (its argument a fake tensor) lingers after reading the
    global, and the writer changes it meanwhile."""
    from torch._subclasses.fake_tensor import is_fake

    from derivs.backends.torch_engine import _capture

    global SCALE
    SCALE = 1.0

    def f(x):
        out = SCALE * x ** 3
        if SCALE == 1.0 and is_fake(x):
            time.sleep(2.0)
        return out.sum(-1)

    def writer():
        global SCALE
        time.sleep(0.5)
        SCALE = 3.0

    traces = []
    trace = _capture._capture

    def spy(*args, **kwargs):
        try:
            traces.append(trace(*args, **kwargs))
        except BaseException as e:
            traces.append(e)
            raise
        return traces[-1]

    monkeypatch.setattr(_capture, "_capture", spy)
    thread = threading.Thread(target=writer)
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    lap = derivs.laplacian(f, batch_axis=0)
    thread.start()
    got = lap(x)
    thread.join()
    torch.testing.assert_close(got, (3.0 * 6 * x).sum(-1))
    # the raced trace, then the new state's (not a fallback)
    names = [type(t).__name__ for t in traces]
    assert names[0] == "_Raced" and "Capture" in names and "Unliftable" not in names, names
