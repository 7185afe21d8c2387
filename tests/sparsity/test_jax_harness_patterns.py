"""Sparsity patterns against JAX's own test harnesses (the jax2tf primitive
harnesses shipped in the jax wheel): for the first floating-point harness of every
primitive group, the detected pattern holds every finite nonzero of the dense
``jax.jacrev`` at the harness's arguments, and detection never raises. Default
run: every 4th group; ``-m slow``: every group."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
th = pytest.importorskip("jax._src.internal_test_util.test_harnesses")

import jax.numpy as jnp  # noqa: E402

import derivs  # noqa: E402


def _groups():
    groups = collections.defaultdict(list)
    for h in th.all_harnesses:
        groups[h.group_name].append(h)
    return [next((h for h in hs if np.dtype(h.dtype).kind == "f"), None)
            for _, hs in sorted(groups.items())]


HARNESSES = [h for h in _groups() if h is not None]


def missed_entries(h) -> int | None:
    """Finite nonzeros of the dense Jacobian outside the pattern (None: no floating
    argument or output, or JAX itself cannot differentiate the harness)."""
    try:
        args = h.dyn_args_maker(np.random.RandomState(0))
        floating = [i for i, a in enumerate(args)
                    if hasattr(a, "dtype") and np.dtype(a.dtype).kind == "f" and np.size(a)]
        if not floating:
            return None
        i = floating[0]
        x = jnp.asarray(args[i])

        def f(v):
            full = list(args)
            full[i] = v
            out = h.dyn_fun(*full)
            return jnp.asarray(out[0] if isinstance(out, (tuple, list)) else out)

        if not np.issubdtype(jax.eval_shape(f, x).dtype, np.floating):
            return None
        dense = np.asarray(jax.jacrev(f)(x)).reshape(-1, x.size)
    except Exception:  # noqa: BLE001 - JAX itself cannot: not a detection miss
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pattern = derivs.sparsity(f, x)
    truth = (dense != 0) & np.isfinite(dense)
    found = np.zeros(truth.shape, bool)
    found[pattern.rows, pattern.cols] = True
    return int((truth & ~found).sum())


@pytest.mark.parametrize("h", HARNESSES[::4], ids=lambda h: h.group_name)
def test_pattern_holds_every_nonzero(h):
    assert missed_entries(h) in (None, 0)


@pytest.mark.slow
def test_pattern_holds_every_nonzero_for_every_group():
    missed = {h.group_name: m for h in HARNESSES if (m := missed_entries(h))}
    assert not missed
