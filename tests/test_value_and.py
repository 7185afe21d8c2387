"""``value_and_jacobian`` / ``value_and_hessian``: the value and the derivative, dense
and sparse, in both frameworks, against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import derivs
from tests._frameworks import FRAMEWORKS, array, to_numpy

jax.config.update("jax_enable_x64", True)

X = np.array([0.5, -1.0, 2.0, 1.5])


def _residual(fw):
    """``r_i = x_{i+1}^2 - x_i``, Jacobian: -1 on the diagonal, 2 x_{i+1} above it."""
    return lambda x: x[1:] ** 2 - x[:-1]


def _jacobian(x):
    J = np.zeros((3, 4))
    for i in range(3):
        J[i, i], J[i, i + 1] = -1.0, 2 * x[i + 1]
    return J


def _dense(J):
    if isinstance(J, sp.sparray):
        return J.toarray()
    if hasattr(J, "todense"):
        return np.asarray(J.todense())
    if isinstance(J, torch.Tensor) and J.layout != torch.strided:
        return J.to_dense().numpy()
    return to_numpy(J)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("options", [{}, {"sparse": True}, {"sparse": True, "format": "scipy"}])
def test_value_and_jacobian(fw, options):
    x = array(fw, X)
    value, J = derivs.value_and_jacobian(_residual(fw), **options)(x)
    np.testing.assert_allclose(to_numpy(value), X[1:] ** 2 - X[:-1], rtol=1e-14)
    np.testing.assert_allclose(_dense(J).reshape(3, 4), _jacobian(X), rtol=1e-14)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_value_and_hessian_with_aux(fw):
    s = jnp.sum if fw == "jax" else torch.sum

    def f(x):
        return s(x ** 3) + x[0] * x[1], "aux"

    x = array(fw, X)
    (value, aux), H = derivs.value_and_hessian(f, has_aux=True, sparse=True, format="dense")(x)
    want = np.diag(6 * X)
    want[0, 1] = want[1, 0] = 1.0
    np.testing.assert_allclose(to_numpy(value), np.sum(X ** 3) + X[0] * X[1], rtol=1e-14)
    assert aux == "aux"
    np.testing.assert_allclose(_dense(H), want, rtol=1e-14)


def test_second_argument_jit_and_explain():
    def f(a, x):
        return a * jnp.sin(x)

    a, x = jnp.asarray(2.0), jnp.asarray(X)
    op = derivs.value_and_jacobian(f, argnums=1)
    value, J = jax.jit(op)(a, x)
    np.testing.assert_allclose(value, 2 * np.sin(X), rtol=1e-14)
    np.testing.assert_allclose(J, np.diag(2 * np.cos(X)), rtol=1e-14)
    assert "jacobian" in str(derivs.explain(op, a, x))


def test_errors_name_the_fix():
    with pytest.raises(TypeError, match="callable"):
        derivs.value_and_jacobian(3)
    with pytest.raises(TypeError, match="True or False"):
        derivs.value_and_hessian(jnp.sum, has_aux="yes")
    with pytest.raises(TypeError, match="argnums"):
        derivs.value_and_jacobian(jnp.sin, argnum=0)
    with pytest.raises(ValueError, match="sparse=True"):  # jacobian's own check, at creation
        derivs.value_and_jacobian(jnp.sin, format="scipy")
    with pytest.raises(TypeError, match=r"\(output, aux\)"):
        derivs.value_and_jacobian(jnp.sin, has_aux=True)(jnp.asarray(X))
