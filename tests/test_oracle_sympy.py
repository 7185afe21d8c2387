"""derivs against sympy's exact derivatives of randomly generated expressions.

240 generated cases per backend and strategy (orders 0-4, mixed and repeated indices, several
requests per case), float64, error <= 1e-10 relative to max(1, |exact|).
"""

from __future__ import annotations

import numpy as np
import pytest

import derivs

from ._expressions import exact_partial, make_cases, to_array_fn
from ._frameworks import array, math_ns, to_numpy

CASES = make_cases(240, seed=20261122)
# Every backend and strategy: the jet engines (jaxpr; ATen graph) and nested forward mode.
ROUTES = [("jax", "traced-jet"), ("jax", "nested-forward"), ("torch", "traced-jet"),
          ("torch", "nested-forward")]
TWO_ARG_CASES = [c for c in make_cases(120, seed=7) if c[1] >= 2][:40]


def _check(got, tree, n, point, mi):
    exact = exact_partial(tree, n, point, mi)
    got = float(to_numpy(got))
    assert abs(got - exact) <= 1e-10 * max(1.0, abs(exact)), (mi, got, exact, tree)


@pytest.mark.parametrize("fw,strategy", ROUTES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_partials_match_sympy(fw, strategy, case):
    tree, n, point, requests = CASES[case]
    body = to_array_fn(tree, math_ns(fw))
    f = lambda x: body(lambda i: x[i])
    x = array(fw, point)
    out = derivs.partials(f, requests, strategy=strategy)(x)
    assert list(out) == requests
    for mi in requests:
        _check(out[mi], tree, n, point, mi)
    # the single-request transform reads the same derivative on its own
    top = requests[0]
    if top:
        _check(derivs.partial(f, top, strategy=strategy)(x), tree, n, point, top)


@pytest.mark.parametrize("fw,strategy", ROUTES)
@pytest.mark.parametrize("case", range(len(TWO_ARG_CASES)))
def test_two_argument_pairs_match_sympy(fw, strategy, case):
    """Variables x0.. are split over two arguments; indices are (argnum, flat) pairs."""
    tree, n, point, requests = TWO_ARG_CASES[case]
    body = to_array_fn(tree, math_ns(fw))
    split = n // 2
    f = lambda a, b: body(lambda i: a[i] if i < split else b[i - split])
    as_pair = lambda i: (0, i) if i < split else (1, i - split)
    specs = [tuple(as_pair(i) for i in mi) for mi in requests]
    value, out = derivs.value_and_partials(f, specs, argnums=(0, 1), strategy=strategy)(
        array(fw, point[:split]), array(fw, point[split:]))
    _check(value, tree, n, point, ())
    for spec, mi in zip(specs, requests):
        _check(out[spec], tree, n, point, mi)


def test_case_mix_covers_orders_and_repeats():
    """The generated set really exercises what it claims to."""
    requests = [mi for c in CASES for mi in c[3]]
    orders = {len(mi) for mi in requests}
    assert orders == {0, 1, 2, 3, 4}
    assert any(len(set(mi)) < len(mi) for mi in requests)  # repeated
    assert any(len(set(mi)) > 1 for mi in requests)  # mixed
    assert len(CASES) >= 200 and len(TWO_ARG_CASES) >= 30
    assert np.mean([len(c[3]) > 1 for c in CASES]) > 0.3  # several requests per case
