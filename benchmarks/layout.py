"""Issue 31: the direction layout of few-direction operators, measured by D, batch and
width (``python -m benchmarks layout``).

The jet strategy carries the D unit directions of a Laplacian either unrolled (one
coordinate group each: D separate products) or on one stacked family axis (NOTE
[direction layout] in ``derivs._operators``). For each (D, points, width) of a tanh
MLP ``D-W-W-1``, PyTorch eager on CPU: both layouts forced, against
``vmap(trace(hessian))``, medians of interleaved runs. ``tests/test_operators.py``
checks the layout rule (``derivs._operators.unrolled``) against these rows, so the
rule stays what was measured. Results in ``benchmarks/out/layout[-quick].{md,json}``
(references: ``benchmarks/results/``).
"""

from __future__ import annotations

import time

import derivs
from derivs._timing import interleaved_medians

from . import _harness
from .taylor import _unroll_max_call


def _cases(quick: bool):
    if quick:
        return [(D, B, 64) for D in (2, 4) for B in (256, 4096)]
    return [(D, B, W) for D in (2, 3, 4, 6) for B in (256, 1000, 10000) for W in (64, 256)]


def _row(D: int, B: int, W: int, quick: bool) -> dict:
    import torch

    g = torch.Generator().manual_seed(D * 7 + W)
    model = torch.nn.Sequential(torch.nn.Linear(D, W), torch.nn.Tanh(), torch.nn.Linear(W, W),
                                torch.nn.Tanh(), torch.nn.Linear(W, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    x = torch.randn(B, D, generator=g)
    lap = derivs.laplacian(model, batch_axis=0)

    def trace_hessian():
        return torch.vmap(lambda z: torch.func.hessian(
            lambda y: model(y[None])[0, 0])(z).trace())(x)

    with torch.no_grad():
        ref = trace_hessian()
        for limit in (10**9, 0):
            got = _unroll_max_call(limit, lap, x)[..., 0]
            torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
        med = interleaved_medians(
            {"unrolled": lambda: _unroll_max_call(10**9, lap, x),
             "family": lambda: _unroll_max_call(0, lap, x),
             "trace(hessian)": trace_hessian},
            repeats=5 if quick else 9, inner=1 if B >= 10000 else 3)
    return {"framework": "torch", "device": "cpu", "D": D, "points": B, "width": W,
            **{f"{k}_s": v for k, v in med.items()}}


def run(quick: bool = False) -> str:
    import torch

    t0 = time.perf_counter()
    rows = []
    for D, B, W in _cases(quick):
        rows.append(_row(D, B, W, quick))
        r = rows[-1]
        print(f"  D={D} points={B} width={W}: unrolled "
              f"{r['unrolled_s'] / r['trace(hessian)_s']:.2f}x, family "
              f"{r['family_s'] / r['trace(hessian)_s']:.2f}x", flush=True)
    data = {"quick": quick, "torch_threads": torch.get_num_threads(), "rows": rows,
            "seconds": time.perf_counter() - t0}
    sections = [(
        "PyTorch Laplacian, tanh MLP D-W-W-1, CPU eager: both direction layouts (time "
        "relative to vmap(trace(hessian)))",
        _harness.markdown_table(
            ["D", "points", "width", "unrolled", "family", "faster", "rule picks"],
            [[r["D"], r["points"], r["width"],
              f"{r['unrolled_s'] / r['trace(hessian)_s']:.3f}x",
              f"{r['family_s'] / r['trace(hessian)_s']:.3f}x",
              "unrolled" if r["unrolled_s"] < r["family_s"] else "family",
              _rule(r)] for r in rows]))]
    name = "layout" + ("-quick" if quick else "")
    path = _harness.write(name, "Direction layout of few-direction operators (issue 31)",
                          sections, data)
    return f"wrote {path} in {data['seconds']:.0f} s"


def _rule(row: dict) -> str:
    from derivs import _operators, backends

    backend = backends.backend_named(row["framework"])
    return ("unrolled" if _operators.unrolled(backend, row["D"], device_type=row["device"],
                                              samples=row["points"]) else "family")
