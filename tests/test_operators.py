"""Differential operators against independent oracles: sympy's exact derivatives,
dense float64 ``jax.hessian`` / ``torch.func.hessian``, nested forward mode, and
the timings recorded by ``python -m benchmarks taylor`` (for the planner's choice)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs
from derivs import backends
from derivs import _operators

from ._expressions import exact_partial, make_cases, to_array_fn
from ._frameworks import FRAMEWORKS, array, math_ns, to_numpy

STRATEGIES = ["traced-jet", "reverse"]
# JAX's jet strategy has two direction layouts (NOTE [direction layout] in
# derivs._operators); D = 4 here is unrolled, "/family" forces the vmapped family.
ROUTES = ["traced-jet", "traced-jet/family", "reverse"]


def _route(route, fw, monkeypatch):
    strategy, _, layout = route.partition("/")
    if layout == "family":  # both frameworks (torch_engine._family for PyTorch)
        monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", 0)
    return strategy


def _mlp(fw, dtype="float64"):
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(size=(4, 8)) / 2, rng.normal(size=8) * 0.1
    w2 = rng.normal(size=8) / 3
    if fw == "jax":
        W1, B1, W2 = (jnp.asarray(a, dtype) for a in (w1, b1, w2))
        return lambda x: jnp.tanh(jnp.tanh(x @ W1 + B1) @ W2) * jnp.sum(jnp.sin(x) * x, -1)
    W1, B1, W2 = (torch.tensor(a, dtype=getattr(torch, dtype)) for a in (w1, b1, w2))
    return lambda x: torch.tanh(torch.tanh(x @ W1 + B1) @ W2) * (torch.sin(x) * x).sum(-1)


def _dense_hessian(x):
    f = _mlp("jax")
    return np.asarray(jax.hessian(f)(jnp.asarray(x)))


X = np.array([0.3, -0.7, 0.5, 1.1])
XB = np.random.default_rng(4).normal(size=(6, 4))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("route", ROUTES)
def test_laplacian_and_diagonal_equal_dense_hessian(fw, route, monkeypatch):
    strategy = _route(route, fw, monkeypatch)
    f = _mlp(fw)
    H = _dense_hessian(X)
    lap = to_numpy(derivs.laplacian(f, strategy=strategy)(array(fw, X)))
    diag = to_numpy(derivs.hessian_diagonal(f, strategy=strategy)(array(fw, X)))
    np.testing.assert_allclose(lap, np.trace(H), rtol=1e-12)
    np.testing.assert_allclose(diag, np.diag(H), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("route", ROUTES)
def test_batch_axis_gives_each_sample_its_operator(fw, route, monkeypatch):
    strategy = _route(route, fw, monkeypatch)
    f = _mlp(fw)
    Hs = [_dense_hessian(x) for x in XB]
    lap = to_numpy(derivs.laplacian(f, batch_axis=0, strategy=strategy)(array(fw, XB)))
    diag = to_numpy(derivs.hessian_diagonal(f, batch_axis=0, strategy=strategy)(array(fw, XB)))
    np.testing.assert_allclose(lap, [np.trace(H) for H in Hs], rtol=1e-11)
    np.testing.assert_allclose(diag, [np.diag(H) for H in Hs], rtol=1e-11, atol=1e-13)


def test_hessian_diagonal_of_vector_output_and_matrix_argument():
    """Shape: output shape + argument shape; each output's own diagonal."""
    f = lambda x: jnp.stack([jnp.sum(jnp.sin(x) ** 2), jnp.prod(x) * jnp.sum(x ** 3)])
    x = jnp.asarray(np.linspace(0.2, 1.3, 6).reshape(2, 3))
    out = derivs.hessian_diagonal(f)(x)
    assert out.shape == (2, 2, 3)
    H = jax.hessian(f)(x).reshape(2, 6, 6)
    np.testing.assert_allclose(out.reshape(2, 6), np.stack([np.diag(h) for h in H]), rtol=1e-12)


CASES = make_cases(40, seed=99)


