"""Hutchinson's Laplacian estimator against a dense float64 ``jax.hessian`` oracle:
exact for diagonal Hessians (Rademacher directions), unbiased within a bound set
by the documented variance, and that variance itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

from ._frameworks import FRAMEWORKS, array, to_numpy

RNG = np.random.default_rng(7)
A = RNG.normal(size=(5, 5)) / 2
X = np.array([0.3, -0.7, 0.5, 1.1, -0.2])


def _coupled(fw):
    """A function with a dense Hessian: sum(sin(A x)) * sum(x^2) / 4."""
    if fw == "jax":
        M = jnp.asarray(A)
        return lambda x: jnp.sum(jnp.sin(x @ M.T), -1) * jnp.sum(x * x, -1) / 4
    M = torch.as_tensor(A)
    return lambda x: torch.sin(x @ M.T).sum(-1) * (x * x).sum(-1) / 4


def _hessian(x):
    return np.asarray(jax.hessian(_coupled("jax"))(jnp.asarray(x)))


def _key(fw, seed):
    return jax.random.key(seed) if fw == "jax" else seed


def _variance(H, distribution):
    """The documented variance of one term v^T H v."""
    off = np.sum(H ** 2) - np.sum(np.diag(H) ** 2)
    return 2 * off if distribution == "rademacher" else 2 * np.sum(H ** 2)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_rademacher_is_exact_for_a_diagonal_hessian(fw):
    sep = (lambda x: jnp.sum(jnp.sin(x) * x ** 2)) if fw == "jax" else \
        (lambda x: (torch.sin(x) * x ** 2).sum())
    exact = np.sum(2 * np.sin(X) + 4 * X * np.cos(X) - X ** 2 * np.sin(X))
    for seed in range(3):
        est = derivs.hutchinson_laplacian(sep, samples=2)(_key(fw, seed), array(fw, X))
        np.testing.assert_allclose(to_numpy(est), exact, rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_unbiased_with_the_documented_variance(fw, distribution):
    H = _hessian(X)
    var, S = _variance(H, distribution), 20_000
    est = derivs.hutchinson_laplacian(_coupled(fw), samples=S, distribution=distribution,
                                      with_stderr=True)
    mean, stderr = (float(to_numpy(v)) for v in est(_key(fw, 1), array(fw, X)))
    # a fixed seed: within 5 standard errors of the exact trace
    assert abs(mean - np.trace(H)) < 5 * np.sqrt(var / S)
    # the sample variance of 20000 terms is within 10% of the formula
    np.testing.assert_allclose(stderr ** 2 * S, var, rtol=0.1)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_axis_gives_each_sample_its_estimate(fw):
    XB = RNG.normal(size=(3, 5))
    S = 20_000
    est = derivs.hutchinson_laplacian(_coupled(fw), samples=S, batch_axis=0)
    got = to_numpy(est(_key(fw, 2), array(fw, XB)))
    assert got.shape == (3,)
    for g, x in zip(got, XB):
        H = _hessian(x)
        assert abs(g - np.trace(H)) < 5 * np.sqrt(_variance(H, "rademacher") / S)


def test_jax_jit_vmap_and_float32():
    f32 = lambda x: jnp.sum(jnp.sin(x @ jnp.asarray(A, jnp.float32).T)) * jnp.sum(x * x) / 4
    est = derivs.hutchinson_laplacian(f32, samples=64)
    x32 = jnp.asarray(X, jnp.float32)
    key = jax.random.key(3)
    eager = est(key, x32)
    np.testing.assert_allclose(jax.jit(est)(key, x32), eager, rtol=1e-5)
    assert eager.dtype == jnp.float32
    hi = derivs.hutchinson_laplacian(_coupled("jax"), samples=64)(key, jnp.asarray(X))
    np.testing.assert_allclose(eager, hi, rtol=1e-4)  # same directions, same draws
    keys = jax.random.split(key, 4)
    per_key = jax.vmap(est, in_axes=(0, None))(keys, x32)
    assert per_key.shape == (4,) and len(set(np.asarray(per_key).tolist())) == 4


def test_torch_generator_and_gradients():
    f = _coupled("torch")
    x = torch.tensor(X, requires_grad=True)
    est = derivs.hutchinson_laplacian(f, samples=8)
    a = est(torch.Generator().manual_seed(5), x)
    b = est(5, x)
    assert torch.equal(a, b)
    a.backward()  # d/dx of the estimate: the same directions, differentiated once more
    eps = 1e-6
    fd = [(est(5, torch.tensor(X + eps * e)) - est(5, torch.tensor(X - eps * e))).item()
          / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_errors_name_the_fix():
    f = lambda x: jnp.sum(x ** 2)
    with pytest.raises(ValueError, match="positive int"):
        derivs.hutchinson_laplacian(f, samples=0)
    with pytest.raises(ValueError, match="distribution"):
        derivs.hutchinson_laplacian(f, distribution="sphere")
    with pytest.raises(TypeError, match="jax.random key"):
        derivs.hutchinson_laplacian(f)(0, jnp.ones(3))
    with pytest.raises(TypeError, match="torch.Generator"):
        derivs.hutchinson_laplacian(lambda x: (x ** 2).sum())(jax.random.key(0),
                                                             torch.ones(3))
    with pytest.raises(ValueError, match=r"estimate\(key, \*args\)"):
        derivs.hutchinson_laplacian(f)(jax.random.key(0))


# -- the Bi-Laplacian and diffusion estimators --------------------------------------------
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bilaplacian_estimator_on_the_fourth_power(fw):
    """f = |x|^4: D^4 f[v] = 24 |v|^4, so the mean is 8 D (D + 2) and one term's
    variance is 64 (D (D+2) (D+4) (D+6) - (D (D+2))^2) (the documented formula)."""
    D, S = 3, 40_000
    f = (lambda x: jnp.sum(x ** 2) ** 2) if fw == "jax" else (lambda x: (x ** 2).sum() ** 2)
    est = derivs.hutchinson_bilaplacian(f, samples=S, with_stderr=True)
    mean, stderr = (float(to_numpy(v)) for v in est(_key(fw, 4), array(fw, X[:D])))
    var = 64 * (D * (D + 2) * (D + 4) * (D + 6) - (D * (D + 2)) ** 2)
    assert abs(mean - 8 * D * (D + 2)) < 5 * np.sqrt(var / S)
    np.testing.assert_allclose(stderr ** 2 * S, var, rtol=0.15)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bilaplacian_estimator_is_unbiased(fw):
    f = _coupled(fw)
    exact = float(to_numpy(derivs.bilaplacian(f)(array(fw, X))))
    S = 20_000
    mean, stderr = (float(to_numpy(v)) for v in derivs.hutchinson_bilaplacian(
        f, samples=S, with_stderr=True)(_key(fw, 6), array(fw, X)))
    assert abs(mean - exact) < 5 * stderr
    batched = derivs.hutchinson_bilaplacian(f, samples=64, batch_axis=0)(
        _key(fw, 6), array(fw, np.stack([X, -X])))
    assert to_numpy(batched).shape == (2,)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_diffusion_estimator_unbiased_with_the_documented_variance(fw, distribution):
    """tr(S S^T H) over random combinations of S's columns: unbiased, the variance of
    one term that of Hutchinson's estimator for H' = S^T H S, and the drift and
    reaction terms exact."""
    S_ = RNG.normal(size=(5, 3)) / 2
    b = RNG.normal(size=5)
    H = _hessian(X)
    Hp = S_.T @ H @ S_
    var, n = _variance(Hp, distribution), 20_000
    f = _coupled(fw)
    exact = float(to_numpy(derivs.diffusion_operator(f, array(fw, S_), array(fw, b), 0.3)(
        array(fw, X))))
    est = derivs.hutchinson_diffusion(f, array(fw, S_), array(fw, b), 0.3, samples=n,
                                      distribution=distribution, with_stderr=True)
    mean, stderr = (float(to_numpy(v)) for v in est(_key(fw, 8), array(fw, X)))
    assert abs(mean - exact) < 5 * np.sqrt(var / n)
    np.testing.assert_allclose(stderr ** 2 * n, var, rtol=0.1)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_diffusion_estimator_per_sample_sigma(fw):
    """sigma as a function of x, with a batch axis: each sample its own estimate,
    exact when sigma^T H sigma is diagonal (Rademacher)."""
    m = jnp if fw == "jax" else torch
    f = (lambda x: (m.sin(x) * x ** 2).sum(-1))  # diagonal Hessian
    sigma = lambda x: m.cos(x)[..., :, None] * array(fw, np.eye(5)[:, :2])  # noqa: E731
    XB = RNG.normal(size=(3, 5))
    got = to_numpy(derivs.hutchinson_diffusion(f, sigma, samples=4, batch_axis=0)(
        _key(fw, 9), array(fw, XB)))
    want = to_numpy(derivs.diffusion_operator(f, sigma, batch_axis=0)(array(fw, XB)))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_new_estimators_name_the_fix():
    f = lambda x: jnp.sum(x ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="positive int"):
        derivs.hutchinson_bilaplacian(f, samples=0)
    with pytest.raises(ValueError, match="distribution"):
        derivs.hutchinson_diffusion(f, jnp.eye(3), distribution="sphere")
    with pytest.raises(TypeError, match="sigma is required"):
        derivs.hutchinson_diffusion(f, None)
    with pytest.raises(TypeError, match="jax.random key"):
        derivs.hutchinson_bilaplacian(f)(0, jnp.ones(3))
    with pytest.raises(ValueError, match=r"after the key"):
        derivs.hutchinson_diffusion(f, jnp.eye(3))(jax.random.key(0))
    with pytest.raises(ValueError, match=r"sample_shape \+ \(r,\)"):
        derivs.hutchinson_diffusion(f, jnp.eye(4))(jax.random.key(0), jnp.ones(3))


_SEPARABLE = {  # sum of an activation of each coordinate: a diagonal Hessian
    "gelu": (lambda x: jax.nn.gelu(x, approximate=False), torch.nn.functional.gelu),
    "softplus": (jax.nn.softplus, torch.nn.functional.softplus),
    "silu": (jax.nn.silu, torch.nn.functional.silu),
    "tanh": (jnp.tanh, torch.tanh),
}


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("act", sorted(_SEPARABLE))
@pytest.mark.parametrize("with_stderr", [False, True])
def test_collapsed_estimate_is_exact_on_a_diagonal_hessian(fw, act, with_stderr):
    """NOTE [collapsed estimators]: the collapsed pass (and the read pass behind
    with_stderr) against the exact Laplacian of a separable f, which Rademacher
    directions estimate exactly, per sample of a batch."""
    phi = _SEPARABLE[act][0 if fw == "jax" else 1]
    f = (lambda x: jnp.sum(phi(x) * x, -1)) if fw == "jax" else (lambda x: (phi(x) * x).sum(-1))
    XB = RNG.normal(size=(3, 6))
    est = derivs.hutchinson_laplacian(f, samples=5, batch_axis=0, with_stderr=with_stderr)
    out = est(_key(fw, 4), array(fw, XB))
    mean, err = out if with_stderr else (out, None)
    fj = (lambda x: jnp.sum(_SEPARABLE[act][0](x) * x))
    want = [np.trace(np.asarray(jax.hessian(fj)(jnp.asarray(x)))) for x in XB]
    np.testing.assert_allclose(to_numpy(mean), want, rtol=1e-10, atol=1e-12)
    if with_stderr:
        np.testing.assert_allclose(to_numpy(err), 0.0, atol=1e-10)
    assert derivs.explain(est, _key(fw, 4), array(fw, XB)).strategy == "traced-jet"


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("name", ["hutchinson_laplacian", "hutchinson_bilaplacian"])
def test_estimators_check_the_batch_axis(fw, name):
    """A mean-centring f couples the samples: the estimators refuse batch_axis as
    the exact operators do (it returned 0 +- 0 before)."""
    f = ((lambda x: jnp.sum((x - x.mean(0)) ** 3, -1)) if fw == "jax"
         else (lambda x: ((x - x.mean(0)) ** 3).sum(-1)))
    est = getattr(derivs, name)(f, samples=4, batch_axis=0, with_stderr=True)
    with pytest.raises(ValueError, match="batch_axis=0 is wrong"):
        est(_key(fw, 0), array(fw, RNG.normal(size=(4, 3))))


def test_torch_compile_estimate_equals_eager():
    f = lambda x: (torch.sin(x) * x ** 2).sum(-1) * x[..., 0]  # noqa: E731
    x = torch.as_tensor(RNG.normal(size=(3, 4)))
    eager = derivs.hutchinson_laplacian(f, samples=6, batch_axis=0)(5, x)
    compiled = derivs.hutchinson_laplacian(f, samples=6, batch_axis=0, torch_compile=True)
    torch.testing.assert_close(compiled(5, x), eager)
    with pytest.raises(ValueError, match="torch_compile=True is for PyTorch"):
        derivs.hutchinson_laplacian(lambda v: jnp.sum(v ** 3), torch_compile=True)(
            jax.random.key(0), jnp.ones(3))
