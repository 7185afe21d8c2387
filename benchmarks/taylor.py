"""Issue 3: Taylor mode and differential operators, side by side in one process.

- pure ``d^k f / dx0^k``, k = 2..8, n = 100, for a sin-exp function and a tanh MLP:
  derivs (jaxpr jets under ``jax.jit``) against nested ``jax.jvp`` (run time and
  first-call compile time), and derivs PyTorch (ATen jets) as a ratio to f;
- the Laplacian of a tanh MLP (D = 50, and D = 3 with 10^4 points): derivs'
  collapsed Taylor mode against the nested-AD Laplacian (trace of the Hessian),
  the loop of Hessian-vector products, and folx's forward Laplacian when installed;
- the Hessian diagonal at D = 1000 of a function with a dense Hessian: the jet
  strategy and the HVP strategy against D vmapped HVPs and the full Hessian;
- the Bi-Laplacian (D = 10) in every layout against the nested Laplacian of the
  Laplacian, the diffusion operator against the dense trace(C H) as the rank of its
  factor grows, and the PyTorch Laplacian under ``torch_compile=True``.

Medians of interleaved repeats; results in ``benchmarks/out/taylor[-quick].{md,json,png}``
(references: ``benchmarks/results/``).
"""

from __future__ import annotations

import time

import numpy as np

import derivs
from derivs._timing import first_call_seconds, interleaved_medians

from . import _harness


def _mlp_params(rng, sizes):
    return [(rng.normal(size=(a, b)) / np.sqrt(a), rng.normal(size=b) * 0.1)
            for a, b in zip(sizes[:-1], sizes[1:])]


def _jax_pure(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    n, batch = 100, 256
    rng = np.random.default_rng(0)
    params = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
              for w, b in _mlp_params(rng, [n, 64, 64, 1])]

    def sinexp(x):
        return jnp.sum(jnp.sin(x) * x**2) * jnp.exp(jnp.mean(x))

    def mlp(x):
        h = x
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        return (h @ params[-1][0] + params[-1][1])[0]

    x = jnp.asarray(rng.uniform(0.1, 0.9, size=(batch, n)), jnp.float32)
    rows = []
    ks = [2, 4, 8] if quick else list(range(2, 9))
    for name, f in {"sin-exp": sinexp, "tanh MLP 100-64-64-1": mlp}.items():
        for k in ks:
            ours = jax.jit(jax.vmap(derivs.partial(f, (0,) * k)))
            nested = jax.jit(jax.vmap(lambda z, k=k, f=f: _nested_jvp(f, z, k)))
            fj = jax.jit(jax.vmap(f))
            t_ours = first_call_seconds(lambda: ours(x))
            t_nested = first_call_seconds(lambda: nested(x))
            np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(nested(x)),
                                       rtol=2e-3, atol=1e-3 * float(jnp.abs(nested(x)).max()))
            med = interleaved_medians({"ours": lambda: ours(x), "nested": lambda: nested(x),
                                       "f": lambda: fj(x)}, repeats=5 if quick else 11,
                                      inner=3)
            rows.append({"function": name, "k": k, "derivs_s": med["ours"],
                         "nested_jvp_s": med["nested"], "f_s": med["f"],
                         "ratio_to_nested": med["ours"] / med["nested"],
                         "derivs_compile_s": t_ours, "nested_compile_s": t_nested})
            print(f"  jax pure k={k} {name}: {med['ours'] / med['nested']:.2f}x nested, "
                  f"compile {t_ours:.2f}s vs {t_nested:.2f}s", flush=True)
    return rows


def _nested_jvp(f, x, k):
    import jax
    import jax.numpy as jnp

    e = jnp.zeros_like(x).at[0].set(1.0)
    g = f
    for _ in range(k):
        g = (lambda h: lambda z: jax.jvp(h, (z,), (e,))[1])(g)
    return g(x)


def _torch_pure(quick: bool) -> list[dict]:
    import torch

    torch.manual_seed(0)
    n, batch = 100, 1024
    w = [torch.randn(n, 64) / 10, torch.randn(64) * 0.1, torch.randn(64, 64) / 8,
         torch.randn(64) * 0.1, torch.randn(64, 1) / 8]

    def sinexp(x):
        return (torch.sin(x) * x**2).sum(-1) * torch.exp(x.mean(-1))

    # Weights are arguments: the engine falls back to nested forward mode for
    # closed-over tensors (see the README).
    def mlp(x, w0, w1, w2, w3, w4):
        h = torch.tanh(x @ w0 + w1)
        h = torch.tanh(h @ w2 + w3)
        return (h @ w4)[..., 0]

    x = torch.rand(batch, n) * 0.8 + 0.1
    rows = []
    for name, (f, extra) in {"sin-exp": (sinexp, ()),
                             "tanh MLP 100-64-64-1": (mlp, tuple(w))}.items():
        for k in ([2, 8] if quick else [2, 4, 6, 8]):
            d = derivs.partial(f, (0,) * k, batch_axis=0)
            d(x, *extra)
            med = interleaved_medians({"ours": lambda: d(x, *extra), "f": lambda: f(x, *extra)},
                                      repeats=5 if quick else 11, inner=3)
            rows.append({"function": name, "k": k, "ratio_to_f": med["ours"] / med["f"]})
            print(f"  torch pure k={k} {name}: {med['ours'] / med['f']:.1f}x f", flush=True)
    return rows