@pytest.mark.parametrize("fw,strategy", [("jax", "traced-jet"), ("jax", "nested-forward"),
                                         ("torch", "traced-jet"), ("torch", "nested-forward")])
@pytest.mark.parametrize("case", range(20))
def test_differential_operator_matches_sympy(fw, strategy, case):
    tree, n, point, requests = CASES[case]
    requests = [mi for mi in requests if mi] or [(0,)]
    rng = random.Random(case)
    terms = [(round(rng.uniform(-2, 2), 3), mi) for mi in requests]
    body = to_array_fn(tree, math_ns(fw))
    f = lambda x: body(lambda i: x[i])
    got = float(to_numpy(derivs.differential_operator(f, terms, strategy=strategy)(
        array(fw, point))))
    exact = sum(c * exact_partial(tree, n, point, mi) for c, mi in terms)
    assert abs(got - exact) <= 1e-10 * max(1.0, abs(exact)), (terms, got, exact)


def test_heat_residual_shares_lower_terms_in_one_collapsed_pass():
    u = lambda z: jnp.exp(-z[0]) * jnp.sin(z[1]) * jnp.cos(z[2])
    op = derivs.differential_operator(u, [(1.0, 0), (-0.5, (1, 1)), (-0.5, (2, 2))])
    e = derivs.explain(op, jnp.array([0.1, 0.2, 0.3]))
    assert e.strategy == "traced-jet" and len(e.passes) == 1
    # keys read: 0, e_x, e_y and the collapsed one (u_t enters it linearly, so e_t is
    # never a coefficient of its own): Leibniz terms 1 + 2 + 2 + (2 + 1 + 1)
    assert e.estimated_cost == 1 + 2 + 2 + 4
    assert "top order collapsed" in str(e)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("unroll_max", [4, 0])
def test_float32_agrees_with_float64(fw, unroll_max, monkeypatch):
    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", unroll_max)
    f32, f64 = _mlp(fw, "float32"), _mlp(fw, "float64")
    for op in (derivs.laplacian, derivs.hessian_diagonal):
        for strategy in STRATEGIES:
            lo = to_numpy(op(f32, strategy=strategy)(array(fw, X, "float32")))
            hi = to_numpy(op(f64, strategy=strategy)(array(fw, X)))
            np.testing.assert_allclose(lo, hi, rtol=1e-4, atol=1e-4 * np.abs(hi).max())
    d4_32 = to_numpy(derivs.partial(f32, (1, 1, 1, 1))(array(fw, X, "float32")))
    d4_64 = to_numpy(derivs.partial(f64, (1, 1, 1, 1))(array(fw, X)))
    np.testing.assert_allclose(d4_32, d4_64, rtol=1e-4)


@pytest.mark.parametrize("unroll_max", [4, 0])
def test_operators_compose_with_jit_vmap_grad(unroll_max, monkeypatch):
    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", unroll_max)
    f = _mlp("jax")
    lap = derivs.laplacian(f)
    xb = jnp.asarray(XB)
    np.testing.assert_allclose(jax.jit(jax.vmap(lap))(xb),
                               [np.trace(_dense_hessian(x)) for x in XB], rtol=1e-11)
    g = jax.grad(lap)(jnp.asarray(X))
    eps = 1e-6
    fd = [(lap(jnp.asarray(X) + eps * e) - lap(jnp.asarray(X) - eps * e)) / (2 * eps)
          for e in np.eye(4)]
    np.testing.assert_allclose(g, fd, rtol=1e-6)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_chunk_size_gives_the_same_operators(fw, strategy, chunk_size):
    """D = 7 (the JAX family layout), chunks that do and do not divide D."""
    A = np.random.default_rng(5).normal(size=(7, 7)) / 3
    if fw == "jax":
        f = lambda x: jnp.sum(jnp.sin(x @ jnp.asarray(A).T), -1) * jnp.sum(x * x, -1)
    else:
        f = lambda x: torch.sin(x @ torch.as_tensor(A).T).sum(-1) * (x * x).sum(-1)
    xb = np.random.default_rng(6).normal(size=(3, 7))
    Hs = [np.asarray(jax.hessian(lambda z: jnp.sum(jnp.sin(jnp.asarray(A) @ z)) * jnp.sum(z * z))(
        jnp.asarray(x))) for x in xb]
    lap = derivs.laplacian(f, batch_axis=0, strategy=strategy, chunk_size=chunk_size)
    diag = derivs.hessian_diagonal(f, batch_axis=0, strategy=strategy, chunk_size=chunk_size)
    np.testing.assert_allclose(to_numpy(lap(array(fw, xb))), [np.trace(H) for H in Hs],
                               rtol=1e-11)
    np.testing.assert_allclose(to_numpy(diag(array(fw, xb))), [np.diag(H) for H in Hs],
                               rtol=1e-11, atol=1e-13)


