"""Newton's method on a 2-D nonlinear PDE with sparse Jacobians from derivs.

Solves  -Δu + u³ = 10  on the unit square, u = 0 on the boundary, with the
5-point finite-difference Laplacian on an m x m interior grid. Each Newton step
solves J δ = -r with ``scipy.sparse.linalg.spsolve``; derivs detects the
Jacobian's pattern once (5 nonzeros per row), colors it (5 colors, so 5 JVPs
per Jacobian whatever m is) and returns it as a SciPy CSR matrix.

Run:  python examples/newton_pde.py [m]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.sparse.linalg as spla

import derivs


def residual(ns, pad, m: int):
    """The discrete residual r(u) for a framework (``ns``: jnp or torch)."""
    h2 = 1.0 / (m + 1) ** 2

    def r(u):
        U = u.reshape(m, m)
        P = pad(U)  # zero Dirichlet boundary
        lap = (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:] - 4 * U) / h2
        return (-lap + U ** 3 - 10.0).reshape(-1)
    return r


def newton(r, to_framework, to_numpy, n: int, rtol: float = 1e-12, max_steps: int = 20):
    """Newton iterations from u = 0 until the residual norm falls by ``rtol``;
    returns (u, residual norms per step)."""
    J = derivs.jacobian(r, sparse=True, format="scipy")
    u = np.zeros(n)
    norms = []
    for _ in range(max_steps):
        x = to_framework(u)
        res = to_numpy(r(x))
        norms.append(float(np.linalg.norm(res)))
        if norms[-1] <= rtol * norms[0]:
            break
        u = u - spla.spsolve(J(x).tocsc(), res)
    return u, norms


def solve_jax(m: int):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    r = residual(jnp, lambda U: jnp.pad(U, 1), m)
    return newton(r, jnp.asarray, np.asarray, m * m)


def solve_torch(m: int):
    import torch

    r = residual(torch, lambda U: torch.nn.functional.pad(U, (1, 1, 1, 1)), m)
    return newton(r, lambda u: torch.as_tensor(u, dtype=torch.float64),
                  lambda t: t.detach().numpy(), m * m)


if __name__ == "__main__":
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for name, solve in (("JAX", solve_jax), ("PyTorch", solve_torch)):
        t0 = time.perf_counter()
        u, norms = solve(m)
        print(f"{name}: {m}x{m} grid, {len(norms) - 1} Newton steps, residual norms "
              + ", ".join(f"{v:.1e}" for v in norms) + f"; max u = {u.max():.6f}; "
              f"{time.perf_counter() - t0:.2f} s")
