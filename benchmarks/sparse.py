"""Issue 4: sparse Jacobians and Hessians, side by side in one process.

Problems (float64, CPU): the 1-D finite-difference residual (Jacobian), the
chained Rosenbrock function (Hessian) and the 2-D 5-point Laplacian residual
(Jacobian), at n = 1e5 (the 2-D grid is 316 x 316 = 99 856).

- detection + coloring: derivs (``prepare``) against asdex (``jacobian_coloring``
  / ``hessian_coloring``) and sparsejac's coloring (which takes the pattern as
  given, so it times coloring only); colors of each;
- evaluation under ``jax.jit``: derivs against asdex and sparsejac, and as a
  ratio to ``f``; dense ``jax.jacfwd`` at n = 1e4 against derivs at n = 1e4;
- PyTorch at n = 2000: values against dense ``torch.func.jacfwd`` / ``hessian``
  and evaluation as a ratio to ``f``, next to the JAX path's ratio at the same n.

Medians of interleaved repeats; results in ``benchmarks/out/sparse[-quick].{md,json,png}``
(references: ``benchmarks/results/``).
Anchors (asdex, sparsejac) are optional: their columns are blank when absent.
"""

from __future__ import annotations

import time

import numpy as np

import derivs
from derivs._timing import first_call_seconds, interleaved_medians

from . import _harness


def _problems(ns, pad):
    from tests.sparsity import _problems as P

    return {
        "1-D FD Jacobian": ("jacobian", P.fd1d(ns)),
        "chained Rosenbrock Hessian": ("hessian", P.rosenbrock(ns)),
        "2-D 5-point Laplacian Jacobian": ("jacobian", P.laplace2d(ns, pad)),
    }


def _size(name: str, n: int) -> int:
    if name.startswith("2-D"):
        m = int(round(np.sqrt(n)))
        return m * m if m * m >= n * 0.99 else (m + 1) ** 2
    return n


def _anchors():
    try:
        import asdex
    except ImportError:
        asdex = None
    try:
        import sparsejac
    except ImportError:
        sparsejac = None
    return asdex, sparsejac


def _jax(quick: bool) -> tuple[list[dict], list[dict]]:
    import jax
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    jax.config.update("jax_enable_x64", True)
    asdex, sparsejac = _anchors()
    n_big = 20_000 if quick else 100_000
    repeats = 3 if quick else 5
    rows, dense_rows = [], []
    rng = np.random.default_rng(0)
    for name, (kind, f) in _problems(jnp, lambda U: jnp.pad(U, 1)).items():
        n = _size(name, n_big)
        x = jnp.asarray(rng.uniform(-1, 1, n))
        make = derivs.hessian if kind == "hessian" else derivs.jacobian
        prep = {"derivs": lambda: make(f, sparse=True).prepare(x)}
        if asdex is not None:
            color = asdex.hessian_coloring if kind == "hessian" else asdex.jacobian_coloring
            prep["asdex"] = lambda color=color: color(f, x)
        ours = prep["derivs"]()
        pattern = ours.pattern
        bcoo = jsparse.BCOO((jnp.ones(pattern.nnz), jnp.asarray(
            np.stack([pattern.rows, pattern.cols], 1))), shape=pattern.shape)
        target = jax.grad(f) if kind == "hessian" else f
        if sparsejac is not None:  # coloring only: the pattern is handed to it
            prep["sparsejac (coloring only)"] = lambda: sparsejac.jacfwd(target, bcoo)
        prep_t = interleaved_medians(prep, repeats=repeats, warmup=0)
        row = {"problem": name, "n": n, "nnz": pattern.nnz, "derivs colors": ours.n_colors,
               "derivs prepare s": prep_t["derivs"],
               "derivs detect s": ours.detect_seconds,
               "derivs coloring s": ours.coloring_seconds}
        evals = {"f": jax.jit(f), "derivs": jax.jit(make(f, sparse=True))}
        if asdex is not None:
            ac = prep["asdex"]()
            row["asdex colors"] = ac.num_colors
            row["asdex prepare s"] = prep_t["asdex"]
            frm = asdex.hessian_from_coloring if kind == "hessian" else asdex.jacobian_from_coloring
            evals["asdex"] = jax.jit(frm(f, ac))
        if sparsejac is not None:
            row["sparsejac coloring s"] = prep_t["sparsejac (coloring only)"]
            evals["sparsejac"] = jax.jit(sparsejac.jacfwd(target, bcoo))
        mine = _to_scipy(evals["derivs"](x))
        for k in ("asdex", "sparsejac"):
            if k in evals:  # the same matrix as each anchor's
                diff = abs(_to_scipy(evals[k](x)) - mine).max()
                assert diff <= 1e-9 * abs(mine).max(), (k, diff)
        fns = {k: (lambda g=g: g(x)) for k, g in evals.items()}
        t = interleaved_medians(fns, repeats=5 if quick else 11, inner=3)
        for k, v in t.items():
            row[f"{k} eval s"] = v
        row["derivs eval / f"] = t["derivs"] / t["f"]
        if "asdex" in t:
            row["derivs eval / asdex"] = t["derivs"] / t["asdex"]
            row["asdex prepare / derivs prepare"] = prep_t["asdex"] / prep_t["derivs"]
        if "sparsejac" in t:
            row["derivs eval / sparsejac"] = t["derivs"] / t["sparsejac"]
        rows.append(row)

        # Dense jacfwd at n = 1e4: the first call (trace, compile, run; for derivs also
        # detection and coloring) and then steady state.
        nd = _size(name, 2_000 if quick else 10_000)
        xd = jnp.asarray(rng.uniform(-1, 1, nd))
        dense = jax.jit(jax.hessian(f) if kind == "hessian" else jax.jacfwd(f))
        sparse = jax.jit(make(f, sparse=True))
        first = {"dense": first_call_seconds(lambda: dense(xd)),
                 "derivs": first_call_seconds(lambda: sparse(xd))}
        td = interleaved_medians({"dense": lambda: dense(xd), "derivs": lambda: sparse(xd)},
                                 repeats=5, inner=3)
        mem_dense = _harness.peak_rss_delta_mb(lambda: dense(xd))
        mem_sparse = _harness.peak_rss_delta_mb(lambda: sparse(xd))
        np.testing.assert_allclose(np.asarray(sparse(xd).todense()), np.asarray(dense(xd)),
                                   rtol=1e-10, atol=1e-10)
        dense_rows.append({"problem": name, "n": nd, "dense first call s": first["dense"],
                           "derivs first call s": first["derivs"],
                           "first-call speedup": first["dense"] / first["derivs"],
                           "dense s": td["dense"],
                           "derivs s": td["derivs"], "speedup": td["dense"] / td["derivs"],
                           "dense peak MiB": mem_dense, "derivs peak MiB": mem_sparse})
    return rows, dense_rows