def test_chunk_size_bounds_memory():
    """XLA's buffer assignment for D = 400: a tenth of the directions at a time needs
    a fraction of the temporary memory of all of them (and of the dense Hessian)."""
    D = 400
    A = jnp.asarray(np.random.default_rng(8).normal(size=(D, D)) / 20)
    f = lambda x, A: jnp.sum(jnp.sin(A @ x))
    x = jnp.ones(D)

    def temp(fn):
        return jax.jit(fn).lower(x, A).compile().memory_analysis().temp_size_in_bytes

    full = temp(lambda z, A: jnp.diag(jax.hessian(f)(z, A)))
    for strategy in STRATEGIES:
        for op in (derivs.laplacian, derivs.hessian_diagonal):
            whole = temp(op(f, strategy=strategy))
            chunked = temp(op(f, strategy=strategy, chunk_size=40))
            assert whole > 0.5 * full and chunked < 0.25 * whole, (strategy, op, whole, chunked)


def test_explain_shows_the_operator_plan():
    f = lambda x: jnp.sum(jnp.tanh(x)) ** 2
    small = derivs.explain(derivs.laplacian(f), jnp.ones(3))
    assert (small.strategy, small.layout, small.directions) == ("traced-jet", "unrolled", 3)
    assert small.model_costs == {"traced-jet": 2 * 3 + 4, "reverse": 8 * 3}
    large = derivs.explain(derivs.laplacian(f), jnp.ones(50))
    assert (large.strategy, large.layout) == ("traced-jet", "family")
    assert "family axis" in str(large) and "chosen automatically" in str(large)
    asked = derivs.explain(derivs.hessian_diagonal(f, strategy="reverse"), jnp.ones(3))
    assert (asked.strategy, asked.layout) == ("reverse", None) and "requested" in str(asked)
    g = lambda x: (torch.tanh(x) ** 2).sum(-1)
    t = derivs.explain(derivs.hessian_diagonal(g, batch_axis=0), torch.ones(5, 3))
    assert (t.backend, t.strategy, t.layout, t.directions) == ("torch", "traced-jet",
                                                                "unrolled", 3)


_W = torch.tensor([[0.5, -0.3], [0.8, 0.2], [-0.4, 0.6]], dtype=torch.float64)
# Functions of x (3,) exercising the PyTorch family rules and its torch.func fallback
_TORCH_FAMILY_CASES = {  # batch-aware: any leading axes are samples
    "mlp": lambda x, w: torch.tanh(torch.tanh(x @ w) @ w.T).sum(-1),
    "sigmoid-log-exp": lambda x, w: (torch.log(1 + torch.exp(x @ w)).sum(-1)
                                     * torch.sigmoid(x).mean(-1)),
    "sin-cos-pow": lambda x, w: ((torch.sin(x) ** 3).sum(-1)
                                 + torch.cos(x[..., 0] * x[..., 2]) * x[..., 1] ** 2),
    "div-atan (generic)": lambda x, w: (torch.atan(x[..., 0] / (2 + x[..., 1] ** 2))
                                        + (x @ w).prod(-1)),
    "views": lambda x, w: (x.unsqueeze(-1) * x.unsqueeze(-2)).transpose(-1, -2).sum(-2)
    .pow(2).sum(-1),
    "softplus-mean (decomposed)": lambda x, w: torch.nn.functional.softplus(x @ w).mean(-1),
    "vector output": lambda x, w: torch.stack([(x ** 3).sum(-1), torch.tanh(x @ w).prod(-1)],
                                              -1),
    # one intermediate on both sides of a product, and as a divisor: nonlinear in
    # it, so its rows must be kept (these were silently wrong: the rows were dropped)
    "square of an intermediate": lambda x, w: (torch.tanh(x @ w) * torch.tanh(x @ w)).sum(-1)
    + _twice(torch.sin(x)),
    "intermediate divisor": lambda x, w: (_W[:, 0] / (2 + torch.tanh(x))).sum(-1),
}