def _laplacian_cases(quick: bool):
    return [("D=50, 256 points", 50, 256), ("D=20, 1024 points", 20, 1024),
            ("D=3, 10^4 points", 3, 2000 if quick else 10_000)]


def case_dimension(label: str) -> int:
    """D of a Laplacian case label ("D=50, 256 points")."""
    return int(label.split(",")[0].removeprefix("D="))


def _jax_laplacian(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    try:
        import folx  # noqa: F401
        from folx import forward_laplacian
    except ImportError:
        forward_laplacian = None
    for label, D, B in _laplacian_cases(quick):
        rng = np.random.default_rng(1)
        params = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
                  for w, b in _mlp_params(rng, [D, 64, 64, 64, 1])]

        def u(x, params=params):
            h = x
            for w, b in params[:-1]:
                h = jnp.tanh(h @ w + b)
            return (h @ params[-1][0] + params[-1][1])[0]

        x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
        fns = {
            "derivs": jax.jit(jax.vmap(derivs.laplacian(u, strategy="traced-jet"))),
            "derivs-auto": jax.jit(jax.vmap(derivs.laplacian(u))),
            # both direction layouts of the jet strategy, for the layout rule
            # (NOTE [direction layout] in derivs._operators)
            "derivs unrolled": _with_unroll_max(10**9, jax.jit(jax.vmap(
                derivs.laplacian(u, strategy="traced-jet"))), x),
            "derivs family": _with_unroll_max(0, jax.jit(jax.vmap(
                derivs.laplacian(u, strategy="traced-jet"))), x),
            # NOTE [narrow family seeds]: the family with narrow unit seeds
            "derivs family narrow seeds": _with_narrow_seeds(jax.jit(jax.vmap(
                derivs.laplacian(u, strategy="traced-jet"))), x),
            "trace(hessian)": jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(u)(z)))),
            "HVP loop": jax.jit(jax.vmap(derivs.laplacian(u, strategy="reverse"))),
            "f": jax.jit(jax.vmap(u)),
        }
        if forward_laplacian is not None:
            fns["folx"] = jax.jit(jax.vmap(lambda z: forward_laplacian(u)(z).laplacian))
        ref = np.asarray(fns["trace(hessian)"](x), np.float64)
        for name, fn in fns.items():
            if name != "f":
                np.testing.assert_allclose(np.asarray(fn(x)), ref, rtol=1e-3,
                                           atol=1e-4 * np.abs(ref).max())
        med = interleaved_medians({k: (lambda fn=fn: fn(x)) for k, fn in fns.items()},
                                  repeats=5 if quick else 11, inner=3)
        row = {"case": label, "framework": "jax", **{f"{k}_s": v for k, v in med.items()}}
        rows.append(row)
        print(f"  jax laplacian {label}: " + ", ".join(
            f"{k} {v / med['trace(hessian)']:.2f}x" for k, v in med.items()), flush=True)
    return rows


def _with_narrow_seeds(jitted, x):
    """``jitted`` traced (and compiled) once in the family layout with narrow family
    seeds on; later calls reuse that executable."""
    from derivs.backends.jax_engine import _engine

    saved = _engine.NARROW_FAMILY_SEEDS
    _engine.NARROW_FAMILY_SEEDS = True
    try:
        _unroll_max_call(0, jitted, x)
    finally:
        _engine.NARROW_FAMILY_SEEDS = saved
    return jitted


def _with_unroll_max(limit, jitted, x):
    """``jitted`` traced (and compiled) once with the direction-layout rule set to
    ``limit``; later calls reuse that executable."""
    _unroll_max_call(limit, jitted, x)
    return jitted


