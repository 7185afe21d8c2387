"""Issue 24: operators on every architecture users train (``python -m benchmarks zoo``).

For each member of the zoo (``zoo_models.py``: MLPs with each smooth activation, a
residual GELU MLP, Fourier features, the gated MLP of PINN practice, a transformer
encoder over coordinates), in both frameworks, side by side in one process:

- the Laplacian against ``vmap(trace(hessian))`` of the same network (D = 10 and
  D = 50), and against derivs' own Laplacian of the tanh MLP of the same widths;
- the Hessian diagonal against ``vmap(diag(hessian))`` (D = 10);
- the Bi-Laplacian against the nested Laplacian of the Laplacian (D = 10; PyTorch:
  ``hessian`` of ``trace(hessian)`` per sample, JAX the same under ``jit``);
- ``hutchinson_laplacian`` against nested VHVPs along the same directions
  (D = 50, S = 16 and 64).

JAX contenders run under ``jax.jit``; PyTorch runs eager under ``torch.no_grad()``
(the reference too). Medians of interleaved repeats, as ratios; results in
``benchmarks/out/zoo[-quick].{md,json,png}`` (references: ``benchmarks/results/``).
"""

from __future__ import annotations

import time

import numpy as np

import derivs
from derivs._timing import interleaved_medians

from . import _harness, zoo_models as Z

WIDTH = 64
POINTS = 256
BILAPLACIAN_POINTS = 32
# Calls before timing: PyTorch interprets a family program for a signature's first 3
# calls and replays it after (NOTE [replay]); the timed calls are the steady state
STEADY = 4
# XLA compiles the transformer's fourth-order programs for over a minute, both
# derivs' and the nested reference (61-64 s each on the 2-core CI machine)
_NO_BILAPLACIAN = {("jax", "transformer")}


def _members(quick: bool) -> tuple:
    if quick:
        return ("mlp-tanh", "mlp-gelu", "mlp-softplus", "mlp-mish", "residual-gelu",
                "transformer")
    return Z.MEMBERS


def _x(D, points, seed=0):
    return np.random.default_rng(seed).normal(size=(points, D)).astype(np.float32)


# -- PyTorch ------------------------------------------------------------------------------
def _torch_reference_context():
    """The reference's attention in math form (the fused kernels have no
    forward-mode derivative)."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    @contextlib.contextmanager
    def ctx():
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with sdpa_kernel(SDPBackend.MATH):
                yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
    return ctx


def _torch_rows(name, D, quick, kinds) -> dict:
    import torch

    repeats = 3 if quick else 7
    model = Z.torch_member(name, D, WIDTH)
    # the reference's network: SiLU and Mish in elementary ops (PyTorch's own
    # hessian of them raises: their backward ops have no forward-mode derivative)
    reference = Z.torch_member(name, D, WIDTH, elementary=True)
    ctx = _torch_reference_context()
    row = {"framework": "torch", "member": name, "D": D}
    single = lambda z: reference(z[None])[0]  # noqa: E731
    if "laplacian" in kinds or "diagonal" in kinds:
        x = torch.as_tensor(_x(D, POINTS))
        lap = derivs.laplacian(model, batch_axis=0)
        diag = derivs.hessian_diagonal(model, batch_axis=0)

        def trace_hessian():
            with ctx():
                return torch.func.vmap(torch.func.hessian(single))(x).diagonal(
                    dim1=-2, dim2=-1).sum(-1)

        def diag_hessian():
            with ctx():
                return torch.func.vmap(torch.func.hessian(single))(x).diagonal(
                    dim1=-2, dim2=-1)

        with torch.no_grad():
            t0 = time.perf_counter()
            lap(x)
            row["first_call_s"] = time.perf_counter() - t0
            fns = {"laplacian": lambda: lap(x), "trace(hessian)": trace_hessian}
            if "diagonal" in kinds:
                fns.update({"hessian_diagonal": lambda: diag(x), "diag(hessian)": diag_hessian})
            row.update({k + "_s": v for k, v in interleaved_medians(
                fns, repeats=repeats, warmup=STEADY).items()})
    if "bilaplacian" in kinds:
        xb = torch.as_tensor(_x(D, BILAPLACIAN_POINTS, 1))
        bi = derivs.bilaplacian(model, batch_axis=0)

        def lap1(z):
            return torch.func.hessian(single)(z).diagonal().sum()

        def nested():
            with ctx():
                return torch.func.vmap(lambda z: torch.func.hessian(lap1)(z).diagonal().sum())(xb)

        with torch.no_grad():
            m = interleaved_medians({"bilaplacian": lambda: bi(xb), "nested": nested},
                                    warmup=STEADY,
                                    repeats=max(3, repeats // 2))
        row.update({"bilaplacian_s": m["bilaplacian"], "lap(lap)_s": m["nested"]})
    return row


# -- JAX --------------------------------------------------------------------------------------
# XLA's CPU backend (jaxlib 0.10.2 and later) hands reductions and the elementwise
# and dot ops around them to YNNPACK fusions by default; on these programs that made
# both contenders slower, derivs' gated MLP 3x (a known upstream regression:
# jax-ml/jax#37465, whose workaround is this flag). The JAX Laplacian is timed both
# ways, each contender compiled with the same options.
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _no_ynn(fn, x):
    """``jax.jit(fn)`` compiled without XLA's CPU YNNPACK fusions, or None where the
    option does not exist (another backend or jaxlib)."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    try:
        jitted = jax.jit(fn, compiler_options=_NO_YNN)
        jitted(x).block_until_ready()
    except Exception:  # noqa: BLE001 - an older jaxlib: the default spelling only
        return None
    return jitted


