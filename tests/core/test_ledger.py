"""NOTE [first-call ledger]: an operator's first call, by phase, in ``explain``."""

from __future__ import annotations

import re
import threading
import time

import jax.numpy as jnp
import pytest
import torch

import derivs
from derivs.core import _ledger


def test_records_the_first_call_and_its_phases_only():
    ledger = _ledger.Ledger()
    assert ledger.note() is None

    def work(t):
        with _ledger.phase("capture"):
            time.sleep(t)
        return "out"

    assert ledger.call(lambda: work(0.02)) == "out"
    first, phases = ledger.seconds, dict(ledger.phases)
    assert first >= 0.02 and phases["capture"] >= 0.02 and phases["capture"] <= first
    ledger.call(lambda: work(0.0))  # a later call changes nothing
    assert ledger.seconds == first and ledger.phases == phases
    with _ledger.phase("capture"):  # outside any call: not recorded
        pass
    assert ledger.phases == phases
    assert "first call:" in ledger.note() and "capture" in ledger.note()


def test_a_failed_first_call_leaves_the_ledger_to_the_next():
    ledger = _ledger.Ledger()

    def fail():
        with _ledger.phase("capture"):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ledger.call(fail)
    assert ledger.note() is None and ledger.phases == {}
    ledger.call(lambda: None)
    assert ledger.note() is not None


def test_an_inner_operator_adds_to_the_outer_call():
    outer, inner = _ledger.Ledger(), _ledger.Ledger()

    def inner_work():
        with _ledger.phase("trace"):
            time.sleep(0.01)

    outer.call(lambda: inner.call(inner_work))
    assert outer.phases["trace"] >= 0.01 and inner.note() is None


def test_threads_record_once():
    ledger = _ledger.Ledger()
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        with _ledger.phase("capture"):
            time.sleep(0.05)

    threads = [threading.Thread(target=ledger.call, args=(work,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one thread's first call, not four threads' phases added up (0.2 s)
    assert 0.05 <= ledger.phases["capture"] < 0.15


def test_explain_tells_what_the_first_call_spent():
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(3, 5)
    for op in (derivs.laplacian(net, batch_axis=0), derivs.bilaplacian(net, batch_axis=0)):
        assert not any("first call" in n for n in derivs.explain(op, x).notes)
    op = derivs.laplacian(net, batch_axis=0)
    op(x)
    note = [n for n in derivs.explain(op, x).notes if n.startswith("first call")]
    assert len(note) == 1 and "capture" in note[0] and "batch proof" in note[0]
    jop = derivs.hessian_diagonal(lambda z: jnp.sum(jnp.tanh(z) ** 2), batch_axis=None)
    jop(jnp.ones(6))
    note = [n for n in derivs.explain(jop, jnp.ones(6)).notes if n.startswith("first call")]
    assert len(note) == 1 and "trace" in note[0]


def test_pytorch_s_one_time_import_is_not_blamed_on_the_capture():
    """make_fx imports torch._inductor (and TorchDynamo) on its first use, about a
    second once per process: a fresh process's first capture shows it apart."""
    import subprocess
    import sys

    code = (
        "import re, torch, derivs\n"
        "net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))\n"
        "op = derivs.laplacian(net, batch_axis=0)\n"
        "x = torch.randn(3, 5)\n"
        "op(x)\n"
        "note = [n for n in derivs.explain(op, x).notes if n.startswith('first call')][0]\n"
        "print(note)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    imported = re.search(r"import of torch._inductor by make_fx (\d+\.\d+) s", out)
    captured = re.search(r"capture (\d+\.\d+) s", out)
    assert imported and captured, out
    assert float(captured.group(1)) < float(imported.group(1)), out