def _first_order(quick: bool) -> list[dict]:
    """``partials(f, [0, 1, ..., n-1])`` of a scalar tanh MLP: the planner's reverse
    plan (one gradient) against forward jets, with the framework's gradient."""
    import jax
    import jax.numpy as jnp
    import torch

    n = 200
    rng = np.random.default_rng(3)
    w = rng.normal(size=(n, 64)) / np.sqrt(n)
    reqs = list(range(n))
    rows = []
    W = jnp.asarray(w, jnp.float32)
    fj = lambda x: jnp.sum(jnp.tanh(x @ W) ** 2)  # noqa: E731
    x = jnp.asarray(rng.normal(size=n), jnp.float32)
    stack = lambda t: jax.jit(lambda z: jnp.stack(list(t(z).values())))  # noqa: E731
    jfns = {"derivs": stack(derivs.partials(fj, reqs)),
            "derivs traced-jet": stack(derivs.partials(fj, reqs, strategy="traced-jet")),
            "gradient": jax.jit(jax.grad(fj))}
    assert derivs.explain(derivs.partials(fj, reqs), x).strategy == "reverse"
    for fn in jfns.values():
        np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(jfns["gradient"](x)),
                                   rtol=1e-4, atol=1e-5)
    med = interleaved_medians({k: (lambda fn=fn: fn(x)) for k, fn in jfns.items()},
                              repeats=5 if quick else 11, inner=5)
    rows.append({"framework": "jax", "n": n, **{f"{k}_s": v for k, v in med.items()}})
    Wt = torch.tensor(w, dtype=torch.float32)
    ft = lambda x, W: (torch.tanh(x @ W) ** 2).sum()  # noqa: E731
    xt = torch.tensor(np.asarray(x))
    ours, jets = derivs.partials(ft, reqs), derivs.partials(ft, reqs, strategy="traced-jet")
    tfns = {"derivs": lambda: torch.stack(list(ours(xt, Wt).values())),
            "derivs traced-jet": lambda: torch.stack(list(jets(xt, Wt).values())),
            "gradient": lambda: torch.func.grad(ft)(xt, Wt)}
    for fn in tfns.values():
        torch.testing.assert_close(fn(), tfns["gradient"](), rtol=1e-4, atol=1e-5)
    med = interleaved_medians(tfns, repeats=5 if quick else 11, inner=5)
    rows.append({"framework": "torch", "n": n, **{f"{k}_s": v for k, v in med.items()}})
    for r in rows:
        print(f"  first-order {r['framework']} n={n}: derivs {r['derivs_s'] / r['gradient_s']:.2f}x, "
              f"traced-jet {r['derivs traced-jet_s'] / r['gradient_s']:.2f}x the gradient",
              flush=True)
    return rows


def _unroll_max_call(limit, fn, *args):
    """One call of ``fn`` in the unrolled layout (``limit`` > 0) or the family one
    (``limit == 0``), whatever the direction-layout rule would pick."""
    from derivs import _operators

    saved = _operators.FORCED_LAYOUT
    _operators.FORCED_LAYOUT = "unrolled" if limit > 0 else "family"
    try:
        return fn(*args)
    finally:
        _operators.FORCED_LAYOUT = saved


def _torch_laplacian(quick: bool) -> list[dict]:
    import torch

    rows = []
    for label, D, B in _laplacian_cases(quick):
        g = torch.Generator().manual_seed(1)
        sizes = [D, 64, 64, 64, 1]
        ws = [(torch.randn(a, b, generator=g) / a**0.5, torch.randn(b, generator=g) * 0.1)
              for a, b in zip(sizes[:-1], sizes[1:])]

        flat = [t for pair in ws for t in pair]

        def u(x, *flat):  # weights as arguments, as the engine needs
            h = x
            for i in range(0, len(flat) - 2, 2):
                h = torch.tanh(h @ flat[i] + flat[i + 1])
            return (h @ flat[-2] + flat[-1])[..., 0]

        x = torch.randn(B, D, generator=g)
        ours = derivs.laplacian(u, batch_axis=0, strategy="traced-jet")
        hvp = derivs.laplacian(u, batch_axis=0, strategy="reverse")
        hess = torch.func.vmap(lambda z: torch.trace(torch.func.hessian(u)(z, *flat)))
        ref = hess(x)
        for fn in (ours, hvp):
            torch.testing.assert_close(fn(x, *flat), ref, rtol=1e-3,
                                       atol=1e-4 * float(ref.abs().max()))
        fns = {"derivs": lambda: ours(x, *flat),
               # both direction layouts, for the layout rule
               "derivs unrolled": lambda: _unroll_max_call(10**9, ours, x, *flat),
               "derivs family": lambda: _unroll_max_call(0, ours, x, *flat),
               "trace(hessian)": lambda: hess(x),
               "HVP loop": lambda: hvp(x, *flat), "f": lambda: u(x, *flat)}
        med = interleaved_medians(fns, repeats=5 if quick else 11, inner=3)
        rows.append({"case": label, "framework": "torch", **{f"{k}_s": v for k, v in med.items()}})
        print(f"  torch laplacian {label}: " + ", ".join(
            f"{k} {v / med['trace(hessian)']:.2f}x" for k, v in med.items()), flush=True)
    return rows


