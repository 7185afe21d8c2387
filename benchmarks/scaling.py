"""Beyond one device (issue 14): ``python -m benchmarks scaling [--quick]``.

* ``batch_axis`` against ``vmap``: ``laplacian(u, batch_axis=0)`` and
  ``vmap(laplacian(u))`` side by side (tanh MLP, D = 3, 20, 50; JAX and PyTorch, the
  PyTorch model as an ``nn.Module``), and what ``batch_size`` costs.
* Sparse Jacobians of a sharded input on 8 simulated CPU devices (a subprocess:
  the device count is fixed when JAX starts): compile times against ``f`` plus its
  JVP, eager calls against jitted ones, and where the output lives.

Interleaved medians, as ratios (``derivs._timing``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from derivs._timing import interleaved_medians

from . import _harness


def _cases(quick: bool):
    return [(3, 512 if quick else 4096), (20, 256 if quick else 1024),
            (50, 64 if quick else 256)]


def _jax_batch_axis(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import derivs

    rows = []
    for D, B in _cases(quick):
        keys = jax.random.split(jax.random.key(D), 4)
        sizes = [D, 64, 64, 1]
        ws = [jax.random.normal(k, (a, b)) / a ** 0.5 for k, a, b in zip(keys, sizes, sizes[1:])]

        def u(z):  # closes over its weights, as models do
            h = z
            for w in ws[:-1]:
                h = jnp.tanh(h @ w)
            return (h @ ws[-1])[..., 0]

        x = jax.random.normal(keys[-1], (B, D))
        fns = {"batch_axis=0": jax.jit(derivs.laplacian(u, batch_axis=0)),
               "vmap": jax.jit(jax.vmap(derivs.laplacian(u))),
               f"batch_size={B // 4}": jax.jit(derivs.laplacian(u, batch_axis=0,
                                                                 batch_size=B // 4))}
        ref = fns["vmap"](x)
        for fn in fns.values():
            assert jnp.allclose(fn(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))
        med = interleaved_medians({k: (lambda f=f: f(x)) for k, f in fns.items()},
                                  repeats=5 if quick else 15, inner=5)
        rows.append({"framework": "jax", "D": D, "points": B, **{f"{k}_s": v for k, v in med.items()}})
        print(f"  jax D={D}: " + ", ".join(f"{k} {v / med['vmap']:.2f}x" for k, v in med.items()),
              flush=True)
    return rows


def _torch_batch_axis(quick: bool) -> list[dict]:
    import torch

    import derivs

    rows = []
    for D, B in _cases(quick):
        torch.manual_seed(D)
        net = torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                  torch.nn.Tanh(), torch.nn.Linear(64, 1))
        u = lambda z, net=net: net(z).squeeze(-1)  # noqa: E731
        x = torch.randn(B, D)
        fns = {"batch_axis=0": derivs.laplacian(u, batch_axis=0),
               "vmap": torch.func.vmap(derivs.laplacian(u)),
               f"batch_size={B // 4}": derivs.laplacian(u, batch_axis=0, batch_size=B // 4)}
        with torch.no_grad():
            ref = fns["vmap"](x)
            for fn in fns.values():
                torch.testing.assert_close(fn(x), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
            med = interleaved_medians({k: (lambda f=f: f(x)) for k, f in fns.items()},
                                      repeats=5 if quick else 15, inner=5)
        rows.append({"framework": "torch", "D": D, "points": B,
                     **{f"{k}_s": v for k, v in med.items()}})
        print(f"  torch D={D}: " + ", ".join(f"{k} {v / med['vmap']:.2f}x" for k, v in med.items()),
              flush=True)
    return rows


_SHARDED = r'''
import json, os, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import derivs
from derivs._timing import interleaved_medians, first_call_seconds

n = int(sys.argv[1])
mesh = jax.make_mesh((8,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
f = lambda v: v ** 2 * jnp.roll(v, 1) - jnp.sin(v)   # a periodic stencil, 3 colors
x = jax.device_put(jnp.linspace(-1.0, 1.0, n), NamedSharding(mesh, P("b")))

def compile_s(fn, *a):
    t = time.perf_counter(); fn.lower(*a).compile(); return time.perf_counter() - t

jac = derivs.jacobian(f, sparse=True)
first = first_call_seconds(lambda: jac(x).data)
out = jac(x)
ev = jac.prepare(x)._evaluate
(prog,) = [v for k, v in ev._jitted.items() if k[0] == "by_read"]
row = {"n": n, "colors": int(jac.prepare(x).n_colors), "first eager call (detect + color + compile) s": first,
       "output data sharding": str(out.data.sharding.spec), "output indices sharding": str(out.indices.sharding.spec)}
compiles = {
    "f + JVP": lambda: compile_s(jax.jit(lambda v: jax.jvp(f, (v,), (v,))), x),
    # a fresh outer jit: XLA compiles the whole program again (the inner one inlines)
    "derivs program (eager path)": lambda: compile_s(jax.jit(lambda a, c: prog(a, c)), (x,), ev._device),
    "derivs under jax.jit (.data)": lambda: compile_s(jax.jit(lambda v: jac(v).data), x),
    "derivs under jax.jit (BCOO)": lambda: compile_s(jax.jit(lambda v: jac(v)), x),
}
for k, c in compiles.items():
    c()  # warm the tracing caches
    row[f"compile {k} s"] = min(c() for _ in range(3))
jitted = jax.jit(lambda v: jac(v).data)
med = interleaved_medians({"eager": lambda: jac(x).data, "jax.jit": lambda: jitted(x)}, repeats=7, inner=3)
row.update({f"call {k} s": v for k, v in med.items()})
row["jit output sharding"] = str(jitted(x).sharding.spec)
print(json.dumps(row))
'''


def _sharded(quick: bool) -> list[dict]:
    rows = []
    for n in ((10 ** 5,) if quick else (10 ** 5, 10 ** 6)):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
        proc = subprocess.run([sys.executable, "-c", _SHARDED, str(n)], capture_output=True,
                              text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  sharded sparse n={n}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
                                                      else f"{k} {v}" for k, v in row.items()),
              flush=True)
    return rows


def _fmt(v: float) -> str:
    return f"{v * 1e3:.2f}"


def run(quick: bool = False) -> str:
    jrows, trows = _jax_batch_axis(quick), _torch_batch_axis(quick)
    srows = _sharded(quick)
    table = []
    for r in jrows + trows:
        bs = next(k for k in r if k.startswith("batch_size"))
        table.append([r["framework"], r["D"], r["points"], _fmt(r["vmap_s"]),
                      _fmt(r["batch_axis=0_s"]), f"{r[bs] / r['vmap_s']:.2f}x ({bs[:-2]})",
                      f"{r['batch_axis=0_s'] / r['vmap_s']:.2f}x"])
    batch = _harness.markdown_table(
        ["framework", "D", "points", "vmap(laplacian) ms", "laplacian(batch_axis=0) ms",
         "batch_size / vmap", "batch_axis / vmap"], table)
    sparse_rows = []
    for r in srows:
        base = r["compile f + JVP s"]
        sparse_rows.append([
            f"{r['n']:.0e}", r["colors"], f"{base:.3f}",
            f"{r['compile derivs program (eager path) s'] / base:.2f}x",
            f"{r['compile derivs under jax.jit (.data) s'] / base:.2f}x",
            f"{r['compile derivs under jax.jit (BCOO) s'] / base:.2f}x",
            f"{r['call eager s'] / r['call jax.jit s']:.2f}x",
            r["output data sharding"], r["jit output sharding"]])
    sparse = _harness.markdown_table(
        ["n", "colors", "compile f + JVP s", "compile: eager program", "compile: in jit (.data)",
         "compile: in jit (BCOO)", "eager call / jitted call", "eager output", "jit output"],
        sparse_rows)
    sections = [
        ("laplacian(batch_axis=0) against vmap(laplacian) (tanh MLP of width 64; time "
         "relative to the vmap spelling)", batch),
        ("Sparse Jacobian of a sharded input, 8 simulated CPU devices (compile times "
         "relative to f + its JVP; the eager call relative to the jitted one)", sparse),
    ]
    name = "scaling-quick" if quick else "scaling"
    path = _harness.write(name, "Beyond one device (issue 14)", sections,
                          {"batch_axis": jrows + trows, "sharded_sparse": srows})
    return f"wrote {path}"