def _jax_rows(name, D, quick, kinds) -> dict:
    import jax
    import jax.numpy as jnp

    repeats = 5 if quick else 15
    u = Z.jax_member(name, D, WIDTH)
    single = lambda z: u(z[None])[0]  # noqa: E731
    row = {"framework": "jax", "member": name, "D": D}
    if "laplacian" in kinds or "diagonal" in kinds:
        x = jnp.asarray(_x(D, POINTS))
        lap = jax.jit(derivs.laplacian(u, batch_axis=0))
        ref = jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(single)(z))))
        t0 = time.perf_counter()
        lap(x).block_until_ready()
        row["first_call_s"] = time.perf_counter() - t0
        fns = {"laplacian": lambda: lap(x), "trace(hessian)": lambda: ref(x)}
        lap_off = _no_ynn(derivs.laplacian(u, batch_axis=0), x)
        ref_off = _no_ynn(jax.vmap(lambda z: jnp.trace(jax.hessian(single)(z))), x)
        if lap_off is not None and ref_off is not None:
            fns.update({"laplacian no-YNN": lambda: lap_off(x),
                        "trace(hessian) no-YNN": lambda: ref_off(x)})
        if "diagonal" in kinds:
            diag = jax.jit(derivs.hessian_diagonal(u, batch_axis=0))
            dref = jax.jit(jax.vmap(lambda z: jnp.diagonal(jax.hessian(single)(z))))
            fns.update({"hessian_diagonal": lambda: diag(x), "diag(hessian)": lambda: dref(x)})
        row.update({k + "_s": v for k, v in
                    interleaved_medians(fns, repeats=repeats, inner=3).items()})
    if "bilaplacian" in kinds:
        xb = jnp.asarray(_x(D, BILAPLACIAN_POINTS, 1))
        bi = jax.jit(derivs.bilaplacian(u, batch_axis=0))

        def lap1(z):
            return jnp.trace(jax.hessian(single)(z))

        nested = jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(lap1)(z))))
        m = interleaved_medians({"bilaplacian": lambda: bi(xb), "nested": lambda: nested(xb)},
                                repeats=max(3, repeats // 3), inner=2)
        row.update({"bilaplacian_s": m["bilaplacian"], "lap(lap)_s": m["nested"]})
    return row


def _hutchinson(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    D, rows = 50, []
    for name in ("mlp-tanh", "mlp-gelu"):
        model = Z.torch_member(name, D, 256)
        x = torch.as_tensor(_x(D, POINTS))
        u = Z.jax_member(name, D, 256)
        xj = jnp.asarray(_x(D, POINTS))
        for S in (16, 64):
            est = derivs.hutchinson_laplacian(model, samples=S, batch_axis=0)
            V = torch.as_tensor(np.random.default_rng(S).choice([-1.0, 1.0], size=(S, D)),
                                dtype=torch.float32)

            def nested(V=V):
                def term(v):
                    vb = v.expand(x.shape)
                    return torch.func.jvp(lambda z: torch.func.jvp(model, (z,), (vb,))[1],
                                          (x,), (vb,))[1]
                return torch.func.vmap(term)(V).mean(0)

            with torch.no_grad():
                m = interleaved_medians({"derivs": lambda: est(0, x), "nested": nested},
                                        warmup=STEADY,
                                        repeats=3 if quick else 7)
            rows.append({"framework": "torch", "member": name, "samples": S,
                         "derivs_s": m["derivs"], "nested VHVPs_s": m["nested"]})
            estj = jax.jit(derivs.hutchinson_laplacian(u, samples=S, batch_axis=0))

            @jax.jit
            def nestedj(key, z):
                V = jax.random.rademacher(key, (S, D), z.dtype)

                def term(v):
                    vb = jnp.broadcast_to(v, z.shape)
                    return jax.jvp(lambda w: jax.jvp(u, (w,), (vb,))[1], (z,), (vb,))[1]
                return jax.vmap(term)(V).mean(0)

            key = jax.random.key(S)
            m = interleaved_medians({"derivs": lambda: estj(key, xj),
                                     "nested": lambda: nestedj(key, xj)},
                                    repeats=5 if quick else 15, inner=3)
            rows.append({"framework": "jax", "member": name, "samples": S,
                         "derivs_s": m["derivs"], "nested VHVPs_s": m["nested"]})
    return rows


def _ratio(row, a, b) -> str:
    if a + "_s" not in row or b + "_s" not in row:
        return "-"
    return f"{row[a + '_s'] / row[b + '_s']:.2f}x"


def run(quick: bool = False) -> str:
    import jax
    import torch

    jax.config.update("jax_enable_x64", False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    members = _members(quick)
    dims = (10,) if quick else (10, 50)
    data: dict = {"quick": quick, "width": WIDTH, "points": POINTS, "rows": []}
    for D in dims:
        for name in members:
            kinds = ("laplacian", "diagonal") if D == 10 else ("laplacian",)
            for fw in ("torch", "jax"):
                mine = kinds
                if D == 10 and (fw, name) not in _NO_BILAPLACIAN:
                    mine += ("bilaplacian",)
                print(f"{fw} {name} D={D}", flush=True)
                try:
                    row = (_torch_rows if fw == "torch" else _jax_rows)(name, D, quick, mine)
                except Exception as e:  # noqa: BLE001 - recorded, not hidden
                    row = {"framework": fw, "member": name, "D": D,
                           "error": f"{type(e).__name__}: {str(e)[:200]}"}
                data["rows"].append(row)
    print("hutchinson", flush=True)
    data["hutchinson"] = _hutchinson(quick)
    data["seconds"] = time.perf_counter() - t0
    rows = data["rows"]
    tanh = {(r["framework"], r["D"]): r.get("laplacian_s") for r in rows
            if r["member"] == "mlp-tanh"}

    def vs_tanh(r):
        t = tanh.get((r["framework"], r["D"]))
        return "-" if not t or "laplacian_s" not in r else f"{r['laplacian_s'] / t:.2f}"

    sections = []
    for fw in ("torch", "jax"):
        for D in dims:
            mine = [r for r in rows if r["framework"] == fw and r["D"] == D]
            no_ynn = fw == "jax" and any("laplacian no-YNN_s" in r for r in mine)
            sections.append((
                f"{'PyTorch' if fw == 'torch' else 'JAX'} Laplacian, D = {D}, width "
                f"{WIDTH}, {POINTS} points (time relative to vmap(trace(hessian)))"
                + ("; last two columns: both compiled without XLA's CPU YNNPACK fusions "
                   "(jax-ml/jax#37465)" if no_ynn else ""),
                _harness.markdown_table(
                    ["member", "derivs ms", "trace(hessian) ms", "/ tanh MLP",
                     "first call s", "derivs / trace(hessian)"]
                    + (["no-YNN derivs ms", "no-YNN derivs / trace(hessian)"] if no_ynn
                       else []),
                    [[r["member"], f"{r['laplacian_s'] * 1e3:.2f}" if "laplacian_s" in r
                      else r.get("error", "-"),
                      f"{r['trace(hessian)_s'] * 1e3:.2f}" if "trace(hessian)_s" in r else "-",
                      vs_tanh(r), f"{r.get('first_call_s', float('nan')):.2f}",
                      _ratio(r, "laplacian", "trace(hessian)")]
                     + ([f"{r['laplacian no-YNN_s'] * 1e3:.2f}" if "laplacian no-YNN_s" in r
                         else "-", _ratio(r, "laplacian no-YNN", "trace(hessian) no-YNN")]
                        if no_ynn else []) for r in mine])))
        mine = [r for r in rows if r["framework"] == fw and r["D"] == 10]
        sections.append((
            f"{'PyTorch' if fw == 'torch' else 'JAX'} Hessian diagonal and Bi-Laplacian, "
            f"D = 10 (ratios to vmap(diag(hessian)) and to the nested Laplacian of the "
            f"Laplacian, {BILAPLACIAN_POINTS} points)",
            _harness.markdown_table(
                ["member", "hessian_diagonal / diag(hessian)", "derivs bilaplacian ms",
                 "bilaplacian / lap(lap)"],
                [[r["member"], _ratio(r, "hessian_diagonal", "diag(hessian)"),
                  f"{r['bilaplacian_s'] * 1e3:.1f}" if "bilaplacian_s" in r else "-",
                  _ratio(r, "bilaplacian", "lap(lap)")] for r in mine])))
    sections.append((
        "hutchinson_laplacian, D = 50, width 256, 256 points (time relative to nested "
        "VHVPs along the same directions)",
        _harness.markdown_table(
            ["framework", "member", "samples", "derivs ms", "nested ms", "derivs / nested"],
            [[r["framework"], r["member"], r["samples"], f"{r['derivs_s'] * 1e3:.2f}",
              f"{r['nested VHVPs_s'] * 1e3:.2f}", _ratio(r, "derivs", "nested VHVPs")]
             for r in data["hutchinson"]])))
    name = "zoo" + ("-quick" if quick else "")
    path = _harness.write(name, "Operators on the architecture zoo (issue 24)", sections, data)
    return f"wrote {path} in {data['seconds']:.0f} s"
