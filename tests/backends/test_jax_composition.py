"""jit / vmap / grad / nesting of derivs transforms in JAX, with closed-form oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import derivs


def f(x):  # R^3 -> R
    return jnp.sin(x[0]) * x[1] ** 3 * jnp.exp(x[2])


def d01(x):  # closed form d^2 f / dx0 dx1
    return jnp.cos(x[0]) * 3 * x[1] ** 2 * jnp.exp(x[2])


X = jnp.array([0.4, -1.3, 0.25])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_preserves_value_and_dtype(dtype):
    x = X.astype(dtype)
    out = jax.jit(derivs.partial(f, (0, 1)))(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, d01(x), rtol=1e-6 if dtype == jnp.float32 else 1e-13)


def test_vmap_over_rows():
    xs = jnp.stack([X, X * 2, -X])
    np.testing.assert_allclose(jax.vmap(derivs.partial(f, (0, 1)))(xs), jax.vmap(d01)(xs),
                               rtol=1e-13)


def test_grad_of_partial_equals_grad_of_closed_form():
    got = jax.grad(derivs.partial(f, (0, 1)))(X)
    np.testing.assert_allclose(got, jax.grad(d01)(X), rtol=1e-13)


def test_partial_of_partial_is_the_higher_partial():
    nested = derivs.partial(derivs.partial(f, 0), 1)
    np.testing.assert_allclose(nested(X), d01(X), rtol=1e-13)
    # and a third order through both routes: d/dx2 of d01 is d01 itself (exp)
    np.testing.assert_allclose(derivs.partial(nested, 2)(X), d01(X), rtol=1e-13)


def test_has_aux_and_kwargs_pass_through():
    g = lambda x, scale=1.0: (scale * f(x), {"x": x, "tag": "kept"})
    d, aux = derivs.partial(g, (0, 1), has_aux=True)(X, scale=2.0)
    np.testing.assert_allclose(d, 2 * d01(X), rtol=1e-13)
    assert aux["tag"] == "kept"
    np.testing.assert_array_equal(aux["x"], X)
    (value, aux2), ds = derivs.value_and_partials(g, [0], has_aux=True)(X)
    np.testing.assert_allclose(value, f(X), rtol=1e-13)
    assert aux2["tag"] == "kept" and set(ds) == {0}


def test_second_argument_and_scalar_argument():
    g = lambda a, t: jnp.sum(a**2) * jnp.sin(t)
    t = jnp.array(0.7)  # 0-d: single index 0
    np.testing.assert_allclose(derivs.partial(g, (0, 0), argnums=1)(X, t),
                               -jnp.sum(X**2) * jnp.sin(t), rtol=1e-13)
    np.testing.assert_allclose(derivs.partial(g, ((0, 2), (1, 0)), argnums=(0, 1))(X, t),
                               2 * X[2] * jnp.cos(t), rtol=1e-13)


def test_pytree_output():
    g = lambda x: {"a": jnp.sin(x), "b": x[0] * x[1]}
    out = derivs.partial(g, (0, 0))(X)
    np.testing.assert_allclose(out["a"], jnp.array([-jnp.sin(X[0]), 0.0, 0.0]), atol=1e-15)
    np.testing.assert_allclose(out["b"], 0.0)


def test_no_n_cubed_tensor_in_the_computation():
    """Memory never scales with the derivative tensor: the largest intermediate of a
    third-order partial of prod at n = 2000 is O(n), not O(n^3) (= 64 GB)."""
    x = jnp.linspace(0.5, 1.5, 2000)
    jaxpr = jax.make_jaxpr(derivs.partial(jnp.prod, (0, 2, 4)))(x)
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) <= 2000
