"""Univariate series arithmetic (``core/_univariate.py``) against sympy: the
derivatives of compositions and products, Faa di Bruno's coefficients, Hermite
polynomials. The fused elementwise regions of both engines read these."""

import math

import pytest
import sympy as sp

from derivs.core import _univariate as U

_X = sp.Symbol("x")
_M = 5


def _series(expr, x0: float, m: int = _M) -> list:
    return [float(sp.diff(expr, _X, k).subs(_X, x0)) for k in range(m + 1)]


def _close(got, want, tol=1e-10):
    got = 0.0 if got is None else float(got)
    return math.isclose(got, want, rel_tol=tol, abs_tol=tol)


_INNER = [sp.sin(_X) + _X ** 2, sp.exp(_X / 3), _X, 2 * _X + 1]
_OUTER = [sp.tanh, sp.exp, lambda u: sp.log(2 + u), lambda u: u ** 3]


@pytest.mark.parametrize("inner", range(len(_INNER)))
@pytest.mark.parametrize("outer", range(len(_OUTER)))
def test_compose_is_faa_di_bruno(inner, outer):
    u, phi = _INNER[inner], _OUTER[outer]
    x0 = 0.37
    us = _series(u, x0)
    y = sp.Symbol("y")
    f = [float(sp.diff(phi(y), y, k).subs(y, us[0])) for k in range(1, _M + 1)]
    got = U.compose(f, us, _M)
    want = _series(phi(u), x0)[1:]
    assert all(_close(g, w) for g, w in zip(got, want)), (got, want)


def test_compose_skips_structural_zeros():
    # along the direction 1 the composition's derivatives are the outer ones
    f = [2.0, 3.0, 5.0]
    assert U.compose(f, U.variable(0.5, 3), 3) == f


@pytest.mark.parametrize("pair", [(sp.sin(_X), sp.exp(2 * _X)), (_X ** 3, 1 / (1 + _X ** 2)),
                                  (_X, _X)])
def test_leibniz_is_the_product_rule(pair):
    a, b = pair
    x0 = -0.6
    got = U.leibniz(_series(a, x0), _series(b, x0), _M)
    want = _series(a * b, x0)[1:]
    assert all(_close(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("p", [0.5, -1.0, -0.5, 3.0, 2.0])
def test_power_of_a_series(p):
    u = sp.exp(_X) + 1
    x0 = 0.2
    got = U.power(_series(u, x0), p, _M, lambda b, e: b ** e)
    want = _series(u ** p, x0)
    assert all(_close(g, w) for g, w in zip(got, want))


def test_derivatives_from_first():
    # atan' = 1 / (1 + x^2)
    def first(X, k):
        sq = [X[0] * X[0]] + U.leibniz(X, X, k)
        return U.power([1.0 + sq[0]] + sq[1:], -1.0, k, lambda b, e: b ** e)

    got = U.derivatives_from_first(first, 0.8, 4)
    want = _series(sp.atan(_X), 0.8, 4)[1:]
    assert all(_close(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("n", range(7))
def test_hermite(n):
    want = sp.Poly(sp.hermite(n, _X), _X).all_coeffs()[::-1]
    assert U.hermite(n) == tuple(float(c) for c in want)


@pytest.mark.parametrize("k", range(1, 8))
def test_bell_terms_count_set_partitions(k):
    # the coefficients count the set partitions of k elements: sum = Bell number
    assert sum(c for _, c, _ in U.bell_terms(k)) == int(sp.bell(k))
    assert all(sum(parts) == k and len(parts) == j for j, _, parts in U.bell_terms(k))
