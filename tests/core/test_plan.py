"""The planner: sharing between requests, lookups, and the cost model's choices."""

from __future__ import annotations

import itertools
from collections import Counter

from derivs.core._plan import LEVEL_FACTOR, make_plan


def c(*flats):  # canonical multi-index over argument slot 0
    return tuple(sorted((0, i) for i in flats))


def _read(plan, r):
    """The multiset of directions that the plan reads request r from."""
    p, mask = plan.lookup[r]
    dirs = plan.passes[p].directions
    return Counter(d for level, d in enumerate(dirs) if mask >> level & 1)


def test_chain_of_requests_shares_one_pass():
    reqs = [c(), c(0), c(0, 2), c(0, 2, 4)]
    plan = make_plan(reqs)
    assert len(plan.passes) == 1 and plan.passes[0].levels == 3
    assert plan.estimated_cost() == LEVEL_FACTOR**3
    for r, mi in enumerate(reqs):
        assert _read(plan, r) == Counter(mi)


def test_disjoint_high_orders_get_separate_passes():
    plan = make_plan([c(0, 1, 2), c(3, 4, 5)])
    # merging would cost 3^6 = 729 against 27 + 27
    assert len(plan.passes) == 2


def test_repeated_indices_use_repeated_levels():
    plan = make_plan([c(0, 0, 1), c(0, 0), c(1)])
    assert len(plan.passes) == 1
    assert Counter(plan.passes[0].directions) == Counter(c(0, 0, 1))
    for r, mi in enumerate(plan.requests):
        assert _read(plan, r) == Counter(mi)


def test_every_request_is_read_off_correctly_on_random_sets():
    """Exhaustive over small request sets: every lookup names exactly the request's
    multiset, and no plan costs more than one pass per request."""
    pool = [c(*m) for k in range(4) for m in itertools.combinations_with_replacement(range(3), k)]
    for size in (1, 2, 3):
        for reqs in itertools.combinations(pool, size):
            plan = make_plan(list(reqs))
            for r, mi in enumerate(reqs):
                assert _read(plan, r) == Counter(mi)
            assert plan.estimated_cost() <= sum(LEVEL_FACTOR ** len(mi) for mi in reqs)


def test_value_only():
    plan = make_plan([c()])
    assert len(plan.passes) == 1 and plan.passes[0].levels == 0 and plan.lookup == ((0, 0),)