def _twice(t):  # ``t * t`` of one traced node
    return (t * t).sum(-1)


@pytest.mark.parametrize("case", sorted(_TORCH_FAMILY_CASES))
@pytest.mark.parametrize("batched", [False, True])
def test_torch_family_laplacian_equals_dense_hessian(case, batched, monkeypatch):
    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", 0)
    f = _TORCH_FAMILY_CASES[case]
    xs = torch.tensor(np.random.default_rng(9).normal(size=(4, 3)) / 2)

    def dense(x):  # trace over the input axes of the full Hessian, per output
        H = torch.func.jacfwd(torch.func.jacrev(lambda z: f(z, _W)))(x)
        return torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)

    op = derivs.laplacian(f, batch_axis=0 if batched else None, strategy="traced-jet")
    assert derivs.explain(op, xs if batched else xs[0], _W).layout == "family"
    got = op(xs, _W) if batched else torch.stack([op(x, _W) for x in xs])
    torch.testing.assert_close(got, torch.stack([dense(x) for x in xs]), rtol=1e-11,
                               atol=1e-12)
    # the Hessian diagonal: the family's rows (i, i) read off the outputs
    diag = derivs.hessian_diagonal(f, batch_axis=0 if batched else None,
                                   strategy="traced-jet")
    assert derivs.explain(diag, xs if batched else xs[0], _W).layout == "family"
    got = diag(xs, _W) if batched else torch.stack([diag(x, _W) for x in xs])

    def dense_diag(x):
        H = torch.func.jacfwd(torch.func.jacrev(lambda z: f(z, _W)))(x)
        return torch.diagonal(H, dim1=-2, dim2=-1)

    torch.testing.assert_close(got, torch.stack([dense_diag(x) for x in xs]), rtol=1e-11,
                               atol=1e-12)


def test_torch_family_composes_and_falls_back(monkeypatch):
    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", 0)
    f = _TORCH_FAMILY_CASES["mlp"]
    xs = torch.tensor(np.random.default_rng(10).normal(size=(5, 3)))
    lap = derivs.laplacian(f)
    batched = derivs.laplacian(f, batch_axis=0)(xs, _W)
    torch.testing.assert_close(torch.func.vmap(lap, in_dims=(0, None))(xs, _W), batched)
    # f closing over a tensor: lifted to a graph input, read live
    w = _W.clone()
    closed = derivs.laplacian(lambda x: f(x, w))
    assert derivs.explain(closed, xs[0]).layout == "family"
    before = closed(xs[0])
    w.mul_(2)
    torch.testing.assert_close(closed(xs[0]), lap(xs[0], w))
    assert not torch.allclose(before, closed(xs[0]))


@pytest.mark.parametrize("unroll_max", [4, 0])
def test_torch_operator_trains(unroll_max, monkeypatch):
    """Gradients flow to parameters through the Laplacian (a PINN loss)."""
    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", unroll_max)
    w = torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64, requires_grad=True)
    u = lambda x, w: torch.tanh(x @ w) ** 2
    x = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6]], dtype=torch.float64)
    loss = (derivs.laplacian(u, batch_axis=0)(x, w) ** 2).sum()
    loss.backward()
    # oracle: double torch.func.hessian per sample, same loss
    w2 = w.detach().clone().requires_grad_(True)
    lap = torch.stack([torch.trace(torch.func.hessian(lambda z: u(z, w2))(xi)) for xi in x])
    (lap ** 2).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-10, atol=1e-12)
    assert w.grad.abs().sum() > 0


