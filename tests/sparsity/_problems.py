"""Test and benchmark problems written once per framework (``ns`` is jnp or torch)."""

from __future__ import annotations

import numpy as np


def fd1d(ns):
    """1-D finite-difference residual of u'' = u^3 - 1 (tridiagonal Jacobian)."""
    def f(u):
        return u[2:] - 2 * u[1:-1] + u[:-2] - 0.01 * (u[1:-1] ** 3 - 1)
    return f


def rosenbrock(ns):
    """Chained Rosenbrock (tridiagonal Hessian)."""
    def f(x):
        return ns.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    return f


def laplace2d(ns, pad):
    """2-D 5-point Laplacian residual with a cubic term on a square grid, zero
    Dirichlet boundary (``pad(U)`` pads one zero cell on every side)."""
    def f(u):
        m = int(round(np.sqrt(u.shape[0])))
        U = u.reshape(m, m)
        P = pad(U)
        return (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:] - 4 * U - 0.1 * U ** 3
                ).reshape(-1)
    return f


def five_point_pattern(m: int) -> np.ndarray:
    """The exact pattern of :func:`laplace2d` (dense, for small ``m``)."""
    n = m * m
    P = np.zeros((n, n), bool)
    for i in range(m):
        for j in range(m):
            r = i * m + j
            P[r, r] = True
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                a, b = i + di, j + dj
                if 0 <= a < m and 0 <= b < m:
                    P[r, a * m + b] = True
    return P
