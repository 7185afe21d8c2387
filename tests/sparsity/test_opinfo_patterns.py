"""Sparsity patterns against PyTorch's OpInfo database: the detected pattern holds
every finite nonzero of the dense Jacobian (torch.func.jacrev) at the entry's
sample points, and detection never raises. Default run: every 8th entry at its
first sample; ``-m slow``: every entry at every sample. (NaN entries of the dense oracle, e.g. entr's backward
outside its domain, are not dependencies.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import derivs

pytest.importorskip("expecttest", reason="OpInfo needs the test extras (expecttest)")

from tests.backends.torch_engine import opinfo_sweep as sweep  # noqa: E402

ENTRIES = sweep.entries()


def missed_entries(op, every_sample: bool = False) -> int | None:
    """Finite nonzeros of the dense Jacobian outside the detected pattern, at the
    first usable sample (``every_sample``: summed over all of them; None: no usable
    sample or no dense oracle)."""
    made = list(sweep.cases(op)) if every_sample else [sweep.case(op)]
    counts = [m for case in made if case is not None
              and (m := _missed(*case)) is not None]
    return sum(counts) if counts else None


def _missed(f, args) -> int | None:
    x, rest = args[0], args[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dense = torch.func.jacrev(lambda v: f(v, *rest))(x)
        except Exception:  # noqa: BLE001 - PyTorch itself cannot: not a detection miss
            return None
        pattern = derivs.sparsity(lambda v, *r: f(v, *r), x, *rest)
    dense = dense.reshape(-1, x.numel())
    truth = ((dense != 0) & dense.isfinite()).numpy()
    found = np.zeros(truth.shape, bool)
    found[pattern.rows, pattern.cols] = True
    return int((truth & ~found).sum())


@pytest.mark.parametrize("op", ENTRIES[3::8], ids=lambda op: f"{op.name}.{op.variant_test_name}")
def test_pattern_holds_every_nonzero(op):
    assert missed_entries(op) in (None, 0)


@pytest.mark.slow
def test_pattern_holds_every_nonzero_for_the_whole_database():
    """Every entry at every one of its samples (not only the first)."""
    missed = {f"{op.name}.{op.variant_test_name}": m for op in ENTRIES
              if (m := missed_entries(op, every_sample=True))}
    assert not missed, missed
