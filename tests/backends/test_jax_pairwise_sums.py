"""NOTE [pairwise family sums]: on CPU the family sum of a product of two varying
values is a tree of slice-adds over the gathered lanes instead of a psum. Both
ways must give the operator exactly, under jit, vmap, grad, chunking and in
estimators, against nested jax.hessian (an independent oracle)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import derivs
from derivs.backends.jax_engine import _jet

jax.config.update("jax_enable_x64", True)


@pytest.fixture(params=[True, False], ids=["pairwise", "psum"])
def pairwise(request, monkeypatch):
    monkeypatch.setattr(_jet, "PAIRWISE_FAMILY_SUMS", request.param)
    return request.param


def _gated(params, z):
    """The gated MLP of PINN practice: products of two varying values."""
    wu, wv, w, out = params
    U, V = jnp.tanh(z @ wu), jnp.tanh(z @ wv)
    g = jnp.tanh(z @ w)
    h = (1 - g) * U + g * V
    return h @ out


def _attention(params, z):
    """Attention over coordinates: score and value products of varying values."""
    emb, wq, wk = params
    h = z[..., None] * emb
    q, k = h @ wq, h @ wk
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 2.0, axis=-1)
    return (a @ h).sum((-1, -2))


def _params(kind, D, seed=0):
    r = np.random.default_rng(seed)
    if kind == "gated":
        return tuple(jnp.asarray(r.normal(size=s) / np.sqrt(s[0]))
                     for s in [(D, 6), (D, 6), (D, 6), (6,)])
    return tuple(jnp.asarray(r.normal(size=s) * 0.5) for s in [(4,), (4, 4), (4, 4)])


def _model(kind):
    return _gated if kind == "gated" else _attention


def _oracle_laplacian(fn, params, z):
    return jnp.trace(jax.hessian(lambda y: fn(params, y))(z))


@pytest.mark.parametrize("D", [1, 2, 5, 7, 16])
def test_pairwise_sum_is_the_sum(D):
    x = jnp.asarray(np.random.default_rng(D).normal(size=(D, 3, 2)))
    np.testing.assert_allclose(_jet.pairwise_sum(x), x.sum(0), rtol=1e-14)


@pytest.mark.parametrize("kind, D", [("gated", 5), ("gated", 7), ("attention", 5)])
def test_laplacian_both_ways_equals_nested_hessian(pairwise, kind, D):
    fn, params = _model(kind), _params(kind, D)
    X = jnp.asarray(np.random.default_rng(1).normal(size=(4, D)))
    want = jax.vmap(lambda z: _oracle_laplacian(fn, params, z))(X)
    lap = derivs.laplacian(lambda z: fn(params, z), batch_axis=0)
    np.testing.assert_allclose(jax.jit(lap)(X), want, rtol=1e-10)
    # the user's own vmap around the unbatched operator, and chunked families
    unbatched = derivs.laplacian(lambda z: fn(params, z))
    np.testing.assert_allclose(jax.vmap(unbatched)(X), want, rtol=1e-10)
    chunked = derivs.laplacian(lambda z: fn(params, z), batch_axis=0, chunk_size=3)
    np.testing.assert_allclose(jax.jit(chunked)(X), want, rtol=1e-10)


# attention's (18 s of compiles) under slow; its forward stays in the default run
@pytest.mark.parametrize("kind", ["gated", pytest.param("attention", marks=pytest.mark.slow)])
def test_grad_through_the_laplacian_both_ways(pairwise, kind):
    D = 5  # above 4: the family program (JAX unrolls D <= 4)
    fn, params = _model(kind), _params(kind, D)
    X = jnp.asarray(np.random.default_rng(2).normal(size=(2, D)))

    def loss(p):
        return (derivs.laplacian(lambda z: fn(p, z), batch_axis=0)(X) ** 2).sum()

    def oracle(p):
        return (jax.vmap(lambda z: _oracle_laplacian(fn, p, z))(X) ** 2).sum()

    got, want = jax.jit(jax.grad(loss))(params), jax.grad(oracle)(params)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_estimators_exact_on_a_diagonal_hessian_both_ways(pairwise):
    """``sin(x) * x**2`` is a product of two varying values (a cross-term family
    sum) with a diagonal Hessian, where +-1 directions make the estimate exact."""
    X = jnp.asarray(np.random.default_rng(3).normal(size=(3, 6)))

    def f(z):
        return jnp.sum(jnp.sin(z) * z ** 2, -1)

    exact = jnp.sum(2 * jnp.sin(X) + 4 * X * jnp.cos(X) - X ** 2 * jnp.sin(X), -1)
    est = jax.jit(derivs.hutchinson_laplacian(f, samples=4, batch_axis=0))
    np.testing.assert_allclose(est(jax.random.key(7), X), exact, rtol=1e-12)
