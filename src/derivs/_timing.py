"""Interleaved timing: medians of repeats that alternate between contenders, so
that machine noise (other processes, frequency changes) hits all of them alike.
Used by the demo and by the benchmark harness."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def _block(out):
    # JAX dispatches asynchronously; wait for every array in the result.
    for leaf in out if isinstance(out, (tuple, list)) else (out,):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 7,
                        inner: int = 1, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each zero-argument function in ``fns``.

    Each function is called ``warmup`` times first (compilation, caches), then
    ``repeats`` rounds run every function ``inner`` times, in a fresh (seeded)
    random order each round: a fixed rotation always runs a function right after
    the same neighbour, and a neighbour that frees a lot of memory makes the next
    call pay the page faults of fresh allocations (on CPU, a Bi-Laplacian timed
    right after the nested reference ran 1.6-2.7x slower than the same call in
    the next slot).
    """
    names = list(fns)
    shuffle = random.Random(0).shuffle
    for name in names:
        for _ in range(warmup):
            _block(fns[name]())
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = list(names)
        shuffle(order)
        for name in order:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                _block(fn())
            samples[name].append((time.perf_counter() - t0) / inner)
    return {n: statistics.median(s) for n, s in samples.items()}


def first_call_seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    _block(fn())
    return time.perf_counter() - t0