def _hessian_diagonal(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    D = 300 if quick else 1000
    rng = np.random.default_rng(2)
    A = rng.normal(size=(D, D)) / np.sqrt(D)
    Aj = jnp.asarray(A, jnp.float32)
    At = torch.tensor(A, dtype=torch.float32)

    def fj(x):  # dense Hessian: A^T diag(-sin(Ax)) A + diag(...)
        return jnp.sum(jnp.sin(Aj @ x)) + jnp.sum(x**4) / 4

    def ft(x):
        return torch.sin(At @ x).sum() + (x**4).sum() / 4

    x = rng.normal(size=D)
    xj, xt = jnp.asarray(x, jnp.float32), torch.tensor(x, dtype=torch.float32)
    eye = jnp.eye(D, dtype=jnp.float32)
    rows = []
    jfns = {
        "derivs traced-jet": jax.jit(derivs.hessian_diagonal(fj, strategy="traced-jet")),
        "derivs reverse": jax.jit(derivs.hessian_diagonal(fj, strategy="reverse")),
        "derivs auto": jax.jit(derivs.hessian_diagonal(fj)),
        "derivs traced-jet chunk_size=100": jax.jit(derivs.hessian_diagonal(
            fj, strategy="traced-jet", chunk_size=100)),
        "D HVPs (vmap)": jax.jit(lambda z: jnp.sum(jax.vmap(
            lambda v: jax.jvp(jax.grad(fj), (z,), (v,))[1])(eye) * eye, axis=1)),
        "diag(jax.hessian)": jax.jit(lambda z: jnp.diag(jax.hessian(fj)(z))),
        "f": jax.jit(fj),
    }
    ref = np.asarray(jfns["diag(jax.hessian)"](xj))
    for name, fn in jfns.items():
        if name != "f":
            np.testing.assert_allclose(np.asarray(fn(xj)), ref, rtol=1e-3, atol=1e-3)
    med = interleaved_medians({k: (lambda fn=fn: fn(xj)) for k, fn in jfns.items()},
                              repeats=5 if quick else 11)
    # XLA's buffer assignment: the temporary memory one call needs (exact, not RSS)
    mem = {k: fn.lower(xj).compile().memory_analysis().temp_size_in_bytes / 2**20
           for k, fn in jfns.items()}
    rows.append({"framework": "jax", "D": D, **{f"{k}_s": v for k, v in med.items()},
                 **{f"{k}_temp_MiB": v for k, v in mem.items()}})
    print(f"  jax hessian diagonal D={D}: " + ", ".join(
        f"{k} {v / med['D HVPs (vmap)']:.2f}x" for k, v in med.items()), flush=True)
    eyet = torch.eye(D)
    tfns = {
        "derivs traced-jet": derivs.hessian_diagonal(ft, strategy="traced-jet"),
        "derivs reverse": derivs.hessian_diagonal(ft, strategy="reverse"),
        "derivs auto": derivs.hessian_diagonal(ft),
        "derivs reverse chunk_size=100": derivs.hessian_diagonal(ft, strategy="reverse",
                                                                 chunk_size=100),
        "D HVPs (vmap)": lambda z: (torch.func.vmap(
            lambda v: torch.func.jvp(torch.func.grad(ft), (z,), (v,))[1])(eyet) * eyet).sum(1),
        "diag(torch.func.hessian)": lambda z: torch.diagonal(torch.func.hessian(ft)(z)),
        "f": ft,
    }
    ref = tfns["diag(torch.func.hessian)"](xt)
    for name, fn in tfns.items():
        if name != "f":
            torch.testing.assert_close(fn(xt), ref, rtol=1e-3, atol=1e-3)
    med = interleaved_medians({k: (lambda fn=fn: fn(xt)) for k, fn in tfns.items()},
                              repeats=5 if quick else 11)
    rows.append({"framework": "torch", "D": D, **{f"{k}_s": v for k, v in med.items()}})
    print(f"  torch hessian diagonal D={D}: " + ", ".join(
        f"{k} {v / med['D HVPs (vmap)']:.2f}x" for k, v in med.items()), flush=True)
    return rows


def _forced_layout(name: str, op, x, tables: bool = False):
    """A call of ``op(x)`` with the mixed-term layout forced to ``name`` (NOTE
    [mixed-term layout] in derivs._collapsed); ``tables``: the stacked rules by
    their Faa di Bruno tables, not by contractions (NOTE [contracted Bi-Laplacian]
    in derivs.core._stacked; the A/B of that rule)."""
    from derivs import _collapsed
    from derivs.core import _stacked

    def call():
        saved = _collapsed.mixed_layout, _stacked.Layout.contracted
        _collapsed.mixed_layout = lambda fw, device, contracted: name
        if tables:
            _stacked.Layout.contracted = property(lambda self: None)
        try:
            return op(x)
        finally:
            _collapsed.mixed_layout, _stacked.Layout.contracted = saved
    return call


def _bilaplacian(quick: bool) -> list[dict]:
    """The Bi-Laplacian of a tanh MLP 10-W-W-W-1 (the issue's net, W = 256; 64 in
    quick mode) against the nested Laplacian of the Laplacian: every layout of
    mixed fourth-order terms (NOTE [mixed-term layout] in derivs._collapsed)."""
    import jax
    import jax.numpy as jnp
    import torch

    from derivs import _collapsed

    D, W, B = 10, (64 if quick else 256), (256 if quick else 512)
    rng = np.random.default_rng(4)
    params = _mlp_params(rng, [D, W, W, W, 1])
    x = rng.normal(size=(B, D)) / 2
    rows = []

    net = torch.nn.Sequential(*[m for (a, b) in zip([D, W, W, W], [W, W, W, 1])
                                for m in (torch.nn.Linear(a, b), torch.nn.Tanh())][:-1])
    with torch.no_grad():
        for lin, (w, b) in zip([m for m in net if isinstance(m, torch.nn.Linear)], params):
            lin.weight.copy_(torch.as_tensor(w.T))
            lin.bias.copy_(torch.as_tensor(b))
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    named = dict(net.named_parameters())

    def u1(z):
        return torch.func.functional_call(net, named, (z,)).squeeze(-1)

    lap = lambda h: (lambda z: torch.func.hessian(h)(z).diagonal().sum())  # noqa: E731
    nested = torch.func.vmap(lap(lap(u1)))
    xt = torch.as_tensor(x, dtype=torch.float32)

    op = derivs.bilaplacian(u, batch_axis=0)

    def layout(name):
        return _forced_layout(name, op, xt)

    with torch.no_grad():
        ref = nested(xt)
        fns = {"derivs": lambda: op(xt),
               "derivs coordinate groups": layout("coordinate groups"),
               "derivs stacked pairs": layout("stacked pairs"),
               "derivs stacked mixed": layout("stacked"),
               "derivs stacked mixed, tables": _forced_layout("stacked", op, xt, tables=True),
               "nested lap(lap)": lambda: nested(xt), "f": lambda: u(xt)}
        for name, fn in fns.items():
            if name != "f":
                torch.testing.assert_close(fn(), ref, rtol=2e-3,
                                           atol=2e-4 * float(ref.abs().max()))
        med = interleaved_medians(fns, repeats=3 if quick else 7)
    rows.append({"framework": "torch", "D": D, "width": W, "points": B,
                 **{f"{k}_s": v for k, v in med.items()}})

    jparams = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in params]

    def uj(z):
        h = z
        for w, b in jparams[:-1]:
            h = jnp.tanh(h @ w + b)
        return (h @ jparams[-1][0] + jparams[-1][1])[..., 0]

    lapj = lambda h: (lambda z: jnp.trace(jax.hessian(h)(z)))  # noqa: E731
    pairs_call = _collapsed.Call(np.eye(D), _collapsed._bilaplacian_call(D).terms,
                                 units=True).as_univariate()
    xj = jnp.asarray(x, jnp.float32)
    jfns = {"derivs": jax.jit(derivs.bilaplacian(uj, batch_axis=0)),
            "derivs (vmap)": jax.jit(jax.vmap(derivs.bilaplacian(uj))),
            "derivs pair family": jax.jit(_collapsed.make(uj, 0, 0, "pairs",
                                                   lambda b, z, s, axis: pairs_call)),
            "nested lap(lap)": jax.jit(jax.vmap(lapj(lapj(uj)))), "f": jax.jit(uj)}
    refj = np.asarray(jfns["nested lap(lap)"](xj))
    for name, fn in jfns.items():
        if name != "f":
            np.testing.assert_allclose(np.asarray(fn(xj)), refj, rtol=2e-3,
                                       atol=2e-4 * np.abs(refj).max())
    med = interleaved_medians({k: (lambda fn=fn: fn(xj)) for k, fn in jfns.items()},
                              repeats=3 if quick else 7)
    mem = {k: fn.lower(xj).compile().memory_analysis().temp_size_in_bytes / 2**20
           for k, fn in jfns.items()}
    rows.append({"framework": "jax", "D": D, "width": W, "points": B,
                 **{f"{k}_s": v for k, v in med.items()},
                 **{f"{k}_temp_MiB": v for k, v in mem.items()}})
    for r in rows:
        print(f"  bilaplacian {r['framework']}: " + ", ".join(
            f"{k[:-2]} {v / r['nested lap(lap)_s']:.3f}x" for k, v in r.items()
            if k.endswith("_s")), flush=True)
    return rows