def test_operator_errors_name_the_fix():
    with pytest.raises(TypeError, match="coefficient, index"):
        derivs.differential_operator(jnp.sin, [((0, 0), 1.0)])
    with pytest.raises(TypeError, match="non-empty list"):
        derivs.differential_operator(jnp.sin, [])
    with pytest.raises(ValueError, match="strategy="):
        derivs.laplacian(jnp.sin, strategy="polarization")(jnp.ones(2))
    with pytest.raises(TypeError, match="one argument"):
        derivs.laplacian(jnp.sin, argnum=(0, 1))
    with pytest.raises(ValueError, match="chunk_size"):
        derivs.laplacian(jnp.sin, chunk_size=0)
    with pytest.raises(TypeError, match="integer dtype"):
        derivs.hessian_diagonal(lambda x: x.sum())(jnp.arange(3))
    with pytest.raises(IndexError, match="out of range"):
        derivs.differential_operator(jnp.sum, [(1.0, (5, 5))])(jnp.ones(3))


def _measured():
    root = Path(__file__).parent.parent / "benchmarks" / "results"
    for name in ("taylor.json", "taylor-quick.json"):
        if (root / name).exists():
            return json.loads((root / name).read_text())
    pytest.skip("no recorded benchmark results")


def test_planner_picks_the_measured_faster_strategy():
    """The operators' cost model against the timings recorded by
    ``python -m benchmarks taylor`` (jets vs Hessian-vector products)."""
    data = _measured()
    checked = 0
    for row in data["laplacian"]:
        D = int(row["case"].split(",")[0].removeprefix("D="))
        faster = "traced-jet" if row["derivs_s"] < row["HVP loop_s"] else "reverse"
        assert _operators.choose_strategy(True, D, True, row["framework"]) == faster, row
        checked += 1
        if "derivs family_s" in row:  # the direction layout rule
            # within 10% the two layouts tie: their order flips between runs on 2
            # cores (torch D = 3: unrolled 0.92x family on 12-01, 1.07x on 12-02)
            backend = backends.backend_named(row["framework"])
            points = row["case"].split(",")[1].split()[0]  # "256", "10^4"
            base, _, power = points.partition("^")
            samples = int(base) ** int(power) if power else int(base)
            chosen = ("unrolled" if _operators.unrolled(backend, D, samples=samples)
                      else "family")
            best = min(row["derivs family_s"], row["derivs unrolled_s"])
            assert row[f"derivs {chosen}_s"] <= 1.1 * best, row
            checked += 1
    for row in data["hessian_diagonal"]:
        if "derivs traced-jet_s" in row:
            faster = ("traced-jet" if row["derivs traced-jet_s"] < row["derivs reverse_s"]
                      else "reverse")
            assert _operators.choose_strategy(False, row["D"], True, row["framework"]) == faster
            checked += 1
    assert checked >= 9


def test_layout_rule_against_recorded_layouts():
    """The PyTorch direction-layout rule (D, points; NOTE [direction layout]) against
    both layouts as ``python -m benchmarks layout`` timed them: within 10% of the
    faster (closer than that, the two trade places between runs on 2 cores)."""
    path = Path(__file__).parent.parent / "benchmarks" / "results" / "layout.json"
    if not path.exists():
        pytest.skip("no recorded layout timings")
    rows = json.loads(path.read_text())["rows"]
    for row in rows:
        backend = backends.backend_named(row["framework"])
        chosen = ("unrolled" if _operators.unrolled(backend, row["D"], device_type=row["device"],
                                                    samples=row["points"]) else "family")
        best = min(row["unrolled_s"], row["family_s"])
        assert row[f"{chosen}_s"] <= 1.1 * best, row
    assert len(rows) >= 12


