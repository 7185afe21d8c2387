"""Multi-index combinatorics for derivative-normalized jets.

A pass differentiates with respect to ``G`` distinct coordinates, coordinate ``g``
up to ``m_g`` times (the pass's *box*). Every value in the computation carries
coefficients ``c[kappa]`` for count vectors ``kappa <= m`` (componentwise), where
``c[kappa]`` is the partial derivative ``d^|kappa| v / prod_g dx_g^kappa_g``
itself (not divided by factorials). Requests are read off at their count vector.

Rules in this normalization (tau <= kappa componentwise, C = product of binomials):

* product (Leibniz):  (a*b)[kappa] = sum_tau C(kappa, tau) a[tau] b[kappa - tau]
  (the same for any bilinear op, e.g. matrix products);
* chain rule for phi(a) with phi' = psi: pick a coordinate g with kappa_g >= 1 and
  let kappa' = kappa - e_g, then
  phi(a)[kappa] = sum_{tau <= kappa'} C(kappa', tau) psi(a)[tau] a[kappa - tau].

Because identical directions share one count, a pure k-th derivative costs O(k^2)
terms per product instead of the 3^k of nested hyper-dual numbers, and a mixed
request with distinct coordinates costs the same as hyper-dual numbers.
"""

from __future__ import annotations

import functools
import itertools
import math

Kappa = tuple[int, ...]


@functools.lru_cache(maxsize=4096)
def below(kappa: Kappa) -> tuple[Kappa, ...]:
    """All ``tau <= kappa`` in increasing order of total degree."""
    taus = itertools.product(*(range(k + 1) for k in kappa))
    return tuple(sorted(taus, key=lambda t: (sum(t), t)))


def binom(kappa: Kappa, tau: Kappa) -> int:
    return math.prod(math.comb(k, t) for k, t in zip(kappa, tau))


def sub(a: Kappa, b: Kappa) -> Kappa:
    return tuple(x - y for x, y in zip(a, b))


@functools.lru_cache(maxsize=4096)
def leibniz_terms(kappa: Kappa) -> tuple[tuple[Kappa, Kappa, int], ...]:
    """``(tau, kappa - tau, multiplicity)`` for the product rule."""
    return tuple((t, sub(kappa, t), binom(kappa, t)) for t in below(kappa))


@functools.lru_cache(maxsize=4096)
def chain_terms(kappa: Kappa) -> tuple[tuple[Kappa, Kappa, int], ...]:
    """``(psi index, a index, multiplicity)`` for ``phi(a)[kappa]``, kappa != 0."""
    g = max(i for i, k in enumerate(kappa) if k > 0)
    reduced = tuple(k - (i == g) for i, k in enumerate(kappa))
    return tuple((t, sub(kappa, t), binom(reduced, t)) for t in below(reduced))


def zero(groups: int) -> Kappa:
    return (0,) * groups


def unit(groups: int, g: int) -> Kappa:
    return tuple(int(i == g) for i in range(groups))


def box_cost(box: Kappa) -> float:
    """Leibniz terms summed over every coefficient of a box: the jet engine's cost
    of one product, relative to the product itself."""
    return float(math.prod((m + 1) * (m + 2) // 2 for m in box))