def _diffusion(quick: bool) -> list[dict]:
    """tr(S S^T Hess u) + b . grad u for S of rank r, D = 50 (20 quick): derivs'
    collapsed pass of r directions against the dense trace(C H) + b . grad."""
    import jax
    import jax.numpy as jnp
    import torch

    D, B = (20 if quick else 50), 256
    rng = np.random.default_rng(6)
    params = _mlp_params(rng, [D, 64, 64, 1])
    x = rng.normal(size=(B, D))
    b = rng.normal(size=D)
    rows = []
    jp = [(jnp.asarray(w, jnp.float32), jnp.asarray(c, jnp.float32)) for w, c in params]
    tp = [(torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(c, dtype=torch.float32))
          for w, c in params]

    def uj(z):
        h = z
        for w, c in jp[:-1]:
            h = jnp.tanh(h @ w + c)
        return (h @ jp[-1][0] + jp[-1][1])[..., 0]

    def ut(z):
        h = z
        for w, c in tp[:-1]:
            h = torch.tanh(h @ w + c)
        return (h @ tp[-1][0] + tp[-1][1])[..., 0]

    for r in ([1, 5, D] if quick else [1, 5, 25, D]):
        S = rng.normal(size=(D, r)) / np.sqrt(r)
        C = S @ S.T
        Sj, Cj, bj = (jnp.asarray(a, jnp.float32) for a in (S, C, b))
        xj = jnp.asarray(x, jnp.float32)
        ours = jax.jit(derivs.diffusion_operator(uj, Sj, bj, batch_axis=0))
        dense = jax.jit(jax.vmap(lambda z: jnp.sum(Cj * jax.hessian(uj)(z))
                                 + jax.grad(uj)(z) @ bj))
        ref = np.asarray(dense(xj))
        np.testing.assert_allclose(np.asarray(ours(xj)), ref, rtol=2e-3,
                                   atol=2e-4 * np.abs(ref).max())
        med = interleaved_medians({"derivs": lambda: ours(xj), "dense": lambda: dense(xj)},
                                  repeats=3 if quick else 7, inner=3)
        rows.append({"framework": "jax", "D": D, "rank": r, "derivs_s": med["derivs"],
                     "dense_s": med["dense"]})
        St, Ct, bt = (torch.as_tensor(a, dtype=torch.float32) for a in (S, C, b))
        xt = torch.as_tensor(x, dtype=torch.float32)
        ourt = derivs.diffusion_operator(ut, St, bt, batch_axis=0)
        denset = torch.func.vmap(lambda z: (Ct * torch.func.hessian(ut)(z)).sum()
                                 + torch.func.grad(ut)(z) @ bt)
        with torch.no_grad():
            reft = denset(xt)
            torch.testing.assert_close(ourt(xt), reft, rtol=2e-3,
                                       atol=2e-4 * float(reft.abs().max()))
            med = interleaved_medians({"derivs": lambda: ourt(xt), "dense": lambda: denset(xt)},
                                      repeats=3 if quick else 7, inner=3)
        rows.append({"framework": "torch", "D": D, "rank": r, "derivs_s": med["derivs"],
                     "dense_s": med["dense"]})
        for row in rows[-2:]:
            print(f"  diffusion {row['framework']} D={D} r={r}: derivs "
                  f"{row['derivs_s'] / row['dense_s']:.3f}x dense", flush=True)
    return rows


