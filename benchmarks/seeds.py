"""The two seed problems of docs/problems.md: derivs against today's alternatives.

Problem 1: training-step time of the seed model whose output is df/dx, each way of
computing df/dx against the hand-written formula (one CPU thread, as docs/problems.md).
Problem 2: d^3 prod(x) / dx0 dx2 dx4 per row, time relative to evaluating f, for
n in {5, 50, 500, 5000} and batch 6 and 4096; JAX under jit, PyTorch eager.
"""

from __future__ import annotations

import time


from derivs import _seeds
from derivs._timing import first_call_seconds, interleaved_medians

from . import _harness

NAIVE_BUDGET_BYTES = 2 * 2**30  # the naive route builds batch * n^3 floats


def _repeats_for(seconds: float, quick: bool) -> int:
    base = 5 if quick else 9
    return 3 if seconds > 0.5 else base


def problem2_jax(batch: int, n: int, quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import derivs

    idx = _seeds.PROBLEM2_INDEX
    x = jnp.asarray(_seeds.problem2_x(batch, n, seed=0), jnp.float32)
    fns = {
        "f": jax.jit(jax.vmap(jnp.prod)),
        "derivs (vmap)": jax.jit(jax.vmap(derivs.partial(jnp.prod, idx))),
        "derivs (batch_axis)": jax.jit(derivs.partial(lambda v: v.prod(-1), idx, batch_axis=0)),
        "nested jax.jvp (accepted answer)": jax.jit(jax.vmap(_seeds.jax_nested_jvp(jnp.prod, idx))),
    }
    naive_bytes = batch * n**3 * 4
    if naive_bytes <= NAIVE_BUDGET_BYTES:
        fns["jacfwd(jacfwd(grad)) (naive)"] = jax.jit(jax.vmap(_seeds.jax_naive(jnp.prod, idx)))
    return _measure("JAX jit", fns, x, batch, n, quick, skipped_naive=(
        None if naive_bytes <= NAIVE_BUDGET_BYTES else naive_bytes), memory=_xla_memory)


def problem2_torch(batch: int, n: int, quick: bool) -> list[dict]:
    import torch

    import derivs

    idx = _seeds.PROBLEM2_INDEX
    x = torch.as_tensor(_seeds.problem2_x(batch, n, seed=0), dtype=torch.float32)
    fns = {
        "f": lambda v: v.prod(-1),
        "derivs (batch_axis)": derivs.partial(lambda v: v.prod(-1), idx, batch_axis=0),
        "derivs (torch.func.vmap)": torch.func.vmap(derivs.partial(torch.prod, idx)),
        "nested torch.func.jvp (accepted answer)": torch.func.vmap(
            _seeds.torch_nested_jvp(torch.prod, idx)),
        "hand-written": _seeds.torch_prod_hand,
    }
    return _measure("PyTorch eager", fns, x, batch, n, quick, skipped_naive=None,
                    memory=_rss_memory)


def _xla_memory(fn, x) -> float | None:
    try:
        m = fn.lower(x).compile().memory_analysis()
        return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20
    except Exception:  # memory analysis is best-effort across jaxlib versions
        return None


def _rss_memory(fn, x) -> float | None:
    return _harness.peak_rss_delta_mb(lambda: fn(x))


def _measure(framework, fns, x, batch, n, quick, *, skipped_naive, memory) -> list[dict]:
    first = {k: first_call_seconds(lambda f=f: f(x)) for k, f in fns.items()}
    mem = {k: memory(f, x) for k, f in fns.items()}
    repeats = _repeats_for(max(first.values()), quick)
    med = interleaved_medians({k: (lambda f=f: f(x)) for k, f in fns.items()}, repeats=repeats,
                              warmup=1)
    anchor = next(k for k in fns if "accepted" in k)
    rows = []
    for k in fns:
        if k == "f":
            continue
        rows.append({
            "framework": framework, "batch": batch, "n": n, "method": k,
            "ms": med[k] * 1e3, "ratio_to_f": med[k] / med["f"],
            "ratio_to_accepted": med[k] / med[anchor], "first_call_s": first[k],
            "memory_mb": mem[k], "f_ms": med["f"] * 1e3, "repeats": repeats,
        })
    if skipped_naive:
        rows.append({"framework": framework, "batch": batch, "n": n,
                     "method": "jacfwd(jacfwd(grad)) (naive)",
                     "skipped": f"needs {skipped_naive / 2**30:.1f} GiB for the n^3 tensor"})
    return rows


def problem1(quick: bool) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    steps = 5
    models = {m: _seeds.problem1_model(m) for m in _seeds.PROBLEM1_MODES}
    t = torch.randn(3000, 1, generator=torch.Generator().manual_seed(0))
    ref = models["hand-written"](t)
    diffs = {m: float((mm(t) - ref).abs().max().detach()) for m, mm in models.items()}
    med = interleaved_medians(
        {m: (lambda mm=mm: _seeds.problem1_train(mm, steps)) for m, mm in models.items()},
        repeats=7 if quick else 21, warmup=2)
    return [{"method": m, "ms_per_step": med[m] / steps * 1e3,
             "ratio_to_hand_written": med[m] / med["hand-written"],
             "max_abs_diff_to_hand_written": diffs[m]} for m in _seeds.PROBLEM1_MODES]


def run(quick: bool) -> str:
    t0 = time.perf_counter()
    sizes = [(6, 5), (4096, 5), (6, 50), (4096, 50)]
    if not quick:
        sizes += [(6, 500), (4096, 500), (6, 5000), (4096, 5000)]
    p2 = []
    for batch, n in sizes:
        p2 += problem2_jax(batch, n, quick)
        p2 += problem2_torch(batch, n, quick)
        print(f"problem 2 batch {batch} n {n} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    p1 = problem1(quick)
    print(f"problem 1 done ({time.perf_counter() - t0:.0f} s)", flush=True)

    p1_table = _harness.markdown_table(
        ["method", "time / hand-written", "ms per step", "max |out - hand-written|"],
        [[r["method"], f"{r['ratio_to_hand_written']:.2f}x", f"{r['ms_per_step']:.2f}",
          f"{r['max_abs_diff_to_hand_written']:.1e}"] for r in p1])
    p2_table = _harness.markdown_table(
        ["framework", "batch", "n", "method", "time / f", "time / accepted", "ms",
         "first call s", "memory MiB"],
        [[r["framework"], r["batch"], r["n"], r["method"], r["skipped"], "-", "-", "-", "-"]
         if "skipped" in r else
         [r["framework"], r["batch"], r["n"], r["method"], f"{r['ratio_to_f']:.2f}x",
          f"{r['ratio_to_accepted']:.2f}x", f"{r['ms']:.3f}", f"{r['first_call_s']:.2f}",
          "-" if r["memory_mb"] is None else f"{r['memory_mb']:.1f}"] for r in p2])
    name = "seeds-quick" if quick else "seeds"
    path = _harness.write(
        name, "Seed problems: derivs against the alternatives",
        [("Problem 1: training-step time of the seed model (batch 3000, 1 thread)", p1_table),
         ("Problem 2: d^3 prod / dx0 dx2 dx4 per row, time relative to f", p2_table + "\n\n"
          "Medians of interleaved repeats. JAX memory: XLA's temp + output buffers; PyTorch "
          "memory: peak RSS added by one call (upper bound).")],
        {"problem1": p1, "problem2": p2, "quick": quick,
         "seconds": time.perf_counter() - t0})
    return f"{p1_table}\n\n{p2_table}\n\nwritten to {path} and {path.with_suffix('.json')}"
