"""The JAX path falls back as the PyTorch one does (never a raw tracing error), and
says why in explain. Oracles: jax.hessian / jax.grad / nested jacfwd."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

X = jnp.array([1.0, 2.0, 3.0])


def test_python_branch_on_a_value_falls_back_to_nested_forward():
    f = lambda v: v.sum() ** 2 if v[0] > 0 else v.prod()  # noqa: E731
    d = derivs.partial(f, (0, 1))
    np.testing.assert_allclose(d(X), jax.hessian(f)(X)[0, 1])
    np.testing.assert_allclose(d(-X), jax.hessian(f)(-X)[0, 1])
    e = derivs.explain(d, X)
    assert e.strategy == "nested-forward" and "TracerBoolConversionError" in str(e)
    with pytest.raises(ValueError, match="strategy='traced-jet' cannot be used here"):
        derivs.partial(f, (0, 1), strategy="traced-jet")(X)


def test_custom_vjp_first_order_uses_reverse():
    @jax.custom_vjp
    def g(v):
        return jnp.sin(v).sum()

    g.defvjp(lambda v: (g(v), v), lambda v, ct: (ct * jnp.cos(v),))
    d = derivs.partial(g, (1,))
    np.testing.assert_allclose(d(X), jax.grad(g)(X)[1])
    assert derivs.explain(d, X).strategy == "reverse"


def test_numpy_exponent_at_third_order():
    p = np.array([2.0, 3.0, 4.0])
    f = lambda v: (v ** p).sum()  # noqa: E731
    ref = jax.jacfwd(jax.jacfwd(jax.grad(f)))(X)
    for mi in [(1, 1, 1), (2, 2, 2), (2, 2, 2, 2)]:
        got = derivs.partial(f, mi)(X)
        want = ref[mi] if len(mi) == 3 else jax.jacfwd(jax.jacfwd(jax.jacfwd(
            jax.grad(f))))(X)[mi]
        np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("x", [X, torch.tensor([1.0, 2.0, 3.0])], ids=["jax", "torch"])
def test_f_returning_none_is_a_derivs_error(x):
    with pytest.raises(TypeError, match=r"derivs.partial: f returned (None|a NoneType)"):
        derivs.partial(lambda v: None, (0,))(x)