def _torch_compile(quick: bool) -> list[dict]:
    """``torch_compile=True`` on the PyTorch Laplacian (D = 50 module) against the
    eager family and the Hessian trace; first-call (compile) time apart."""
    import torch

    D, B = 50, 256
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 1))
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    named = dict(net.named_parameters())
    hess = torch.func.vmap(lambda z: torch.func.hessian(
        lambda y: torch.func.functional_call(net, named, (y,)).squeeze(-1))(z).diagonal().sum())
    x = torch.randn(B, D)
    eager = derivs.laplacian(u, batch_axis=0)
    compiled = derivs.laplacian(u, batch_axis=0, torch_compile=True)
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(x)
        first = time.perf_counter() - t0
        ref = hess(x)
        for fn in (eager, compiled):
            torch.testing.assert_close(fn(x), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
        med = interleaved_medians({"derivs eager": lambda: eager(x),
                                   "derivs torch_compile": lambda: compiled(x),
                                   "trace(hessian)": lambda: hess(x)},
                                  repeats=5 if quick else 11, inner=3)
    row = {"D": D, "points": B, "compile_first_call_s": first,
           **{f"{k}_s": v for k, v in med.items()}}
    print("  torch_compile laplacian: " + ", ".join(
        f"{k[:-2]} {v / row['trace(hessian)_s']:.3f}x" for k, v in row.items()
        if k.endswith("_s") and k != "compile_first_call_s") + f", first call {first:.1f}s",
        flush=True)
    return [row]


def _synced(device: str, fn):
    """``fn`` followed by a device synchronization (CUDA runs asynchronously)."""
    import torch

    if not device.startswith("cuda"):
        return fn
    return lambda: (fn(), torch.cuda.synchronize())[0]


def _tanh_net(sizes, device):
    import torch

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(device)


def _jet_operator(name: str, f, x):
    """jet-for-pytorch's ``laplacian`` / ``bilaplacian`` transform of ``f`` (an
    anchor on GPU machines: it needs Python >= 3.12), or None when absent."""
    try:
        import importlib

        module = importlib.import_module(f"jet.{name}")
        return getattr(module, name)(f, x)
    except Exception:  # noqa: BLE001 - not installed, or another API version
        return None


def _torch_device(device: str, quick: bool) -> list[dict]:
    """The issue-16 device checks in PyTorch: the Laplacian of jet-for-pytorch's
    benchmark net (tanh MLP 50-768-768-512-512-1, batch 2048) eager and with
    ``torch_compile=True``, and the Bi-Laplacian (D = 10, 10-256-256-256-1, batch
    2048) in every layout, against nested references and jet-for-pytorch."""
    import torch

    rows = []
    scale, B = (8, 256) if quick else (1, 2048)
    torch.manual_seed(0)
    net = _tanh_net([50, 768 // scale, 768 // scale, 512 // scale, 512 // scale, 1], device)
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    named = dict(net.named_parameters())

    def u1(z):
        return torch.func.functional_call(net, named, (z,)).squeeze(-1)

    x = torch.randn(B, 50, device=device)
    hess = torch.func.vmap(lambda z: torch.func.hessian(u1)(z).diagonal().sum())
    fns = {"derivs (module)": derivs.laplacian(u, batch_axis=0),
           "derivs torch_compile": derivs.laplacian(u, batch_axis=0, torch_compile=True),
           "trace(hessian)": hess,
           "trace(hessian) compiled": torch.compile(hess)}
    jet = _jet_operator("laplacian", u, x)
    if jet is not None:
        fns["jet-for-pytorch"] = jet
        fns["jet-for-pytorch compiled"] = torch.compile(jet)
    with torch.no_grad():
        ref = hess(x)
        firsts = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            got = _synced(device, lambda fn=fn: fn(x))()
            firsts[name] = time.perf_counter() - t0
            torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-4 * float(ref.abs().max()))
        med = interleaved_medians({k: _synced(device, lambda fn=fn: fn(x))
                                   for k, fn in fns.items()}, repeats=3 if quick else 11)
    rows.append({"case": "laplacian, jet's net", "device": device, "points": B,
                 "reference": "trace(hessian)", **{f"{k}_s": v for k, v in med.items()},
                 **{f"{k}_first_s": v for k, v in firsts.items()}})

    D, W = 10, 256 // scale
    net4 = _tanh_net([D, W, W, W, 1], device)
    u4 = lambda z: net4(z).squeeze(-1)  # noqa: E731
    named4 = dict(net4.named_parameters())

    def u41(z):
        return torch.func.functional_call(net4, named4, (z,)).squeeze(-1)

    lap = lambda h: (lambda z: torch.func.hessian(h)(z).diagonal().sum())  # noqa: E731
    nested = torch.func.vmap(lap(lap(u41)))
    x4 = torch.randn(B, D, device=device)
    op = derivs.bilaplacian(u4, batch_axis=0)
    compiled = derivs.bilaplacian(u4, batch_axis=0, torch_compile=True)

    def layout(name, which=op):
        return _forced_layout(name, which, x4)

    fns4 = {"derivs": lambda: op(x4), "stacked pairs": layout("stacked pairs"),
            "stacked mixed": layout("stacked"), "coordinate groups": layout("coordinate groups"),
            "stacked mixed, tables": _forced_layout("stacked", op, x4, tables=True),
            "derivs torch_compile": lambda: compiled(x4),
            "stacked pairs torch_compile": layout("stacked pairs", compiled),
            "nested lap(lap)": lambda: nested(x4)}
    jet4 = _jet_operator("bilaplacian", u4, x4)
    if jet4 is not None:
        fns4["jet-for-pytorch"] = lambda: jet4(x4)
    with torch.no_grad():
        ref4 = nested(x4)
        for name, fn in fns4.items():
            torch.testing.assert_close(_synced(device, fn)(), ref4, rtol=2e-3,
                                       atol=2e-4 * float(ref4.abs().max()))
        med = interleaved_medians({k: _synced(device, fn) for k, fn in fns4.items()},
                                  repeats=3 if quick else 7)
    rows.append({"case": "bilaplacian D=10", "device": device, "points": B,
                 "reference": "nested lap(lap)", **{f"{k}_s": v for k, v in med.items()}})
    for r in rows:
        print(f"  {r['case']} ({device}): " + ", ".join(
            f"{k[:-2]} {v / r[r['reference'] + '_s']:.3f}x" for k, v in r.items()
            if k.endswith("_s") and not k.endswith("_first_s")), flush=True)
    return rows


def run_device(quick: bool, device: str) -> str:
    """The device sections only (``python -m benchmarks taylor --device cuda``)."""
    t0 = time.perf_counter()
    data = {"quick": quick, "device": device, "torch": _torch_device(device, quick)}
    sections = [(f"PyTorch operators on {device} (time relative to the reference)",
                 _harness.markdown_table(
                     ["case", "points", "contender", "ms", "ratio", "first call s"],
                     [[r["case"], r["points"], k[:-2], f"{v * 1e3:.2f}",
                       f"{v / r[r['reference'] + '_s']:.3f}x",
                       _fmt(r.get(k[:-2] + "_first_s"))]
                      for r in data["torch"] for k, v in r.items()
                      if k.endswith("_s") and not k.endswith("_first_s")]))]
    data["seconds"] = time.perf_counter() - t0
    name = f"taylor-{device.split(':')[0]}" + ("-quick" if quick else "")
    path = _harness.write(name, f"Taylor operators on {device} (issue 16)", sections, data)
    return f"wrote {path} in {data['seconds']:.0f} s"


def run(quick: bool = False, device: str = "cpu") -> str:
    if device != "cpu":
        return run_device(quick, device)
    import jax

    jax.config.update("jax_enable_x64", False)
    t0 = time.perf_counter()
    data = {"quick": quick}
    print("hessian diagonal", flush=True)
    data["hessian_diagonal"] = _hessian_diagonal(quick)
    print("laplacian", flush=True)
    data["laplacian"] = _jax_laplacian(quick) + _torch_laplacian(quick)
    print("pure k-th derivatives", flush=True)
    data["pure_jax"] = _jax_pure(quick)
    data["pure_torch"] = _torch_pure(quick)
    print("first-order request sets", flush=True)
    data["first_order"] = _first_order(quick)
    print("bi-laplacian", flush=True)
    data["bilaplacian"] = _bilaplacian(quick)
    print("diffusion operator", flush=True)
    data["diffusion"] = _diffusion(quick)
    print("torch_compile", flush=True)
    data["torch_compile"] = _torch_compile(quick)
    sections = [
        ("Pure d^k f/dx0^k, JAX (batch 256 via vmap, n = 100, float32, jit)", _harness.markdown_table(
            ["function", "k", "derivs / nested jvp", "derivs compile s", "nested compile s"],
            [[r["function"], r["k"], f"{r['ratio_to_nested']:.2f}",
              f"{r['derivs_compile_s']:.2f}", f"{r['nested_compile_s']:.2f}"]
             for r in data["pure_jax"]])),
        ("Pure d^k f/dx0^k, PyTorch eager (batch 1024, n = 100)", _harness.markdown_table(
            ["function", "k", "derivs / f"],
            [[r["function"], r["k"], f"{r['ratio_to_f']:.1f}x"] for r in data["pure_torch"]])),
        ("Laplacian of a tanh MLP (time relative to trace of the Hessian)",
         _harness.markdown_table(
             ["framework", "case", "contender", "ms", "ratio"],
             [[r["framework"], r["case"], k[:-2], f"{v * 1e3:.2f}",
               f"{v / r['trace(hessian)_s']:.2f}x"]
              for r in data["laplacian"] for k, v in r.items() if k.endswith("_s")])),
        ("Hessian diagonal, dense Hessian (time relative to D vmapped HVPs)",
         _harness.markdown_table(
             ["framework", "D", "contender", "ms", "ratio", "XLA temp MiB"],
             [[r["framework"], r["D"], k[:-2], f"{v * 1e3:.2f}",
               f"{v / r['D HVPs (vmap)_s']:.2f}x",
               _fmt(r.get(k[:-2] + "_temp_MiB"))]
              for r in data["hessian_diagonal"] for k, v in r.items() if k.endswith("_s")])),
        ("Bi-Laplacian, D = 10, tanh MLP (time relative to the nested Laplacian of the "
         "Laplacian; NOTE [mixed-term layout])",
         _harness.markdown_table(
             ["framework", "width", "points", "contender", "ms", "ratio", "XLA temp MiB"],
             [[r["framework"], r["width"], r["points"], k[:-2], f"{v * 1e3:.1f}",
               f"{v / r['nested lap(lap)_s']:.3f}x", _fmt(r.get(k[:-2] + "_temp_MiB"))]
              for r in data["bilaplacian"] for k, v in r.items() if k.endswith("_s")])),
        ("Diffusion operator tr(S S^T H) + b . grad, S of rank r (time relative to the "
         "dense trace(C H) + b . grad)",
         _harness.markdown_table(
             ["framework", "D", "rank r", "derivs ms", "dense ms", "ratio"],
             [[r["framework"], r["D"], r["rank"], f"{r['derivs_s'] * 1e3:.2f}",
               f"{r['dense_s'] * 1e3:.2f}", f"{r['derivs_s'] / r['dense_s']:.3f}x"]
              for r in data["diffusion"]])),
        ("PyTorch Laplacian with torch_compile=True (D = 50 module, 256 points; CPU)",
         _harness.markdown_table(
             ["contender", "ms", "ratio to trace(hessian)"],
             [[k[:-2], f"{v * 1e3:.2f}", f"{v / r['trace(hessian)_s']:.3f}x"]
              for r in data["torch_compile"] for k, v in r.items()
              if k.endswith("_s") and k != "compile_first_call_s"]
             + [["first call (compile)", f"{r['compile_first_call_s'] * 1e3:.0f}", ""]
                for r in data["torch_compile"]])),
        ("All n first-order partials of a scalar MLP (planner: reverse vs jets)",
         _harness.markdown_table(
             ["framework", "n", "contender", "ms", "ratio to the gradient"],
             [[r["framework"], r["n"], k[:-2], f"{v * 1e3:.3f}", f"{v / r['gradient_s']:.2f}x"]
              for r in data["first_order"] for k, v in r.items() if k.endswith("_s")])),
    ]
    data["seconds"] = time.perf_counter() - t0
    path = _harness.write("taylor-quick" if quick else "taylor",
                          "Taylor mode and differential operators (issue 3)", sections, data)
    return f"wrote {path} in {data['seconds']:.0f} s"


def _fmt(v):
    return "" if v is None else f"{v:.2f}"
