"""Attacks on ``pattern=`` (review of the given patterns): each of these gave a
wrong Jacobian with no error before it was fixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import derivs
from tests._frameworks import FRAMEWORKS, array, to_numpy
from tests.sparsity.test_given_pattern import N, X, _bidiagonal, _dense_jacobian, _grid, _residual

jax.config.update("jax_enable_x64", True)


def test_a_pattern_for_another_shape_or_transposed_is_refused():
    x = jnp.asarray(np.arange(6.0).reshape(3, 2) / 3)
    other = derivs.sparsity(_grid, jnp.ones((2, 3)))  # same size, other grid
    with pytest.raises(ValueError, match="Pass the pattern of this signature"):
        derivs.jacobian(_grid, sparse=True, pattern=other)(x)
    with pytest.raises(TypeError, match=r"got ndarray of shape \(2, 3, 2, 3\)"):
        derivs.jacobian(_grid, sparse=True, pattern=np.ones((2, 3, 2, 3), bool))(x)
    # a transposed (n, m) array of a non-square Jacobian
    with pytest.raises(TypeError, match=r"got ndarray of shape \(6, 5\)"):
        derivs.jacobian(_residual, sparse=True, pattern=_bidiagonal().toarray().T)(
            jnp.asarray(X))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_stored_zeros_of_a_scipy_pattern_count(fw):
    """derivs' own scipy result at x = 0 stores the entries 2 x_{i+1}, which vanish
    there: reused as pattern=, they are still entries."""
    zero = array(fw, np.zeros(N))
    at_zero = derivs.jacobian(_residual, sparse=True, format="scipy")(zero)
    assert at_zero.nnz == 2 * (N - 1) and np.count_nonzero(at_zero.data) == N - 1
    x = array(fw, X)
    got = derivs.jacobian(_residual, sparse=True, pattern=at_zero, format="dense")(x)
    np.testing.assert_allclose(to_numpy(got), _dense_jacobian(fw, _residual, x), rtol=1e-14)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_check_also_looks_near_a_point_where_missing_entries_vanish(fw):
    J = derivs.jacobian(_residual, sparse=True, pattern=sp.eye(N - 1, N), check=True)
    with pytest.raises(ValueError, match="pattern= misses entries"):
        J(array(fw, np.zeros(N)))  # the missing 2 x_{i+1} are 0 at the point itself


def test_check_under_jit_warns_and_checks_on_the_first_eager_call():
    J = derivs.jacobian(_residual, sparse=True, pattern=sp.eye(N - 1, N), check=True)
    with pytest.warns(derivs.SparsityWarning, match="cannot run while jax traces"):
        jax.jit(J)(jnp.asarray(X))
    with pytest.raises(ValueError, match="pattern= misses entries"):
        J(jnp.asarray(X))
