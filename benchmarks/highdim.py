"""High-dimensional Laplacians at STDE scale (issue 27): ``python -m benchmarks highdim``.

One PINN training step of the Allen-Cahn residual ``Delta u + u - u^3 - g`` (STDE's
setting; Shi et al., NeurIPS 2024) with ``u`` a tanh MLP ``D -> 128 -> 128 -> 128 ->
1`` on 100 points, the Laplacian estimated from ``S = 16`` coordinates drawn without
replacement, ``jax.value_and_grad`` (``backward()``) in the weights. Contenders, on
the *same* coordinates (drawn once per step with derivs' sampler, which every
contender is given, so the draw is not what is timed apart):

* **derivs**: ``hutchinson_laplacian(u, S, distribution="coordinates", batch_axis=0)``.
* **STDE** (JAX): the paper's sparse-jet estimator written the way its code does it,
  ``jax.experimental.jet`` of ``u`` along each one-hot direction ``e_i`` (dense), the
  second coefficient times ``D / S``, vmapped over directions and points.
* **SDGD** (randomized first-order AD): ``d^2 u / dx_i^2`` as a Hessian-vector
  product, forward over reverse (``jvp`` of ``grad`` along ``e_i``), per direction.

Time per step (interleaved medians, as ratios to derivs) and memory: XLA's
temporary buffers of the compiled step for JAX (``memory_analysis``), the peak
resident memory added by a step for PyTorch (an upper bound). Then the cost per
sample: the step at ``S = 32`` minus the step at ``S = 16``, over 16, for D from 1e3
to 1e5, with its exponent in D (the issue's target: <= 0.2 once the input is read).
"""

from __future__ import annotations

import math

import numpy as np

from derivs._timing import interleaved_medians

from . import _harness

WIDTH, POINTS, SAMPLES = 128, 100, 16


def _dims(quick: bool) -> list[int]:
    return [100, 1000, 10_000] if quick else [100, 1000, 10_000, 100_000]


# -- JAX --------------------------------------------------------------------------------
def _jax_setup(D: int, seed: int = 0):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), 6)
    sizes = [D, WIDTH, WIDTH, WIDTH, 1]
    params = [(jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros(b))
              for k, a, b in zip(keys, sizes, sizes[1:])]
    x = jax.random.normal(keys[-2], (POINTS, D)) / math.sqrt(D)
    g = jax.random.normal(keys[-1], (POINTS,))
    return params, x, g


def _mlp_jax(params):
    import jax.numpy as jnp

    def u(z):
        h = z
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = params[-1]
        return (h @ w + b)[..., 0]

    return u


