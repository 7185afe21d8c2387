"""The PyTorch engine (issue 5): third-order mixed and pure k-th partials.

Side by side in one process, medians of interleaved repeats, time relative to f:
- derivs in eager PyTorch (traced-jet, ``batch_axis=0``), against nested
  ``torch.func.jvp`` under ``torch.func.vmap`` (the accepted eager answer);
- nested ``jax.jvp`` under ``jax.jit(jax.vmap(...))`` (the JAX reference ratio);
- first-call time: PyTorch's one-time import of its tracing stack, then
  capture + build of the derivative graph.
"""

from __future__ import annotations

import time

import numpy as np

from derivs import _seeds
from derivs._timing import first_call_seconds, interleaved_medians

from . import _harness

SLOW_ANCHOR_S = 3.0  # anchors slower than this per call are timed once


def _torch_fns(n: int, seed: int = 0):
    """Batched (B, n) -> (B,) functions and per-sample ones, with MLP weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(n, 64, generator=g) / n**0.5, torch.randn(64, generator=g) * 0.1,
         torch.randn(64, 64, generator=g) / 8, torch.randn(64, generator=g) * 0.1,
         torch.randn(64, 1, generator=g) / 8, torch.randn(1, generator=g) * 0.1]

    def sinexp(x):
        return (torch.sin(x) * x**2).sum(-1) * torch.exp(x.mean(-1))

    def mlp(x, w1, b1, w2, b2, w3, b3):
        h = torch.tanh(x @ w1 + b1)
        h = torch.tanh(h @ w2 + b2)
        return (h @ w3 + b3)[..., 0]

    return {"sum(sin(x)*x^2)*exp(mean(x))": (sinexp, ()), "tanh MLP 3x64": (mlp, tuple(w))}


def _jax_fns(torch_fns):
    import jax.numpy as jnp

    def sinexp(x):
        return jnp.sum(jnp.sin(x) * x**2) * jnp.exp(jnp.mean(x))

    def mlp(x, w1, b1, w2, b2, w3, b3):
        h = jnp.tanh(x @ w1 + b1)
        h = jnp.tanh(h @ w2 + b2)
        return (h @ w3 + b3)[0]

    conv = lambda ws: tuple(jnp.asarray(t.numpy()) for t in ws)
    names = list(torch_fns)
    return {names[0]: (sinexp, ()), names[1]: (mlp, conv(torch_fns[names[1]][1]))}


def case(name: str, index: tuple, batch: int, n: int, quick: bool, *, anchors: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import derivs

    tfns = _torch_fns(n)
    jfns = _jax_fns(tfns)
    tf, tw = tfns[name]
    jf, jw = jfns[name]
    xn = np.random.default_rng(1).normal(size=(batch, n)).astype(np.float32) * 0.5
    xt, xj = torch.as_tensor(xn), jnp.asarray(xn)

    d = derivs.partial(tf, index, batch_axis=0)
    first = first_call_seconds(lambda: d(xt, *tw))
    compiled = [v for v in d.__derivs_transform__.cache._data.values()]
    build_s = getattr(compiled[0], "build_seconds", float("nan")) if compiled else float("nan")
    strategy = derivs.explain(d, xt, *tw).strategy

    jf_b = jax.jit(jax.vmap(lambda x: jf(x, *jw)))
    jd = jax.jit(jax.vmap(lambda x: _seeds.jax_nested_jvp(lambda z: jf(z, *jw), index)(x)))
    t0 = time.perf_counter()
    jd(xj).block_until_ready()
    jax_compile = time.perf_counter() - t0
    fns = {"torch f": lambda: tf(xt, *tw), "torch derivs": lambda: d(xt, *tw),
           "jax f": lambda: jf_b(xj), "jax nested jvp": lambda: jd(xj)}
    anchor_s = None
    if anchors:
        tn = torch.func.vmap(_seeds.torch_nested_jvp(lambda z: tf(z[None], *tw)[0], index))
        anchor_s = first_call_seconds(lambda: tn(xt))
        if anchor_s <= SLOW_ANCHOR_S:
            fns["torch nested func.jvp"] = lambda: tn(xt)
    med = interleaved_medians(fns, repeats=5 if quick else 9, warmup=1)
    if anchors and "torch nested func.jvp" not in fns:
        med["torch nested func.jvp"] = anchor_s  # one timed call: too slow to repeat
    # the result, checked against the JAX reference
    err = float(np.max(np.abs(d(xt, *tw).numpy() - np.asarray(jd(xj)))))
    scale = float(np.max(np.abs(np.asarray(jd(xj))))) or 1.0
    row = {
        "function": name, "index": list(index), "batch": batch, "n": n, "strategy": strategy,
        "torch_f_ms": med["torch f"] * 1e3, "torch_derivs_ms": med["torch derivs"] * 1e3,
        "torch_derivs_ratio": med["torch derivs"] / med["torch f"],
        "jax_nested_ratio": med["jax nested jvp"] / med["jax f"],
        "first_call_s": first, "build_s": build_s, "jax_compile_s": jax_compile,
        "max_rel_diff_vs_jax": err / scale,
    }
    row["torch_vs_jax_ratio"] = row["torch_derivs_ratio"] / row["jax_nested_ratio"]
    if "torch nested func.jvp" in med:
        row["torch_nested_ratio"] = med["torch nested func.jvp"] / med["torch f"]
    return row


def run(quick: bool) -> str:
    import torch

    t0 = time.perf_counter()
    t_import = time.perf_counter()
    from torch.fx.experimental.proxy_tensor import make_fx

    make_fx(lambda v: v * 2, tracing_mode="fake")(torch.ones(2))  # one-time tracing imports
    import_s = time.perf_counter() - t_import
    names = list(_torch_fns(2))
    rows = []
    for name in names:
        for n in (5, 100):
            rows.append(case(name, (0, 2, 4) if n > 4 else (0, 1, 2), 1024, n, quick,
                             anchors=True))
            print(f"mixed {name} n {n} ({time.perf_counter() - t0:.0f} s)", flush=True)
    pure = []
    ks = (2, 4, 6, 8) if quick else (2, 3, 4, 5, 6, 7, 8)
    for name in names:
        for k in ks:
            pure.append(case(name, (0,) * k, 1024, 100, quick, anchors=k <= (4 if quick else 6)))
            print(f"pure {name} k {k} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def fmt(r, key, f="{:.2f}x"):
        return f.format(r[key]) if key in r else "-"

    mixed_table = _harness.markdown_table(
        ["function", "n", "derivs (torch eager) / f", "nested func.jvp / f",
         "JAX jit nested jvp / f", "torch derivs vs JAX", "first call s", "build s",
         "strategy", "max rel diff vs JAX"],
        [[r["function"], r["n"], fmt(r, "torch_derivs_ratio"), fmt(r, "torch_nested_ratio"),
          fmt(r, "jax_nested_ratio"), fmt(r, "torch_vs_jax_ratio"), f"{r['first_call_s']:.2f}",
          f"{r['build_s']:.3f}", r["strategy"], f"{r['max_rel_diff_vs_jax']:.1e}"]
         for r in rows])
    pure_table = _harness.markdown_table(
        ["function", "k", "derivs (torch eager) / f", "nested func.jvp / f",
         "JAX jit nested jvp / f", "JAX compile s", "build s", "max rel diff vs JAX"],
        [[r["function"], len(r["index"]), fmt(r, "torch_derivs_ratio"),
          fmt(r, "torch_nested_ratio"), fmt(r, "jax_nested_ratio"), f"{r['jax_compile_s']:.2f}",
          f"{r['build_s']:.3f}", f"{r['max_rel_diff_vs_jax']:.1e}"] for r in pure])
    name = "engine-quick" if quick else "engine"
    note = (f"PyTorch's one-time import of its tracing stack (torch._dynamo, sympy; paid once "
            f"per process by any make_fx/torch.compile user): {import_s:.2f} s, measured before "
            "the cases; 'first call' below is capture + build + first run after it.")
    path = _harness.write(name, "PyTorch engine: mixed and pure higher-order partials", [
        ("Third-order mixed partials, batch 1024 (float32)", mixed_table + "\n\n" + note),
        ("Pure k-th partials d^k f / dx0^k, n = 100, batch 1024", pure_table),
    ], {"mixed": rows, "pure": pure, "tracing_import_s": import_s, "quick": quick,
        "seconds": time.perf_counter() - t0})
    return f"{mixed_table}\n\n{note}\n\n{pure_table}\n\nwritten to {path}"
