"""The shared derivative formulas (``core/_formulas.py``) against sympy and plain
products: both engines' tanh / sigmoid / tan rules and product trees read them."""

import math

import pytest
import sympy as sp

from derivs.core import _formulas

_X = sp.Symbol("x")
_FUNCTIONS = {"tanh": sp.tanh(_X), "sigmoid": 1 / (1 + sp.exp(-_X)), "tan": sp.tan(_X)}


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
def test_derivative_polynomials_match_sympy(name):
    phi = _FUNCTIONS[name]
    polys = _formulas.derivative_polynomials(_formulas.OUTPUT_POLYNOMIALS[name], 5)
    assert len(polys) == 5
    for k, poly in enumerate(polys, start=1):
        in_output = sum(c * phi ** i for i, c in enumerate(poly))
        for x in (-1.3, 0.2, 0.9):  # numerically: sympy's simplify is slow on these
            want = float(sp.diff(phi, _X, k).subs(_X, x))
            got = float(in_output.subs(_X, x))
            assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (name, k, x)


def test_derivative_polynomials_rejects_order_zero():
    with pytest.raises(ValueError, match="positive order"):
        _formulas.derivative_polynomials((1.0, 0.0, -1.0), 0)


@pytest.mark.parametrize("poly", [(2.0,), (1.0, 0.0, -1.0), (0.0, -2.0, 0.0, 2.0), (3.0, 0.0, 0.0)])
def test_horner_evaluates_the_polynomial(poly):
    for y in (-0.7, 0.0, 1.9):
        got = _formulas.horner(poly, y, constant=lambda c, like: c)
        assert math.isclose(got, sum(c * y ** i for i, c in enumerate(poly)), abs_tol=1e-15)


@pytest.mark.parametrize("n", range(1, 10))
def test_product_tree_is_the_product(n):
    values = [1.5 + 0.25 * i for i in range(n)]
    calls = []

    def mul(a, b):
        calls.append(len(a))
        return [p * q for p, q in zip(a, b)]

    out = _formulas.product_tree(values, n, pad=lambda v: v + [1.0],
                                 halves=lambda v, h, m: (v[:h], v[h:m]), mul=mul)
    assert len(out) == 1 and math.isclose(out[0], math.prod(values))
    assert len(calls) == math.ceil(math.log2(n))  # log depth: one mul per level


def test_multilinear_rule_is_the_product_of_the_others():
    x = [2.0, 3.0, 5.0, 7.0]
    seeds = {0: 1, 1: 3}  # group 0 moves entry 1, group 1 moves entry 3

    def product_with_ones(positions):
        return math.prod(1.0 if i in positions else v for i, v in enumerate(x))

    rule = _formulas.multilinear_rule(seeds, product_with_ones)
    assert rule((1, 0)) == 2.0 * 5.0 * 7.0     # d/dx_1
    assert rule((1, 1)) == 2.0 * 5.0           # d^2/dx_1 dx_3
    assert rule((2, 0)) is None                # an entry twice: zero
