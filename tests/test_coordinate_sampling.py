"""``distribution="coordinates"`` (NOTE [coordinate sampling]): coordinates drawn
without replacement, exact at ``samples == D``, unbiased, with the finite-population
standard error; the picked seeds (NOTE [picked seeds]) checked per key against a
dense float64 Hessian at the drawn coordinates; gradients through the estimate
against the gradient of that oracle."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs
from derivs.backends import _jax as jax_backend
from derivs.backends import _torch as torch_backend

from ._frameworks import FRAMEWORKS, to_numpy

D, H = 9, 12
RNG = np.random.default_rng(11)
W1, B1 = RNG.normal(size=(D, H)) / 2, RNG.normal(size=H) / 4
W2 = RNG.normal(size=H)
X = RNG.normal(size=(5, D)) / 2


def _u_jax(w1=jnp.asarray(W1)):
    # a dense layer on x and an elementwise use of x: picked and dense seeds both
    return lambda x: jnp.tanh(x @ w1 + jnp.asarray(B1)) @ jnp.asarray(W2) \
        + jnp.sum(jnp.sin(x) * x, -1)


def _model_torch(dtype=torch.float64):
    lin = torch.nn.Linear(D, H).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W1.T))
        lin.bias.copy_(torch.as_tensor(B1))
    w2 = torch.as_tensor(W2, dtype=dtype)
    return lin, lambda x: torch.tanh(lin(x)) @ w2 + (torch.sin(x) * x).sum(-1)


def _u(fw):
    return _u_jax() if fw == "jax" else _model_torch()[1]


def _hessian_diagonals(x):
    """Per point, the float64 Hessian diagonal (the oracle: jax.hessian)."""
    h = jax.vmap(jax.hessian(_u_jax()))(jnp.asarray(x))
    return np.asarray(jnp.diagonal(h, axis1=1, axis2=2))


def _array(fw, x, dtype="float64"):
    if fw == "jax":
        return jnp.asarray(x, dtype)
    return torch.as_tensor(np.asarray(x), dtype=getattr(torch, dtype))


def _key(fw, seed):
    return jax.random.key(seed) if fw == "jax" else seed


def _picks(fw, seed, samples, n, like):
    backend = jax_backend if fw == "jax" else torch_backend
    return np.asarray(to_numpy(backend.random_coordinates(_key(fw, seed), samples, n, like,
                                                          "test")))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("batched", [True, False])
def test_samples_equal_to_d_is_the_exact_laplacian(fw, batched):
    exact = _hessian_diagonals(X).sum(1)
    x = _array(fw, X if batched else X[0])
    est = derivs.hutchinson_laplacian(_u(fw), samples=D, distribution="coordinates",
                                      batch_axis=0 if batched else None, with_stderr=True)
    value, err = est(_key(fw, 3), x)
    np.testing.assert_allclose(to_numpy(value), exact if batched else exact[0], rtol=1e-10)
    np.testing.assert_allclose(to_numpy(err), 0.0, atol=1e-9)  # no population left


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("samples", [1, 4])
def test_each_key_is_d_over_s_times_the_diagonal_at_its_coordinates(fw, samples):
    diag = _hessian_diagonals(X)
    x = _array(fw, X)
    est = derivs.hutchinson_laplacian(_u(fw), samples=samples, distribution="coordinates",
                                      batch_axis=0)
    for seed in range(4):
        picks = _picks(fw, seed, samples, D, x)
        assert len(set(picks.tolist())) == samples
        want = D / samples * diag[:, picks].sum(1)
        np.testing.assert_allclose(to_numpy(est(_key(fw, seed), x)), want, rtol=1e-10)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_unbiased_with_the_finite_population_error(fw):
    diag = _hessian_diagonals(X[:1])[0]
    exact, S = diag.sum(), 3
    # the variance of a mean of S draws without replacement from the n terms D h_i
    terms = D * diag
    se = np.sqrt(terms.var(ddof=1) / S * (D - S) / D)
    x = _array(fw, X[0])
    est = derivs.hutchinson_laplacian(_u(fw), samples=S, distribution="coordinates",
                                      with_stderr=True)
    keys = 400
    if fw == "jax":
        values, errs = jax.vmap(lambda k: est(k, x))(jax.random.split(jax.random.key(0), keys))
        values, errs = np.asarray(values), np.asarray(errs)
    else:
        pairs = [est(k, x) for k in range(keys)]
        values = np.array([float(v.detach()) for v, _ in pairs])
        errs = np.array([float(e.detach()) for _, e in pairs])
    assert abs(values.mean() - exact) < 4 * se / np.sqrt(keys)
    # the reported error estimates the true one (its square is unbiased for it)
    np.testing.assert_allclose(np.sqrt(np.mean(errs ** 2)), se, rtol=0.2)
    np.testing.assert_allclose(values.std(), se, rtol=0.2)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("samples", [2, 300])
def test_draws_are_uniform_subsets(fw, samples):
    """Every 2-subset of 4 equally often (Floyd's algorithm in JAX); above the
    Floyd limit, distinct indices covering the population evenly."""
    like = _array(fw, X[0])
    n = 4 if samples == 2 else 400
    if fw == "jax":
        draws = np.asarray(jax.vmap(lambda k: jax_backend.random_coordinates(
            k, samples, n, like, "t"))(jax.random.split(jax.random.key(1), 3000)))
    else:
        draws = np.stack([to_numpy(torch_backend.random_coordinates(k, samples, n, like, "t"))
                          for k in range(3000 if samples == 2 else 300)])
    assert all(len(set(row)) == samples for row in draws.tolist())
    assert draws.min() >= 0 and draws.max() < n
    if samples == 2:
        counts = {s: 0 for s in itertools.combinations(range(n), 2)}
        for row in draws.tolist():
            counts[tuple(sorted(row))] += 1
        p = 1 / len(counts)  # each count ~ Binomial(3000, 1/6): sd about 20
        for c in counts.values():
            assert abs(c / len(draws) - p) < 4 * np.sqrt(p * (1 - p) / len(draws))
    else:
        freq = np.bincount(draws.ravel(), minlength=n) / len(draws)
        p = samples / n
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(draws)))


def test_jax_grad_through_the_estimate_under_jit():
    """The training use: jax.grad of a residual loss in the first layer's weight,
    against the gradient of the dense-Hessian estimate at the same coordinates."""
    x = jnp.asarray(X)
    S, seed = 4, 2
    picks = _picks("jax", seed, S, D, x)

    def loss(w1):
        lap = derivs.hutchinson_laplacian(_u_jax(w1), samples=S, distribution="coordinates",
                                          batch_axis=0)(jax.random.key(seed), x)
        return jnp.mean((lap + _u_jax(w1)(x)) ** 2)

    def oracle(w1):
        h = jax.vmap(jax.hessian(_u_jax(w1)))(x)
        lap = D / S * jnp.diagonal(h, axis1=1, axis2=2)[:, picks].sum(1)
        return jnp.mean((lap + _u_jax(w1)(x)) ** 2)

    got = jax.jit(jax.grad(loss))(jnp.asarray(W1))
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.grad(oracle)(jnp.asarray(W1))),
                               rtol=1e-9, atol=1e-12)


def test_torch_backward_through_the_estimate():
    lin, u = _model_torch()
    x = torch.as_tensor(X)
    S, seed = 4, 5
    picks = _picks("torch", seed, S, D, x)
    est = derivs.hutchinson_laplacian(u, samples=S, distribution="coordinates", batch_axis=0)
    loss = ((est(seed, x) + u(x)) ** 2).mean()
    (got,) = torch.autograd.grad(loss, [lin.weight])

    params = {k: v.detach() for k, v in lin.named_parameters()}

    def oracle(p):
        def u1(z):
            h = torch.func.functional_call(lin, p, (z,))
            return torch.tanh(h) @ torch.as_tensor(W2) + (torch.sin(z) * z).sum(-1)
        diag = torch.func.vmap(lambda z: torch.diagonal(torch.func.hessian(u1)(z)))(x)
        lap = D / S * diag[:, torch.as_tensor(picks)].sum(1)
        return ((lap + u1(x)) ** 2).mean()

    want = torch.func.grad(oracle)(params)["weight"]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_float32(fw):
    x = _array(fw, X, "float32")
    u = (_u_jax(jnp.asarray(W1, jnp.float32)) if fw == "jax"
         else _model_torch(torch.float32)[1])
    if fw == "jax":
        u32 = lambda z: u(z).astype(jnp.float32)  # noqa: E731
    else:
        u32 = lambda z: u(z).float()  # noqa: E731
    est = derivs.hutchinson_laplacian(u32, samples=D, distribution="coordinates", batch_axis=0)
    out = est(_key(fw, 0), x)
    assert str(out.dtype).endswith("float32")
    np.testing.assert_allclose(to_numpy(out), _hessian_diagonals(X).sum(1), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_diffusion_samples_columns_of_sigma(fw):
    """Columns of sigma drawn without replacement: exact at samples == r, and each
    key is r/S times the drawn columns' c^T H c, plus the exact drift term."""
    r = 4
    sigma = RNG.normal(size=(D, r))
    drift = RNG.normal(size=D)
    h = np.asarray(jax.hessian(_u_jax())(jnp.asarray(X[0])))
    g = np.asarray(jax.grad(_u_jax())(jnp.asarray(X[0])))
    terms = np.einsum("ik,ij,jk->k", sigma, h, sigma)
    x = _array(fw, X[0])
    s_, d_ = _array(fw, sigma), _array(fw, drift)
    exact = derivs.hutchinson_diffusion(_u(fw), s_, d_, samples=r, distribution="coordinates")
    np.testing.assert_allclose(to_numpy(exact(_key(fw, 0), x)), terms.sum() + g @ drift,
                               rtol=1e-10)
    est = derivs.hutchinson_diffusion(_u(fw), s_, d_, samples=2, distribution="coordinates")
    for seed in range(3):
        picks = _picks(fw, seed, 2, r, x)
        np.testing.assert_allclose(to_numpy(est(_key(fw, seed), x)),
                                   r / 2 * terms[picks].sum() + g @ drift, rtol=1e-10)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_more_samples_than_coordinates_says_what_to_do(fw):
    est = derivs.hutchinson_laplacian(_u(fw), samples=D + 1, distribution="coordinates")
    with pytest.raises(ValueError, match=rf"samples <= {D}"):
        est(_key(fw, 0), _array(fw, X[0]))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_explain_names_the_sampling(fw):
    est = derivs.hutchinson_laplacian(_u(fw), samples=3, distribution="coordinates",
                                      batch_axis=0)
    text = derivs.explain(est, _key(fw, 0), _array(fw, X)).text()
    assert f"3 coordinates drawn without replacement from {D}" in text


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_size_bounds_the_estimators_without_changing_them(fw):
    """``batch_size`` runs the samples in slices with the same draws: exact with
    every coordinate (the dense oracle), and each estimator unchanged per key."""
    x = _array(fw, X)
    exact = derivs.hutchinson_laplacian(_u(fw), samples=D, distribution="coordinates",
                                        batch_axis=0, batch_size=2)
    np.testing.assert_allclose(to_numpy(exact(_key(fw, 0), x)), _hessian_diagonals(X).sum(1),
                               rtol=1e-10)
    sigma = _array(fw, RNG.normal(size=(D, 3)))
    for make in (lambda **k: derivs.hutchinson_laplacian(_u(fw), 4, batch_axis=0, **k),
                 lambda **k: derivs.hutchinson_laplacian(_u(fw), 4, batch_axis=0,
                                                         with_stderr=True, **k),
                 lambda **k: derivs.hutchinson_bilaplacian(_u(fw), 3, batch_axis=0, **k),
                 lambda **k: derivs.hutchinson_diffusion(_u(fw), sigma, samples=3,
                                                         batch_axis=0, **k)):
        whole, sliced = make()(_key(fw, 1), x), make(batch_size=2)(_key(fw, 1), x)
        for a, b in zip(whole if isinstance(whole, tuple) else (whole,),
                        sliced if isinstance(sliced, tuple) else (sliced,)):
            np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_size_refusals_say_what_to_do(fw):
    x = _array(fw, X)
    with pytest.raises(ValueError, match="pass batch_axis"):
        derivs.hutchinson_laplacian(_u(fw), 4, batch_size=2)
    sigma = (lambda z: jnp.stack([z, 2 * z], -1)) if fw == "jax" else \
        (lambda z: torch.stack([z, 2 * z], -1))
    est = derivs.hutchinson_diffusion(_u(fw), sigma, samples=2, batch_axis=0, batch_size=2)
    with pytest.raises(ValueError, match="pass them as arrays, or batch_size=None"):
        est(_key(fw, 0), x)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_squared_standard_error_is_unbiased_over_every_subset(fw):
    """Exactly, not by Monte Carlo: over the equally likely S-subsets of n = 4
    coordinates, the mean of err^2 equals the variance of the estimate (the
    review's case: a (n - 1) factor instead of n inflated it by n / (n - 1))."""
    n, S = 4, 2
    c = np.array([1.0, -2.0, 0.5, 3.0])  # f = sum c_i x_i^2: H_ii = 2 c_i
    if fw == "jax":
        f = lambda x: jnp.sum(jnp.asarray(c) * x ** 2)  # noqa: E731
    else:
        f = lambda x: (torch.as_tensor(c) * x ** 2).sum()  # noqa: E731
    x = _array(fw, np.ones(n))
    est = derivs.hutchinson_laplacian(f, samples=S, distribution="coordinates",
                                      with_stderr=True)
    by_subset = {}
    for seed in range(200):
        if len(by_subset) == 6:
            break
        subset = tuple(sorted(_picks(fw, seed, S, n, x).tolist()))
        value, err = est(_key(fw, seed), x)
        by_subset[subset] = (float(to_numpy(value)), float(to_numpy(err)))
    assert len(by_subset) == 6
    values = np.array([v for v, _ in by_subset.values()])
    errs = np.array([e for _, e in by_subset.values()])
    np.testing.assert_allclose(values.mean(), 2 * c.sum(), rtol=1e-12)  # unbiased, exactly
    np.testing.assert_allclose(np.mean(errs ** 2), values.var(), rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_stderr_of_one_sample_is_refused(fw):
    with pytest.raises(ValueError, match="samples >= 2"):
        derivs.hutchinson_laplacian(_u(fw), samples=1, with_stderr=True)


def test_a_batch_of_jax_keys_says_vmap():
    est = derivs.hutchinson_laplacian(_u("jax"), samples=2)
    with pytest.raises(ValueError, match="jax.vmap the estimator over the keys"):
        est(jax.random.split(jax.random.key(0), 3), jnp.asarray(X[0]))


def test_explain_with_torch_compile_says_the_seeds_run_dense():
    est = derivs.hutchinson_laplacian(_u("torch"), samples=3, distribution="coordinates",
                                      batch_axis=0, torch_compile=True)
    x = _array("torch", X)
    est(0, x)
    text = derivs.explain(est, 0, x).text()
    assert "torch_compile=True runs the program on the dense seeds" in text


def _fourth_pairs(x):
    """``T[i, j] = d^4 u / dx_i^2 dx_j^2`` at one point, by nested jax.hessian."""
    u = _u_jax()
    h2 = jax.hessian(lambda z: jax.hessian(u)(z))(jnp.asarray(x))  # (D, D, D, D)
    return np.asarray(jnp.einsum("iijj->ij", h2))


# JAX's (27 s: XLA compiles the fourth-order program per key) runs under slow; its
# coordinate Bi-Laplacian stays in the default run through the every-subset test below
@pytest.mark.parametrize("fw", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_bilaplacian_coordinates_exact_and_per_key(fw):
    T = _fourth_pairs(X[0])
    x = _array(fw, X[0])
    exact = derivs.hutchinson_bilaplacian(_u(fw), samples=D, distribution="coordinates")
    np.testing.assert_allclose(to_numpy(exact(_key(fw, 0), x)), T.sum(), rtol=1e-9)
    S = 3
    est = derivs.hutchinson_bilaplacian(_u(fw), samples=S, distribution="coordinates")
    for seed in range(3):
        p = _picks(fw, seed, S, D, x)
        sub = T[np.ix_(p, p)]
        want = D / S * np.trace(sub) + D * (D - 1) / (S * (S - 1)) * (sub.sum() - np.trace(sub))
        np.testing.assert_allclose(to_numpy(est(_key(fw, seed), x)), want, rtol=1e-9)


def test_bilaplacian_coordinates_batched_and_unbiased_over_every_subset():
    """Over all C(4, 2) subsets (each drawn equally often), the mean is the exact
    Bi-Laplacian; with batch_axis each point gets its own estimate."""
    n, S = 4, 2
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(n, 6)))
    u = lambda z: jnp.sum(jnp.tanh(z @ w) ** 2, -1)  # noqa: E731
    x = jnp.asarray(rng.normal(size=(3, n)))
    bil = jax.vmap(lambda z: jnp.einsum("iijj->", jax.hessian(jax.hessian(u))(z)))(x)
    est = derivs.hutchinson_bilaplacian(u, samples=S, distribution="coordinates",
                                        batch_axis=0)
    by_subset = {}
    for seed in range(100):
        subset = tuple(sorted(_picks("jax", seed, S, n, x[0]).tolist()))
        by_subset.setdefault(subset, np.asarray(est(jax.random.key(seed), x)))
        if len(by_subset) == 6:
            break
    assert len(by_subset) == 6
    np.testing.assert_allclose(np.mean(list(by_subset.values()), 0), np.asarray(bil),
                               rtol=1e-9)


def test_bilaplacian_coordinates_refusals():
    with pytest.raises(ValueError, match="no with_stderr"):
        derivs.hutchinson_bilaplacian(_u("jax"), samples=3, distribution="coordinates",
                                      with_stderr=True)
    with pytest.raises(ValueError, match="samples >= 2"):
        derivs.hutchinson_bilaplacian(_u("jax"), samples=1, distribution="coordinates")(
            jax.random.key(0), jnp.asarray(X[0]))
    with pytest.raises(ValueError, match="would be biased"):
        derivs.hutchinson_bilaplacian(_u("jax"), samples=3, distribution="rademacher")
