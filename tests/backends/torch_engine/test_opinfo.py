"""PyTorch's OpInfo database against the traced engine (see ``opinfo_sweep.py``).

Default run: every 8th entry; each is served by the traced engine with the value
of PyTorch's own transforms, or is a known miss for the reason listed. ``-m slow``:
the whole database, at least 95% served and never a wrong value."""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest", reason="OpInfo needs the test extras (expecttest)")

from . import opinfo_sweep as sweep  # noqa: E402

# Misses by design: what a cached graph must not do, or what PyTorch cannot trace.
KNOWN_MISSES = {
    "bernoulli.": "random", "nn.functional.fractional_max_pool2d.": "random",
    "nn.functional.fractional_max_pool3d.": "random", "nn.functional.rrelu.": "random",
    "pca_lowrank.": "random", "svd_lowrank.": "random",
    # running statistics passed as inputs and updated in place
    "_batch_norm_with_update.": "in place", "_native_batch_norm_legit.": "in place",
    "nn.functional.instance_norm.": "in place",
    # data-dependent shapes or checks
    "masked_select.": "cannot be captured", "combinations.": "cannot be captured",
    "cov.": "could not capture", "corrcoef.": "could not capture",
    "nn.functional.gaussian_nll_loss.": "could not capture",
    "linalg.lstsq.grad_oriented": "could not capture",
    # LU factors: PyTorch defines no derivative for them
    "linalg.lu.": "no derivative for output", "linalg.lu_factor.": "no derivative for output",
    "linalg.lu_factor_ex.": "no derivative for output",
    "linalg.lu_solve.": "no derivative for output", "lu.": "no derivative for output",
    "lu_unpack.": "no derivative for output",
    # batch norm with running statistics in training mode inside the formula
    "native_batch_norm.": "cannot be captured", "nn.functional.batch_norm.": "cannot be captured",
}

# A real f with complex intermediates runs nested forward mode by design (NOTE
# [complex intermediates]: the traced rules are real), whatever the entry.
BY_DESIGN = ("complex intermediates",)

ENTRIES = sweep.entries()
FAST = ENTRIES[::8]


@pytest.mark.parametrize("op", FAST, ids=lambda op: f"{op.name}.{op.variant_test_name}")
def test_opinfo_entry(op):
    name = f"{op.name}.{op.variant_test_name}"
    status, detail = sweep.check(op)
    assert "WRONG" not in detail, (name, detail)
    if status == "miss" and not any(r in detail for r in BY_DESIGN):
        assert name in KNOWN_MISSES and KNOWN_MISSES[name] in detail, (name, detail)


@pytest.mark.slow
def test_opinfo_database():
    out = sweep.sweep(ENTRIES)
    wrong = {k: d for k, (s, d) in out["results"].items() if "WRONG" in d}
    assert not wrong
    c = out["counts"]
    complex_ = sum(1 for s, d in out["results"].values()
                   if s == "miss" and any(r in d for r in BY_DESIGN))
    served = c["served"] / (c["served"] + c["miss"] - complex_)  # of the real entries
    unexpected = {k: d for k, (s, d) in out["results"].items()
                  if s == "miss" and k not in KNOWN_MISSES
                  and not any(r in d for r in BY_DESIGN)}
    assert served >= 0.95 and not unexpected, (served, unexpected)
