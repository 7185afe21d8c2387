"""Derivative formulas both engines share, written once and framework-free.

Each engine evaluates them with its own operations (JAX jets, ATen graph nodes,
PyTorch tensors), so what lives here is the mathematics: coefficients, index
lists and the shape of a computation, never an array.

- ``OUTPUT_POLYNOMIALS``: ops whose derivative is a polynomial in their own output
  (``tanh' = 1 - y^2``), and ``derivative_polynomials``, every higher derivative as
  a polynomial in the output.
- ``product_tree``: the log-depth pairwise product of ``n`` entries along an axis.
- ``multilinear_rule``: the derivatives of ``prod`` over seeded entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from . import _jets

Poly = tuple[float, ...]  # coefficients, lowest power first
T = TypeVar("T")

# NOTE [derivatives from the output]: phi' as a polynomial in y = phi(x). Reading
# the derivative off the output reuses a value the forward pass has anyway, and as
# ``c0 + c1 y + c2 y^2`` the square's Leibniz terms pair up in a jet (fewer
# products than JAX's own ``(1 + y)(1 - y)`` for tanh: see ``jax_engine._rules``).
# Keys are the op names both frameworks use; JAX's logistic is sigmoid.
OUTPUT_POLYNOMIALS: dict[str, Poly] = {
    "tanh": (1.0, 0.0, -1.0),     # 1 - y^2
    "sigmoid": (0.0, 1.0, -1.0),  # y - y^2
    "tan": (1.0, 0.0, 1.0),       # 1 + y^2
}


def _derivative(p: Poly) -> Poly:
    return tuple(k * c for k, c in enumerate(p))[1:] or (0.0,)


def _times(p: Poly, q: Poly) -> Poly:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return tuple(out)


@functools.lru_cache(maxsize=64)
def derivative_polynomials(first: Poly, m: int) -> tuple[Poly, ...]:
    """``phi', ..., phi^(m)`` as polynomials in ``y = phi(x)``, given ``phi' = P(y)``:
    by the chain rule ``phi^(k+1) = (d/dy phi^(k))(y) * P(y)``.

    >>> derivative_polynomials(OUTPUT_POLYNOMIALS["tanh"], 2)
    ((1.0, 0.0, -1.0), (0.0, -2.0, 0.0, 2.0))
    """
    if m < 1:
        raise ValueError(f"m must be a positive order, got {m}")
    polys = [tuple(float(c) for c in first)]
    while len(polys) < m:
        polys.append(_times(_derivative(polys[-1]), polys[0]))
    return tuple(polys)


def horner(p: Poly, y: Any, *, constant: Callable[[float, Any], Any]) -> Any:
    """``p(y)`` by Horner's rule, for any ``y`` with ``*`` and ``+`` by floats;
    ``constant(c, like)`` makes a degree-0 result shaped like ``y``. Each step is
    an array operation, so none is spent on a zero coefficient or a factor of one:
    low-order zeros are factored out as a power of ``y`` (the odd derivative
    polynomials of tanh), ``+ 0`` and ``* 1`` are skipped.

    >>> horner((0.0, -2.0, 0.0, 2.0), 3.0, constant=lambda c, like: c)
    48.0
    """
    coeffs = list(p)
    while len(coeffs) > 1 and coeffs[-1] == 0.0:
        coeffs.pop()
    if len(coeffs) == 1:
        return constant(coeffs[0], y)
    low = 0
    while coeffs[low] == 0.0:
        low += 1
    q = coeffs[low:]  # p = y^low * q
    out = None
    if len(q) == 1:
        if low == 0 or q[0] != 1.0:
            out = constant(q[0], y)
    else:
        out = y if q[-1] == 1.0 else -y if q[-1] == -1.0 else q[-1] * y
        for i in range(len(q) - 2, 0, -1):  # (out + q_i) * y
            out = (out + q[i] if q[i] != 0.0 else out) * y
        if q[0] != 0.0:
            out = out + q[0]
    for _ in range(low):
        out = y if out is None else out * y
    return out


def product_tree(x: T, n: int, *, pad: Callable[[T], T],
                 halves: Callable[[T, int, int], tuple[T, T]],
                 mul: Callable[[T, T], T]) -> T:
    """The product of ``n`` entries along one axis of ``x`` as a balanced tree of
    pairwise products: log depth, so a jet of it has ``O(log n)`` levels of
    Leibniz sums instead of ``n``. ``pad(x)`` appends a one (odd counts),
    ``halves(x, h, n)`` splits the first ``h`` entries from the rest, and ``mul``
    multiplies them. The result keeps a length-1 axis; the caller drops it.

    >>> product_tree([2, 3, 4], 3, pad=lambda v: v + [1],
    ...              halves=lambda v, h, n: (v[:h], v[h:n]),
    ...              mul=lambda a, b: [p * q for p, q in zip(a, b)])
    [24]
    """
    while n > 1:
        if n % 2:
            x, n = pad(x), n + 1
        h = n // 2
        left, right = halves(x, h, n)
        x, n = mul(left, right), h
    return x


def multilinear_rule(seeds: dict[int, int], product_with_ones: Callable[[list[int]], T]
                     ) -> Callable[[Any], T | None]:
    """The coefficient rule of ``prod`` over the seeded entries: ``prod`` is
    multilinear, so ``d^k prod / dx_p1 .. dx_pk`` (distinct ``p``) is the product of
    the other entries, and zero (None) when an entry repeats. One product per
    coefficient, no ``n^k`` work; ``product_with_ones(positions)`` is the product
    with the entries at ``positions`` set to one."""
    def rule(kappa):
        positions = _jets.multilinear_positions(kappa, seeds)
        return None if positions is None else product_with_ones(positions)
    return rule
