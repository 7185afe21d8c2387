"""Direction sets of collapsed operators, framework-free.

A collapsed operator of order ``K`` is ``L f = sum_n w_n D^K f[v_n, ..., v_n]``:
a weighted sum of ``K``-th directional derivatives. Both engines propagate it
with the directions stacked on one family axis (PyTorch: ``torch_engine._family``,
JAX: ``jax_engine.run_directions``); this module only says which directions and
weights an operator needs (the rules themselves: ``core._stacked``).

NOTE [pair interpolation]: a fourth-order operator ``sum_ij c_ij d^4 f / dx_i^2
dx_j^2`` (the Bi-Laplacian is ``c = 1``) is not a sum of fourth powers of the unit
directions, but it is one of ``e_i`` and ``e_i +- e_j``. With ``T`` the fourth
derivative tensor, ``D^4 f[e_i + e_j] + D^4 f[e_i - e_j] = 2 T_iiii + 2 T_jjjj +
12 T_iijj``, so

    sum_ij c_ij T_iijj = sum_{i<j} s_ij / 12 (D^4[e_i + e_j] + D^4[e_i - e_j])
                         + sum_i (c_ii - sum_{j != i} s_ij / 6) T_iiii,

with ``s_ij = c_ij + c_ji``. The Bi-Laplacian takes ``D^2`` directions (``D`` units
and ``D (D - 1)`` pairs), where Griewank-Utke-Walther interpolation with
directions ``4 e_i``, ``3 e_i + e_j``, ``2 e_i + 2 e_j`` (jet-for-pytorch's) takes
``D (3 D - 1) / 2``. The unit weights ``1 - (D - 1) / 3`` are negative for
``D > 4``: no set of positive weights on these lines works there, so the
engines carry signed weights.

A second-order operator ``tr(C H)`` with a symmetric ``C`` takes the eigenvectors
of ``C`` as directions and its eigenvalues as weights (``rank C`` directions); a
factor ``C = S S^T`` given as ``S`` takes ``S``'s columns with weight 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Coord = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class DirectionSet:
    """``rows[n]`` is direction ``v_n`` (flat over one sample), ``weights[n]`` is
    ``w_n``; the operator is ``sum_n w_n D^order f[v_n]``."""

    rows: np.ndarray  # (N, D) float64
    weights: np.ndarray  # (N,) float64
    order: int

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])


def fourth_order_pairs(c: np.ndarray) -> DirectionSet:
    """``sum_ij c_ij d^4 / dx_i^2 dx_j^2`` by NOTE [pair interpolation]; directions of
    zero weight are left out (a sparse ``c`` needs only its pairs)."""
    c = np.asarray(c, dtype=np.float64)
    n = c.shape[0]
    s = c + c.T
    rows, weights = [], []
    eye = np.eye(n)
    for i in range(n):
        w = c[i, i] - (s[i].sum() - s[i, i]) / 6.0
        if w != 0.0:
            rows.append(eye[i])
            weights.append(w)
    for i in range(n):
        for j in range(i + 1, n):
            if s[i, j] != 0.0:
                rows += [eye[i] + eye[j], eye[i] - eye[j]]
                weights += [s[i, j] / 12.0, s[i, j] / 12.0]
    if not rows:
        return DirectionSet(np.zeros((0, n)), np.zeros(0), 4)
    return DirectionSet(np.stack(rows), np.asarray(weights), 4)
def second_order(c: np.ndarray) -> DirectionSet:
    """``sum_ij c_ij d^2 f / dx_i dx_j`` (``tr(C H)``; ``C`` is symmetrized, as the
    Hessian is symmetric): the eigenvectors of ``C`` with their eigenvalues as
    weights. A diagonal ``C`` gives the unit directions exactly."""
    c = np.asarray(c, dtype=np.float64)
    c = (c + c.T) / 2.0
    if np.count_nonzero(c - np.diag(np.diag(c))) == 0:
        keep = np.flatnonzero(np.diag(c))
        return DirectionSet(np.eye(c.shape[0])[keep], np.diag(c)[keep], 2)
    lam, vec = np.linalg.eigh(c)
    # eigenvalues at rounding level of a rank-deficient C: dropping them changes the
    # operator by that rounding only
    keep = np.abs(lam) > np.abs(lam).max() * c.shape[0] * np.finfo(np.float64).eps
    return DirectionSet(vec[:, keep].T.copy(), lam[keep], 2)


@dataclasses.dataclass(frozen=True)
class Classified:
    """A term set that a collapsed family computes: the directions of its top
    order, the first-order coefficients ``drift`` (a direction, or None) and the
    coefficient of f itself."""

    directions: DirectionSet
    drift: np.ndarray | None
    value: float


def classify(coefficients, requests, n: int) -> Classified | None:
    """Recognizes ``sum c * d^alpha f`` over one argument of ``n`` coordinates as a
    collapsed family: every term of order <= 2 (a second-order operator with
    drift), or every term of order 4 of the form ``d^4 / dx_i^2 dx_j^2`` (with
    value terms). None for other term sets (they run as coordinate groups)."""
    orders = {len(mi) for mi in requests}
    if any(slot != 0 for mi in requests for slot, _ in mi):
        return None
    value = sum(c for c, mi in zip(coefficients, requests) if not mi)
    if orders <= {0, 1, 2} and 2 in orders:
        C = np.zeros((n, n))
        b = np.zeros(n)
        for c, mi in zip(coefficients, requests):
            flats = [f for _, f in mi]
            if len(flats) == 2:
                i, j = flats
                C[i, j] += c / 2.0
                C[j, i] += c / 2.0
            elif len(flats) == 1:
                b[flats[0]] += c
        return Classified(second_order(C), b if b.any() else None, float(value))
    if orders <= {0, 4} and 4 in orders:
        C = np.zeros((n, n))
        for c, mi in zip(coefficients, requests):
            if not mi:
                continue
            flats = sorted(f for _, f in mi)
            if not (flats[0] == flats[1] and flats[2] == flats[3]):
                return None
            C[flats[0], flats[2]] += c
        return Classified(fourth_order_pairs(C), None, float(value))
    return None