def _jax_laplacians(S: int):
    """``name -> lap(params, x, picks)`` for the three contenders."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import jet

    import derivs

    def picked(key, params, x):  # derivs' own draw: the other two get the same picks
        return derivs.backends._jax.random_coordinates(key, S, x.shape[1], x, "bench")

    def with_derivs(params, x, key):
        est = derivs.hutchinson_laplacian(_mlp_jax(params), samples=S,
                                          distribution="coordinates", batch_axis=0)
        return est(key, x)

    def stde(params, x, key):
        D = x.shape[1]
        u = _mlp_jax(params)
        dirs = jax.nn.one_hot(picked(key, params, x), D, dtype=x.dtype)

        def one(z):
            def second(v):
                _, (_, d2) = jet.jet(u, (z,), ((v, jnp.zeros_like(v)),))
                return d2
            return jax.vmap(second)(dirs).sum() * D / S

        return jax.vmap(one)(x)

    def sdgd(params, x, key):
        D = x.shape[1]
        u = _mlp_jax(params)
        picks = picked(key, params, x)
        dirs = jax.nn.one_hot(picks, D, dtype=x.dtype)

        def one(z):
            def second(v, i):
                return jax.jvp(jax.grad(u), (z,), (v,))[1][i]
            return jax.vmap(second)(dirs, picks).sum() * D / S

        return jax.vmap(one)(x)

    return {"derivs": with_derivs, "STDE (jet, one-hot)": stde, "SDGD (HVP)": sdgd}


def _jax_steps(S: int, names=None):
    import jax
    import jax.numpy as jnp

    steps = {}
    for name, lap in _jax_laplacians(S).items():
        if names is not None and name not in names:
            continue

        def loss(params, x, g, key, lap=lap):
            u = _mlp_jax(params)(x)
            r = lap(params, x, key) + u - u ** 3 - g
            return jnp.mean(r ** 2)

        steps[name] = jax.jit(jax.value_and_grad(loss))
    return steps


def _jax_section(quick: bool) -> list[dict]:
    import jax

    rows = []
    for D in _dims(quick):
        params, x, g = _jax_setup(D)
        key = jax.random.key(1)
        steps = _jax_steps(SAMPLES, None if D <= 10_000 or not quick else ["derivs"])
        losses = {k: float(s(params, x, g, key)[0]) for k, s in steps.items()}
        ref = losses["derivs"]
        for k, v in losses.items():  # the same coordinates: the same loss
            assert abs(v - ref) <= 1e-3 * abs(ref) + 1e-5, (D, k, v, ref)
        memory = {}
        for k, s in steps.items():
            m = s.lower(params, x, g, key).compile().memory_analysis()
            memory[k] = None if m is None else m.temp_size_in_bytes / 2 ** 20
        slow = D >= 100_000
        med = interleaved_medians({k: (lambda s=s: s(params, x, g, key)) for k, s in steps.items()},
                                  repeats=3 if slow else 7, inner=1 if slow else 3)
        row = {"framework": "jax", "D": D, **{f"{k} s": v for k, v in med.items()},
               **{f"{k} MiB": v for k, v in memory.items()}}
        rows.append(row)
        print(f"  jax D={D}: " + ", ".join(f"{k} {v * 1e3:.1f} ms / {memory[k]:.1f} MiB"
                                           for k, v in med.items()), flush=True)
    return rows


# -- PyTorch ----------------------------------------------------------------------------
def _torch_setup(D: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    layers = []
    for a, b in zip([D, WIDTH, WIDTH, WIDTH], [WIDTH, WIDTH, WIDTH, 1]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers[:-1])
    x = torch.randn(POINTS, D) / math.sqrt(D)
    g = torch.randn(POINTS)
    return net, x, g


def _torch_steps(net, S: int, names=None):
    import torch

    import derivs

    def u(z):
        return net(z).squeeze(-1)

    est = derivs.hutchinson_laplacian(u, samples=S, distribution="coordinates", batch_axis=0)
    params = dict(net.named_parameters())

    def sdgd_lap(x, seed):
        D = x.shape[1]
        picks = derivs.backends._torch.random_coordinates(seed, S, D, x, "bench")
        dirs = torch.nn.functional.one_hot(picks, D).to(x.dtype)

        def u1(p, z):
            return torch.func.functional_call(net, p, (z,)).squeeze(-1)

        def one(z):
            def second(v, i):
                hv = torch.func.jvp(lambda w: torch.func.grad(u1, argnums=1)(params, w),
                                    (z,), (v,))[1]
                return hv[i]
            return torch.func.vmap(second)(dirs, picks).sum() * D / S

        return torch.func.vmap(one)(x)

    laps = {"derivs": lambda x, seed: est(seed, x), "SDGD (HVP)": sdgd_lap}

    def step(lap):
        def run(x, g, seed):
            net.zero_grad(set_to_none=True)
            out = u(x)
            loss = ((lap(x, seed) + out - out ** 3 - g) ** 2).mean()
            loss.backward()
            return loss.detach()
        return run

    return {k: step(v) for k, v in laps.items() if names is None or k in names}


def _torch_section(quick: bool) -> list[dict]:
    rows = []
    for D in _dims(quick):
        net, x, g = _torch_setup(D)
        steps = _torch_steps(net, SAMPLES)
        losses = {k: float(s(x, g, 1)) for k, s in steps.items()}
        ref = losses["derivs"]
        for k, v in losses.items():
            assert abs(v - ref) <= 1e-3 * abs(ref) + 1e-5, (D, k, v, ref)
        memory = {k: _harness.peak_rss_delta_mb(lambda s=s: s(x, g, 1)) for k, s in steps.items()}
        slow = D >= 100_000
        med = interleaved_medians({k: (lambda s=s: s(x, g, 1)) for k, s in steps.items()},
                                  repeats=3 if slow else 7, inner=1 if slow else 3)
        rows.append({"framework": "torch", "D": D, **{f"{k} s": v for k, v in med.items()},
                     **{f"{k} MiB": v for k, v in memory.items()}})
        print(f"  torch D={D}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()),
              flush=True)
    return rows


# -- cost per sample ----------------------------------------------------------------------
def _per_sample(quick: bool) -> list[dict]:
    import jax

    rows = []
    dims = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    for D in dims:
        params, x, g = _jax_setup(D)
        key = jax.random.key(1)
        j16 = _jax_steps(SAMPLES, ["derivs"])["derivs"]
        j32 = _jax_steps(2 * SAMPLES, ["derivs"])["derivs"]
        net, tx, tg = _torch_setup(D)
        t16 = _torch_steps(net, SAMPLES, ["derivs"])["derivs"]
        t32 = _torch_steps(net, 2 * SAMPLES, ["derivs"])["derivs"]
        med = interleaved_medians({
            "jax 16": lambda: j16(params, x, g, key), "jax 32": lambda: j32(params, x, g, key),
            "torch 16": lambda: t16(tx, tg, 1), "torch 32": lambda: t32(tx, tg, 1)},
            repeats=9, inner=3)
        row = {"D": D}
        for fw in ("jax", "torch"):
            row[f"{fw} step s"] = med[f"{fw} 16"]
            row[f"{fw} per sample s"] = max(med[f"{fw} 32"] - med[f"{fw} 16"], 0.0) / SAMPLES
        rows.append(row)
        print(f"  per sample D={D}: jax {row['jax per sample s'] * 1e6:.0f} us, torch "
              f"{row['torch per sample s'] * 1e6:.0f} us", flush=True)
    return rows


def _exponent(rows, column) -> float | None:
    pts = [(r["D"], r[column]) for r in rows if r[column] > 0]
    if len(pts) < 2:
        return None
    d, t = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(d, t, 1)[0])


def run(quick: bool = False) -> str:
    jrows = _jax_section(quick)
    trows = _torch_section(quick)
    prows = _per_sample(quick)

    def ratio(r, k):
        return f"{r[f'{k} s'] / r['derivs s']:.1f}x" if f"{k} s" in r else "-"

    def mib(r, k):
        v = r.get(f"{k} MiB")
        return "-" if v is None else f"{v:.1f}"

    jax_table = _harness.markdown_table(
        ["D", "derivs ms", "derivs MiB", "STDE ms", "STDE MiB", "SDGD ms", "SDGD MiB",
         "SDGD / derivs", "STDE / derivs"],
        [[f"{r['D']:.0e}", f"{r['derivs s'] * 1e3:.1f}", mib(r, "derivs"),
          f"{r.get('STDE (jet, one-hot) s', float('nan')) * 1e3:.1f}",
          mib(r, "STDE (jet, one-hot)"),
          f"{r.get('SDGD (HVP) s', float('nan')) * 1e3:.1f}", mib(r, "SDGD (HVP)"),
          ratio(r, "SDGD (HVP)"), ratio(r, "STDE (jet, one-hot)")] for r in jrows])
    torch_table = _harness.markdown_table(
        ["D", "derivs ms", "derivs MiB", "SDGD ms", "SDGD MiB", "SDGD / derivs"],
        [[f"{r['D']:.0e}", f"{r['derivs s'] * 1e3:.1f}", mib(r, "derivs"),
          f"{r['SDGD (HVP) s'] * 1e3:.1f}", mib(r, "SDGD (HVP)"), ratio(r, "SDGD (HVP)")]
         for r in trows])
    ex = {fw: _exponent(prows, f"{fw} per sample s") for fw in ("jax", "torch")}
    per_table = _harness.markdown_table(
        ["D", "jax step ms", "jax per sample us", "torch step ms", "torch per sample us"],
        [[f"{r['D']:.0e}", f"{r['jax step s'] * 1e3:.1f}", f"{r['jax per sample s'] * 1e6:.0f}",
          f"{r['torch step s'] * 1e3:.1f}", f"{r['torch per sample s'] * 1e6:.0f}"]
         for r in prows])
    per_table += "\n\nExponent of the cost per sample in D (log-log fit): " + ", ".join(
        f"{fw} {'n/a' if e is None else f'{e:.2f}'}" for fw, e in ex.items())
    sections = [
        (f"JAX: one training step, {POINTS} points, {SAMPLES} coordinates, tanh MLP width "
         f"{WIDTH} (times; MiB: XLA temporaries of the compiled step; ratios: contender / "
         "derivs, above 1 is slower than derivs)", jax_table),
        (f"PyTorch: one training step, {POINTS} points, {SAMPLES} coordinates (MiB: peak "
         "resident memory added by a step, an upper bound; ratio: SDGD / derivs)", torch_table),
        ("Cost per sample: (step at 32 coordinates - step at 16) / 16", per_table),
    ]
    name = "highdim-quick" if quick else "highdim"
    path = _harness.write(name, "High-dimensional Laplacians (issue 27)", sections,
                          {"jax": jrows, "torch": trows, "per_sample": prows,
                           "exponents": ex})
    return f"wrote {path}"
