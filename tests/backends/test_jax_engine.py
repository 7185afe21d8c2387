"""The JAX jaxpr jet engine on what the sympy cases do not reach: custom_jvp rules,
control flow, custom_vjp fallback, seeds of prod, and trace size at high order.
Oracles: nested jax.jvp (JAX's own forward mode) and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import derivs


@jax.custom_jvp
def _twice_slope(x):
    return jnp.sin(x)


@_twice_slope.defjvp
def _twice_slope_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _twice_slope(x), 2.0 * jnp.cos(x) * t  # deliberately not the true derivative


def test_custom_jvp_rule_is_used_not_bypassed():
    x = jnp.array([0.4, 0.9])
    f = lambda v: jnp.sum(_twice_slope(v) * v[1])
    for mi in [(0,), (0, 0), (0, 0, 0), (0, 1)]:
        ours = derivs.partial(f, mi)(x)
        nested = derivs.partial(f, mi, strategy="nested-forward")(x)
        np.testing.assert_allclose(ours, nested, rtol=1e-12)
    # first order follows the custom rule: 2 cos(x0) * x1, not cos(x0) * x1
    np.testing.assert_allclose(derivs.partial(f, 0)(x), 2 * np.cos(0.4) * 0.9, rtol=1e-12)


def _control_flow(x):
    z = jax.lax.cond(x[0] > 0, lambda a: jnp.sin(a) * a, lambda a: a ** 3, x[1])
    z = jax.lax.fori_loop(0, 3, lambda i, c: c * jnp.tanh(x[0]) + x[2], z)
    z = z + jax.lax.scan(lambda c, xi: (c * xi + jnp.exp(c) * 0.1, c ** 2), x[1], x)[1].sum()
    w = jax.lax.while_loop(lambda c: c[1] < 4, lambda c: (c[0] * jnp.cos(x[2]) + x[0], c[1] + 1),
                           (x[1], 0))[0]
    return z + w + jax.nn.relu(x).sum() * jnp.tan(x[0]) + jnp.atan(x[1]) * jnp.max(x)


@pytest.mark.parametrize("mi", [(0,), (1, 1), (0, 1, 2), (2, 2, 2), (0, 0, 1, 1), (1,) * 5])
def test_control_flow_matches_nested_forward(mi):
    x = jnp.array([0.3, 0.6, -0.2])
    ours = derivs.partial(_control_flow, mi)(x)
    nested = derivs.partial(_control_flow, mi, strategy="nested-forward")(x)
    np.testing.assert_allclose(ours, nested, rtol=1e-11, atol=1e-12)
    jitted = jax.jit(derivs.partial(_control_flow, mi))(x)
    np.testing.assert_allclose(jitted, nested, rtol=1e-11, atol=1e-12)


def test_custom_vjp_falls_back_with_reason():
    @jax.custom_vjp
    def g(x):
        return jnp.sin(x)

    g.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (jnp.cos(x) * ct,))
    e = derivs.explain(lambda x: g(x).sum(), (0, 0), jnp.ones(2))
    assert e.strategy == "nested-forward" and "custom_vjp" in str(e)
    with pytest.raises(ValueError, match="custom_vjp"):
        derivs.partial(lambda x: g(x).sum(), 0, strategy="traced-jet")(jnp.ones(2))


def test_prod_of_seeds_is_the_hand_written_derivative():
    """prod along a seeded axis: one product per coefficient (index fill), not the
    log-depth JVP of reduce_prod; repeated indices are structurally zero."""
    x = jnp.arange(1.0, 7.0)
    d = derivs.partial(jnp.prod, (0, 2, 4))
    jaxpr = jax.make_jaxpr(d)(x)
    prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert prims.count("reduce_prod") <= 2 and "mul" not in prims, prims
    assert float(d(x)) == 2.0 * 4.0 * 6.0
    assert float(derivs.partial(jnp.prod, (1, 1))(x)) == 0.0


def test_trace_grows_polynomially_with_order():
    """Pure k-th derivatives: the traced program grows like k^2, not 2^k or 3^k.

    Orders 3, 6, 12 (each doubling at most 4x): order 2 has its own short path, so a
    ratio against it would measure that path, not the growth (jax 0.9 and 0.10 differ there)."""
    f = lambda x: jnp.sum(jnp.sin(x) * x ** 2) * jnp.exp(jnp.mean(x))
    x = jnp.linspace(0.1, 0.9, 10)
    size = {k: len(jax.make_jaxpr(derivs.partial(f, (0,) * k))(x).jaxpr.eqns) for k in (3, 6, 12)}
    assert size[12] < 4 * size[6] < 16 * size[3], size
    np.testing.assert_allclose(derivs.partial(f, (0,) * 6)(x),
                               derivs.partial(f, (0,) * 6, strategy="nested-forward")(x),
                               rtol=1e-10)


def _nested_pure(f, x, i, k):
    e = jnp.zeros(x.size, x.dtype).at[i].set(1).reshape(x.shape)
    g = f
    for _ in range(k):
        g = (lambda g: lambda z: jax.jvp(g, (z,), (e,))[1])(g)
    return g(x)


NARROW_CASES = {
    # one-hot seeds stay narrow through elementwise ops, products, reductions and a
    # vector entering a dense layer; everything else sees them densified
    "elementwise-reduce": lambda x: jnp.sum(jnp.sin(x) * x ** 2) * jnp.exp(jnp.mean(x)),
    "partial-reduce": lambda x: jnp.sum(jnp.tanh(x.reshape(4, 3)) ** 2, axis=1).prod(),
    "dense-layer-lhs": lambda x: jnp.sum(jnp.tanh(x @ jnp.linspace(-1, 1, 36).reshape(12, 3))),
    "dense-layer-rhs": lambda x: jnp.sum(jnp.cos(jnp.linspace(-1, 1, 36).reshape(3, 12) @ x)),
    "mixed-with-slices": lambda x: jnp.sum(x[1:] * jnp.exp(x[:-1])) + x[3] ** 3,
    "division": lambda x: jnp.sum(jnp.sin(x) / (2 + x ** 2)),
}


@pytest.mark.parametrize("name", sorted(NARROW_CASES))
@pytest.mark.parametrize("i,k", [(0, 1), (3, 2), (5, 3), (11, 4)])
def test_narrow_pure_partials_match_nested_jvp(name, i, k):
    f = NARROW_CASES[name]
    x = jnp.linspace(0.1, 1.2, 12)
    got = derivs.partial(f, (i,) * k)(x)
    np.testing.assert_allclose(got, _nested_pure(f, x, i, k), rtol=1e-10, atol=1e-12)


def test_narrow_seeds_in_a_matrix_argument_and_mixed_indices():
    f = lambda x: jnp.sum(jnp.sin(x) * x.T @ x)  # noqa: E731
    x = jnp.linspace(0.1, 1.2, 9).reshape(3, 3)
    got = derivs.partials(f, [(4, 4), (0, 4), (2, 2, 7)])(x)
    e = lambda i: jnp.zeros(9).at[i].set(1).reshape(3, 3)  # noqa: E731
    d = lambda g, i: (lambda z: jax.jvp(g, (z,), (e(i),))[1])  # noqa: E731
    np.testing.assert_allclose(got[(4, 4)], d(d(f, 4), 4)(x), rtol=1e-10)
    np.testing.assert_allclose(got[(0, 4)], d(d(f, 0), 4)(x), rtol=1e-10)
    np.testing.assert_allclose(got[(2, 2, 7)], d(d(d(f, 2), 2), 7)(x), rtol=1e-10)


@pytest.mark.parametrize("index", [(1, 1, 1), (0, 0, 0, 0, 0), (0, 1, 1), (0, 0, 1, 2, 2)])
def test_tanh_logistic_and_squares_from_the_output(index):
    """tanh' = 1 - y^2 and logistic' = y - y^2 as jets of the output, and squares
    with paired Leibniz terms (NOTE [derivatives from the output]), against nested
    forward mode at orders >= 3, where they are used."""
    W = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    f = lambda x: (jnp.sum(jax.nn.sigmoid(jnp.tanh(x @ W) @ W.T) * x * x)  # noqa: E731
                   + jnp.tanh(x[0] * x[2]) ** 2)
    x = jnp.array([0.3, -0.5, 0.7])
    g = f
    for i in index:
        g = (lambda g, i: lambda z: jax.jvp(g, (z,), (jnp.zeros(3).at[i].set(1.0),))[1])(g, i)
    np.testing.assert_allclose(derivs.partial(f, index)(x), g(x), rtol=1e-10, atol=1e-12)
