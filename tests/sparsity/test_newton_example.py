"""The Newton example converges quadratically in both frameworks, to the solution
a dense-Jacobian Newton iteration finds (the oracle)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "newton_pde", Path(__file__).parents[2] / "examples" / "newton_pde.py")
newton_pde = importlib.util.module_from_spec(spec)
spec.loader.exec_module(newton_pde)


def _dense_newton(m):
    r = newton_pde.residual(jnp, lambda U: jnp.pad(U, 1), m)
    u = jnp.zeros(m * m)
    for _ in range(8):
        u = u - jnp.linalg.solve(jax.jacfwd(r)(u), r(u))
    return np.asarray(u)


@pytest.mark.parametrize("solve", ["solve_jax", "solve_torch"])
def test_newton_converges_to_the_dense_solution(solve):
    m = 12
    u, norms = getattr(newton_pde, solve)(m)
    assert norms[-1] <= 1e-12 * norms[0]
    assert len(norms) <= 7  # quadratic convergence: a handful of steps
    assert norms[2] < 1e-1 * norms[1]
    np.testing.assert_allclose(u, _dense_newton(m), rtol=1e-10, atol=1e-12)
