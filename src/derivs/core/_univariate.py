"""Univariate Taylor arithmetic on derivative lists, framework-free.

NOTE [univariate series]: a *series* ``s = [s_0, s_1, ..., s_m]`` holds a value
``s_0`` and its first ``m`` derivatives along one direction (derivative-normalized,
as in ``core._jets``: ``s_k`` is the k-th derivative itself, not divided by
``k!``). Entries are arrays of any framework that has ``+`` and ``*``, Python
floats (constants), or None (structural zeros, never materialized).

The engines use it for elementwise functions: along the direction ``1`` of a
value ``x`` (the series ``[x, 1, 0, ...]``), an elementwise ``phi`` built from
elementary ops has the series ``[phi(x), phi'(x), ..., phi^(m)(x)]``, so the
derivatives a collapsed rule needs (NOTE [elementwise derivatives] in the
PyTorch family program) come from a few cheap value-sized ops, whatever the
number of directions. Checked against sympy in ``tests/core``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

class Series(list):
    """``[value, d1, ..., dm]`` (entries: array, float or None), as a type of its own
    so that rules tell it from a constant argument that happens to be a list."""


# -- coefficient arithmetic with None as zero and floats folded -----------------------
def add(x: Any, y: Any) -> Any:
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(x, float) and x == 0.0:
        return y
    if isinstance(y, float) and y == 0.0:
        return x
    return x + y


def mul(x: Any, y: Any) -> Any:
    if x is None or y is None:
        return None
    if isinstance(x, float):
        x, y = y, x
    if isinstance(y, float):
        if y == 0.0:
            return None
        if y == 1.0:
            return x
        if y == -1.0 and not isinstance(x, float):
            return -x
    return x * y


def scale(x: Any, c: float) -> Any:
    return mul(x, float(c))


def total(terms) -> Any:
    out = None
    for t in terms:
        out = add(out, t)
    return out


# -- rules ------------------------------------------------------------------------------
def leibniz(a: Sequence, b: Sequence, m: int) -> list:
    """The derivatives ``1..m`` of ``a * b`` (elementwise) from both series:
    ``(ab)_k = sum_j C(k, j) a_j b_{k-j}``; the value is the caller's."""
    out = []
    for k in range(1, m + 1):
        out.append(total(scale(mul(a[j], b[k - j]), math.comb(k, j)) for j in range(k + 1)))
    return out


@functools.lru_cache(maxsize=64)
def bell_terms(k: int) -> tuple[tuple[int, float, tuple[int, ...]], ...]:
    """Faa di Bruno's terms for the k-th derivative of ``f(u)``: ``(j, coefficient,
    parts)`` with ``(f o u)^(k) = sum coefficient * f^(j)(u) * prod_{p in parts} u_p``,
    one per integer partition of ``k`` (``j`` parts). The coefficient is
    ``k! / prod_i (m_i! (i!)^m_i)`` for a partition with ``m_i`` parts of size ``i``.

    >>> bell_terms(3)
    ((1, 1.0, (3,)), (2, 3.0, (2, 1)), (3, 1.0, (1, 1, 1)))
    """
    out = []
    for parts in _partitions(k, k):
        counts: dict[int, int] = {}
        for p in parts:
            counts[p] = counts.get(p, 0) + 1
        den = math.prod(math.factorial(c) * math.factorial(i) ** c for i, c in counts.items())
        out.append((len(parts), float(math.factorial(k) // den), parts))
    return tuple(sorted(out))


def _partitions(n: int, largest: int):
    """Integer partitions of ``n`` into parts ``<= largest``, parts descending."""
    if n == 0:
        yield ()
        return
    for p in range(min(n, largest), 0, -1):
        for rest in _partitions(n - p, p):
            yield (p, *rest)


def compose(f: Sequence, u: Sequence, m: int) -> list:
    """The derivatives ``1..m`` of ``phi(u)`` from ``f = [phi'(u_0), ..., phi^(m)(u_0)]``
    and the series ``u`` (Faa di Bruno); the value is the caller's. Terms whose
    factors are structural zeros are skipped, so along the direction ``1``
    (``u = [x, 1, None, ...]``) the result is ``f`` itself."""
    out = []
    for k in range(1, m + 1):
        terms = []
        for j, c, parts in bell_terms(k):
            prod = f[j - 1] if j - 1 < len(f) else None
            for p in parts:
                prod = mul(prod, u[p])
                if prod is None:
                    break
            terms.append(scale(prod, c))
        out.append(total(terms))
    return out


def variable(x: Any, m: int) -> Series:
    """The series of ``x`` along the direction 1: ``[x, 1, 0, ..., 0]``."""
    return Series([x] + ([1.0] if m >= 1 else []) + [None] * (m - 1))


def constant(c: Any, m: int) -> Series:
    return Series([c] + [None] * m)


def derivatives_from_first(first: Callable[[Series, int], Series], x: Any, m: int) -> list:
    """``[phi'(x), ..., phi^(m)(x)]`` given ``first(X, k)``: the series of ``phi'`` to
    order ``k`` for the series ``X`` of ``x`` (``phi^(j+1)`` is the j-th derivative
    of ``phi'``). For functions whose derivative is simpler than they are
    (``atan' = 1 / (1 + x^2)``)."""
    return list(first(variable(x, m - 1), m - 1))[:m]


def power(u: Series, p: float, m: int, pow_fn: Callable[[Any, float], Any]) -> Series:
    """``u ** p`` as a series (``pow_fn(base, exponent)`` evaluates powers of arrays)."""
    u0 = u[0]
    f, coef = [], 1.0
    for k in range(1, m + 1):
        coef *= p - k + 1
        f.append(None if coef == 0.0 else coef * pow_fn(u0, p - k))
    return Series([pow_fn(u0, p)] + compose(f, u, m))


def poly_in_output(first: tuple[float, ...], y: Any, m: int, constant_like: Callable) -> list:
    """``[phi', ..., phi^(m)]`` when ``phi' = P(y)`` is a polynomial in the output
    ``y`` (``core._formulas.derivative_polynomials``), each by Horner's rule."""
    from . import _formulas

    return [_formulas.horner(p, y, constant=constant_like)
            for p in _formulas.derivative_polynomials(first, m)]


def hermite(n: int) -> tuple[float, ...]:
    """The physicists' Hermite polynomial ``H_n`` (coefficients, lowest power first):
    ``d^n/dx^n exp(-x^2) = (-1)^n H_n(x) exp(-x^2)``."""
    return _hermite(n)


@functools.lru_cache(maxsize=32)
def _hermite(n: int) -> tuple[float, ...]:
    if n == 0:
        return (1.0,)
    if n == 1:
        return (0.0, 2.0)
    a, b = _hermite(n - 1), _hermite(n - 2)
    out = [0.0] * (n + 1)
    for i, c in enumerate(a):  # 2x H_{n-1}
        out[i + 1] += 2.0 * c
    for i, c in enumerate(b):  # - 2 (n - 1) H_{n-2}
        out[i] -= 2.0 * (n - 1) * c
    return tuple(out)
