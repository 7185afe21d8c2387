"""``pattern=``: a known pattern instead of detection, on sparse Jacobians and
Hessians in both frameworks, against dense derivatives of the framework."""

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

N = 6
X = np.linspace(-1.0, 1.5, N)


def _residual(x):  # bidiagonal Jacobian: d r_i / d x_i = -1, d r_i / d x_{i+1} = 2 x_{i+1}
    return x[1:] ** 2 - x[:-1]


def _dense_jacobian(fw, f, x):
    return to_numpy(jax.jacfwd(f)(x) if fw == "jax" else torch.func.jacfwd(f)(x))


def _bidiagonal():
    return sp.diags([np.ones(N - 1), np.ones(N - 1)], [0, 1], shape=(N - 1, N))


def _tridiagonal():
    return sp.diags([np.ones(N - 2), np.ones(N - 1), np.ones(N - 1)], [-1, 0, 1],
                    shape=(N - 1, N))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("kind", ["scipy", "superset", "bool array", "Pattern"])
def test_jacobian_with_a_given_pattern(fw, kind):
    x = array(fw, X)
    given = {
        "scipy": _bidiagonal(),
        "superset": _tridiagonal(),  # extra entries come out as zeros
        "bool array": _bidiagonal().toarray().astype(bool),
        "Pattern": derivs.sparsity(_residual, array("jax", X)),
    }[kind]
    J = derivs.jacobian(_residual, sparse=True, pattern=given, format="dense", check=True)
    np.testing.assert_allclose(to_numpy(J(x)), _dense_jacobian(fw, _residual, x), rtol=1e-14)
    assert "given pattern" in str(derivs.explain(J, x))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_hessian_with_one_triangle_given(fw):
    s = jnp.sum if fw == "jax" else torch.sum

    def f(x):
        return s(x[1:] * x[:-1] ** 2) + s(x ** 4)

    x = array(fw, X)
    upper = sp.diags([np.ones(N), np.ones(N - 1)], [0, 1], shape=(N, N))
    H = derivs.hessian(f, sparse=True, pattern=upper, format="dense")(x)
    want = jax.hessian(f)(x) if fw == "jax" else torch.func.hessian(f)(x)
    np.testing.assert_allclose(to_numpy(H), to_numpy(want), rtol=1e-13)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_a_pattern_missing_entries_is_caught_by_check(fw):
    J = derivs.jacobian(_residual, sparse=True, pattern=sp.eye(N - 1, N), check=True)
    with pytest.raises(ValueError, match="pattern passed as pattern= misses entries"):
        J(array(fw, X))


def test_given_pattern_errors_name_the_fix():
    x = jnp.asarray(X)
    with pytest.raises(ValueError, match="sparse=True"):
        derivs.jacobian(_residual, pattern=_bidiagonal())
    with pytest.raises(TypeError, match="one argument"):
        derivs.jacobian(lambda a, b: a * b, argnums=(0, 1), sparse=True, pattern=sp.eye(N))
    with pytest.raises(TypeError, match=r"boolean array of shape \(5, 6\)"):
        derivs.jacobian(_residual, sparse=True, pattern="banded")(x)
    with pytest.raises(TypeError, match=r"got ndarray of shape \(3, 3\)"):
        derivs.jacobian(_residual, sparse=True, pattern=np.ones((3, 3)))(x)
    with pytest.raises(ValueError, match="5 x 6"):
        derivs.jacobian(_residual, sparse=True, pattern=sp.eye(6, 6))(x)


def _grid(x):
    """A 2-D field's 5-point-like stencil: output (3, 2) from input (3, 2)."""
    return x ** 2 + jnp.roll(x, 1, axis=0) * 0.5 - jnp.roll(x, 1, axis=1)


def test_a_pattern_shaped_output_plus_input():
    x = jnp.asarray(np.arange(6.0).reshape(3, 2) / 3)
    J = jax.jacfwd(_grid)(x)  # (3, 2, 3, 2)
    pattern = np.abs(np.asarray(J)) > 0
    pattern = pattern | (np.abs(np.asarray(jax.jacfwd(_grid)(x + 1.0))) > 0)
    got = derivs.jacobian(_grid, sparse=True, pattern=pattern, format="dense", check=True)(x)
    np.testing.assert_allclose(got, J, rtol=1e-14)