def _to_scipy(M):
    import scipy.sparse as sp

    idx = np.asarray(M.indices)
    return sp.coo_array((np.asarray(M.data), (idx[:, 0], idx[:, 1])), shape=M.shape).tocsr()


def _torch(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    n0 = 2000
    rows = []
    rng = np.random.default_rng(1)
    tprobs = _problems(torch, lambda U: torch.nn.functional.pad(U, (1, 1, 1, 1)))
    jprobs = _problems(jnp, lambda U: jnp.pad(U, 1))
    for name, (kind, f) in tprobs.items():
        n = _size(name, n0)
        v = rng.uniform(-1, 1, n)
        x = torch.as_tensor(v)
        make = derivs.hessian if kind == "hessian" else derivs.jacobian
        D = make(f, sparse=True)
        got = D(x).to_dense().numpy()
        dense = (torch.func.hessian(f) if kind == "hessian" else torch.func.jacfwd(f))(x)
        err = float(np.abs(got - dense.numpy()).max())
        jf = jprobs[name][1]
        xj = jnp.asarray(v)
        jD = jax.jit(make(jf, sparse=True))
        jfj = jax.jit(jf)
        # Small, dispatch-bound calls: many interleaved rounds keep the ratios steady.
        t = interleaved_medians({"torch f": lambda: f(x), "torch derivs": lambda: D(x),
                                 "jax f": lambda: jfj(xj), "jax derivs": lambda: jD(xj)},
                                repeats=7 if quick else 31, inner=20)
        tr = t["torch derivs"] / t["torch f"]
        jr = t["jax derivs"] / t["jax f"]
        rows.append({"problem": name, "n": n, "max abs error vs dense": err,
                     "colors": D.prepare(x).n_colors,
                     "torch f s": t["torch f"], "torch eval s": t["torch derivs"],
                     "torch eval / f": tr, "jax eval / f": jr, "torch ratio / jax ratio": tr / jr})
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def run(quick: bool = False) -> str:
    t0 = time.perf_counter()
    rows, dense_rows = _jax(quick)
    trows = _torch(quick)
    sections = []
    heads = ["problem", "n", "nnz", "derivs colors", "asdex colors", "derivs prepare s",
             "asdex prepare s", "asdex prepare / derivs prepare", "sparsejac coloring s",
             "derivs detect s", "derivs coloring s"]
    sections.append(("Detection + coloring (JAX, medians of interleaved runs)",
                     _harness.markdown_table(heads, [[_fmt(r.get(h)) for h in heads]
                                                     for r in rows])))
    heads = ["problem", "n", "f eval s", "derivs eval s", "asdex eval s", "sparsejac eval s",
             "derivs eval / asdex", "derivs eval / sparsejac", "derivs eval / f"]
    sections.append(("Evaluation under jax.jit",
                     _harness.markdown_table(heads, [[_fmt(r.get(h)) for h in heads]
                                                     for r in rows])))
    heads = ["problem", "n", "dense first call s", "derivs first call s", "first-call speedup",
             "dense s", "derivs s", "speedup", "dense peak MiB", "derivs peak MiB"]
    sections.append(("Dense jax.jacfwd / jax.hessian against derivs",
                     _harness.markdown_table(heads, [[_fmt(r.get(h)) for h in heads]
                                                     for r in dense_rows])))
    heads = list(trows[0])
    sections.append(("PyTorch (eager) against the JAX path (jit), ratios to f",
                     _harness.markdown_table(heads, [[_fmt(r.get(h)) for h in heads]
                                                     for r in trows])))
    sections.append(("Run", f"{time.perf_counter() - t0:.0f} s in all"))
    path = _harness.write("sparse-quick" if quick else "sparse",
                          "Sparse Jacobians and Hessians (issue 4)", sections,
                          {"jax": rows, "dense": dense_rows, "torch": trows})
    return path.read_text()