def test_planner_picks_reverse_where_it_measured_faster():
    """First-order request sets (NOTE [reverse plans]): the recorded timings of the
    reverse plan and of forward jets, against the cost model's choice."""
    from derivs.core import _plan

    data = _measured()
    if "first_order" not in data:
        pytest.skip("no recorded first-order timings")
    for row in data["first_order"]:
        plan = _plan.make_plan([(((0, i),)) for i in range(row["n"])])
        model = ("reverse" if plan.estimated_cost("reverse") < plan.estimated_cost("traced-jet")
                 else "traced-jet")
        faster = "reverse" if row["derivs_s"] < row["derivs traced-jet_s"] else "traced-jet"
        assert model == faster, row


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_jax_family_with_narrow_seeds(chunk_size, monkeypatch):
    """NOTE [narrow family seeds] (off by default): exact when switched on."""
    from derivs.backends.jax_engine import _engine

    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", 0)
    monkeypatch.setattr(_engine, "NARROW_FAMILY_SEEDS", True)
    rng = np.random.default_rng(12)
    W = jnp.asarray(rng.normal(size=(5, 7)) / 2)
    u = lambda x: jnp.tanh(jnp.tanh(x @ W) @ W.T).sum() + jnp.sin(x).prod()  # noqa: E731
    x = jnp.asarray(rng.normal(size=(4, 5)))
    hess = jax.vmap(jax.hessian(u))(x)
    lap = jax.jit(jax.vmap(derivs.laplacian(u, chunk_size=chunk_size)))(x)
    diag = jax.jit(jax.vmap(derivs.hessian_diagonal(u, strategy="traced-jet",
                                                    chunk_size=chunk_size)))(x)
    np.testing.assert_allclose(lap, jnp.trace(hess, axis1=1, axis2=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(diag, jnp.diagonal(hess, axis1=1, axis2=2), rtol=1e-12,
                               atol=1e-12)


def test_jax_batch_axis_runs_as_vmap():
    """NOTE [batch axis layout]: a proven JAX batch axis runs the per-sample operator
    vmapped (the faster layout), with the same values, and explain says so."""
    W = jnp.asarray(np.random.default_rng(13).normal(size=(6, 4)))
    u = lambda x: jnp.tanh(x @ W).sum(-1)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(14).normal(size=(5, 6)))
    for op, single in ((derivs.laplacian(u, batch_axis=0), derivs.laplacian(u)),
                       (derivs.hessian_diagonal(u, batch_axis=0), derivs.hessian_diagonal(u)),
                       (derivs.bilaplacian(u, batch_axis=0), derivs.bilaplacian(u))):
        np.testing.assert_allclose(op(x), jax.vmap(single)(x), rtol=1e-12)
        assert "runs as jax's vmap" in str(derivs.explain(op, x))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_size_bounds_the_samples(fw):
    """batch_size=b: b samples at a time (a lax.map in JAX, a loop in PyTorch), the
    same values; 5 samples in chunks of 2 leave a remainder."""
    rng = np.random.default_rng(15)
    W = rng.normal(size=(4, 3)) / 2
    m = jnp if fw == "jax" else torch
    Wf = array(fw, W)
    u = lambda x: m.tanh(x @ Wf).sum(-1)  # noqa: E731
    x = array(fw, rng.normal(size=(5, 4)))
    S = array(fw, rng.normal(size=(4, 2)))
    for make in (lambda **k: derivs.laplacian(u, **k), lambda **k: derivs.hessian_diagonal(u, **k),
                 lambda **k: derivs.bilaplacian(u, **k),
                 lambda **k: derivs.diffusion_operator(u, S, **k)):
        want = to_numpy(make(batch_axis=0)(x))
        got = to_numpy(make(batch_axis=0, batch_size=2)(x))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if fw == "jax":
        jitted = jax.jit(derivs.laplacian(u, batch_axis=0, batch_size=2))
        np.testing.assert_allclose(jitted(x), derivs.laplacian(u, batch_axis=0)(x), rtol=1e-12)
    with pytest.raises(ValueError, match="pass batch_axis"):
        derivs.laplacian(u, batch_size=2)
    with pytest.raises(ValueError, match="positive int"):
        derivs.bilaplacian(u, batch_axis=0, batch_size=0)
