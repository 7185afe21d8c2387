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

import dataclasses
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


def multilinear_positions(kappa: Kappa, seeds: dict[int, int]) -> list[int] | None:
    """For a function multilinear in the entries of a seeded input (prod): the
    sorted entry positions that coefficient ``kappa`` differentiates once each, or
    None where the coefficient is zero (an entry twice, or a group that seeds
    another argument)."""
    if any(k > 1 for k in kappa) or any(k and g not in seeds for g, k in enumerate(kappa)):
        return None
    return sorted(seeds[g] for g, k in enumerate(kappa) if k)


# -- collapsed operator coefficients ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Collapsed:
    """The coefficient ``sum_alpha c_alpha * v[alpha]`` of a linear differential
    operator ``L = sum_alpha c_alpha d^alpha``, propagated as one value.

    NOTE [collapsed Taylor mode]: ``L`` is linear, so in the product rule
    ``L(ab) = a L(b) + L(a) b + sum_alpha c_alpha sum_{0 < tau < alpha} C a[tau] b[alpha-tau]``
    the top-order coefficients enter only through ``L(a)`` and ``L(b)``: they are
    summed before propagation instead of carried one by one. The chain rule
    collapses the same way (``phi'(a) L(a) + lower terms``). A Laplacian in ``D``
    coordinates then carries ``2 + D`` values per intermediate instead of ``1 + 2D``,
    and every lower coefficient ``tau`` is shared by all the terms that need it.
    """

    terms: tuple[tuple[float, Kappa], ...]
    # When set, the terms run over a vmapped family of directions with this axis
    # name (JAX): the lower coefficients are per direction, and the collapsed one is
    # their sum across the family (``lax.psum``), e.g. a Laplacian's D directions.
    family: str | None = None

    @property
    def groups(self) -> int:
        return len(self.terms[0][1])


Key = Kappa | Collapsed


def is_zero(key: Key) -> bool:
    return not isinstance(key, Collapsed) and not any(key)


@functools.lru_cache(maxsize=4096)
def collapsed_leibniz_terms(key: Collapsed) -> tuple[tuple[Key, Key, float], ...]:
    """``(left key, right key, multiplicity)`` of ``(a*b)[key]``."""
    z = zero(key.groups)
    out: dict[tuple[Key, Key], float] = {(z, key): 1.0, (key, z): 1.0}
    for c, alpha in key.terms:
        for t, r, m in leibniz_terms(alpha):
            if any(t) and any(r):
                out[(t, r)] = out.get((t, r), 0.0) + c * m
    return tuple((t, r, m) for (t, r), m in out.items() if m != 0)


@functools.lru_cache(maxsize=4096)
def collapsed_chain_terms(key: Collapsed) -> tuple[tuple[Key, Key, float], ...]:
    """``(psi key, a key, multiplicity)`` of ``phi(a)[key]``."""
    z = zero(key.groups)
    out: dict[tuple[Key, Key], float] = {(z, key): 1.0}
    for c, alpha in key.terms:
        for t, r, m in chain_terms(alpha):
            if any(t):
                out[(t, r)] = out.get((t, r), 0.0) + c * m
    return tuple((t, r, m) for (t, r), m in out.items() if m != 0)


def product_terms(key: Key):
    return (collapsed_leibniz_terms(key) if isinstance(key, Collapsed)
            else leibniz_terms(key))


def composition_terms(key: Key):
    return (collapsed_chain_terms(key) if isinstance(key, Collapsed)
            else chain_terms(key))


def closure(key: Key) -> tuple[Key, ...]:
    """Every key that ``key``'s rules can read: its lower set (and itself)."""
    if not isinstance(key, Collapsed):
        return below(key)
    seen: dict[Kappa, None] = {}
    for _, alpha in key.terms:
        for t in below(alpha):
            if t != alpha:
                seen[t] = None
    return (*sorted(seen, key=lambda t: (sum(t), t)), key)


def jet_cost(keys) -> float:
    """Products per product of f when computing ``keys`` lazily in one pass: one per
    Leibniz term of every coefficient read (each lower coefficient once)."""
    needed: dict[Key, None] = {}
    for key in keys:
        needed.update(dict.fromkeys(closure(key)))
    return float(sum(len(product_terms(k)) for k in needed))


@functools.lru_cache(maxsize=4096)
def second_order_pairs(key: Key) -> tuple[tuple[Kappa, Kappa, float], ...] | None:
    """For a key of total order <= 2 (or a collapsed key whose terms all are): the
    ``(tau, kappa - tau, weight)`` pairs of Faa di Bruno's second-order term, so that
    ``phi(a)[key] = phi'(a) a[key] + phi''(a) sum weight * a[tau] a[kappa - tau]``.
    None for higher orders."""
    if isinstance(key, Collapsed):
        out: dict[tuple[Kappa, Kappa], float] = {}
        for c, alpha in key.terms:
            if sum(alpha) > 2:
                return None
            for t, r, m in second_order_pairs(alpha) or ():  # order <= 2: never None
                out[(t, r)] = out.get((t, r), 0.0) + c * m
        return tuple((t, r, m) for (t, r), m in out.items() if m != 0)
    if sum(key) > 2:
        return None
    if sum(key) < 2:
        return ()
    g = key.index(next(k for k in key if k))
    t = unit(len(key), g)
    return ((t, sub(key, t), 1.0),)
