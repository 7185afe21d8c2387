"""Plans: which passes compute a set of requested partials, and what they cost.

A *nested-forward pass* with directions ``(d_1, ..., d_m)`` pushes ``f`` through
``m`` nested forward-mode (JVP) levels, level ``j`` seeded with the one-hot
tangent of coordinate ``d_j``. Its result is a hyper-dual number with ``2**m``
coefficients: coefficient ``mask`` (a bit set over levels) is the partial of
``f`` with respect to the coordinates of the levels in ``mask``. So one pass of
``(0, 2, 4)`` yields f, df/dx0, ..., d^3 f/dx0 dx2 dx4 at once, and a request is
served by any pass whose directions contain it as a sub-multiset.

NOTE [plan cost model]: a forward-mode level costs about three times the level
below it (a product ``a*b`` becomes ``a*b, a'*b + a*b'``; elementwise
transcendental functions are similar), so a pass of ``m`` levels is modelled as
``LEVEL_FACTOR**m`` evaluations of ``f``. This matches the "2^k - 3^k times f"
range measured for nested JVPs (docs/problems.md). The planner covers the request set
with passes greedily, longest request first, merging a request into an existing
pass only when the merged pass is cheaper than a new one. Work and memory depend
on the requested orders only, never on the input size beyond the cost of f.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ._jets import Collapsed, jet_cost
from ._request import Coord, MultiIndex

LEVEL_FACTOR = 3.0
# NOTE [reverse plans]: a request set of first-order partials (and the value) of a
# scalar output is one gradient: a forward pass that keeps its intermediates and
# one backward pass, modelled as REVERSE_COST evaluations of f whatever the number
# of coordinates, against 1 + k for k first-order coordinates by jets. Higher
# orders stay forward (Taylor mode), where the requested set, not the input size,
# sets the cost.
REVERSE_COST = 3.0
NESTED_FORWARD = "nested-forward"
TRACED_JET = "traced-jet"
REVERSE = "reverse"
STRATEGIES = {
    NESTED_FORWARD: "nested JVPs with one-hot tangents",
    TRACED_JET: "f traced to a graph (ATen / jaxpr) and propagated as Taylor jets of exactly "
                "the requested coefficients",
    REVERSE: "one reverse-mode pass (the gradient of a scalar output) gives every first-order "
             "partial at once",
}


@dataclasses.dataclass(frozen=True)
class Pass:
    """One nested forward-mode evaluation; ``directions[j]`` seeds level ``j``
    (level 0 is innermost)."""

    directions: tuple[Coord, ...]

    @property
    def levels(self) -> int:
        return len(self.directions)

    @property
    def cost(self) -> float:
        """Nested-forward cost in evaluations of f (see the cost model note)."""
        return LEVEL_FACTOR ** self.levels



@dataclasses.dataclass(frozen=True)
class Plan:
    """How a set of requests is computed. ``lookup[i] = (pass_index, mask)`` says
    where request ``i`` (in ``requests`` order) is read off by nested forward mode.

    ``operator``: when not None, the plan computes the single value
    ``sum_i operator[i] * d^requests[i] f`` (a linear differential operator); jet
    strategies propagate it collapsed (``_jets.Collapsed``).

    NOTE [jet plans]: jets are lazy, so a jet strategy runs every request in one
    pass over all their coordinates and computes only the union of the requests'
    lower sets: shared lower-order coefficients (and the primal) once. Its cost is
    the number of Leibniz terms over that union, per product in f."""

    requests: tuple[MultiIndex, ...]
    passes: tuple[Pass, ...]
    lookup: tuple[tuple[int, int], ...]
    operator: tuple[float, ...] | None = None

    @property
    def first_order(self) -> bool:
        """Only first-order partials (and the value): a reverse plan can serve it."""
        return (self.operator is None and all(len(mi) <= 1 for mi in self.requests)
                and any(len(mi) == 1 for mi in self.requests))

    @functools.cached_property
    def _jet_cost(self) -> float:
        return jet_cost(self.jet_keys())

    @functools.cached_property
    def reverse_is_cheaper(self) -> bool:
        """The cost model prefers one gradient to forward jets (computed once: the
        jet cost is quadratic in the number of coordinates)."""
        return self.first_order and REVERSE_COST < self.estimated_cost(TRACED_JET)

    def passes_for(self, strategy: str) -> tuple[Pass, ...]:
        if strategy == REVERSE:
            return ()
        if strategy != TRACED_JET:
            return self.passes
        need: Counter = Counter()
        for mi in self.requests:
            need |= Counter(mi)
        return (Pass(tuple(sorted(need.elements()))),)

    def groups(self) -> list[Coord]:
        return sorted({c for mi in self.requests for c in mi})

    def jet_keys(self) -> list:
        """The count-vector key of each request over :meth:`groups` (one collapsed
        key for an operator plan)."""
        groups = self.groups()
        keys = [tuple(Counter(mi)[g] for g in groups) for mi in self.requests]
        if self.operator is None:
            return keys
        return [Collapsed(tuple((float(c), k) for c, k in zip(self.operator, keys)))]

    def jet_reads(self) -> list[tuple[list[Coord], list[tuple[int, Any]]]]:
        """For the jet engines: one pass, ``[(groups, [(result index, key), ...])]``."""
        return [(self.groups(), list(enumerate(self.jet_keys())))]

    @property
    def n_results(self) -> int:
        return 1 if self.operator is not None else len(self.requests)

    def estimated_cost(self, strategy: str = NESTED_FORWARD) -> float:
        """Estimated cost in evaluations of ``f`` (see the cost model notes)."""
        if strategy == TRACED_JET:
            return self._jet_cost
        if strategy == REVERSE:
            return REVERSE_COST
        return float(sum(p.cost for p in self.passes))


def make_plan(requests: Sequence[MultiIndex],
              operator: Sequence[float] | None = None) -> Plan:
    """Covers ``requests`` (canonical multi-indices; ``()`` is the value) with
    nested-forward passes."""
    requests = tuple(requests)
    pass_counts: list[Counter] = []
    # Longest first, so shorter requests usually fall inside an existing pass.
    for mi in sorted(set(requests), key=lambda m: (-len(m), m)):
        need = Counter(mi)
        if any(_contains(pc, need) for pc in pass_counts):
            continue
        best, best_delta = None, LEVEL_FACTOR ** len(mi)  # cost of a new pass
        for i, pc in enumerate(pass_counts):
            merged = pc | need
            delta = LEVEL_FACTOR ** sum(merged.values()) - LEVEL_FACTOR ** sum(pc.values())
            if delta < best_delta:
                best, best_delta = i, delta
        if best is None:
            pass_counts.append(need)
        else:
            pass_counts[best] = Counter(pass_counts[best] | need)
    if not pass_counts:  # only the value was asked for
        pass_counts.append(Counter())
    passes = tuple(Pass(tuple(sorted(pc.elements()))) for pc in pass_counts)
    lookup = tuple(_locate(mi, passes) for mi in requests)
    return Plan(requests, passes, lookup,
                None if operator is None else tuple(float(c) for c in operator))


def _contains(have: Counter, need: Counter) -> bool:
    return all(have[c] >= k for c, k in need.items())


def _locate(mi: MultiIndex, passes: tuple[Pass, ...]) -> tuple[int, int]:
    """The cheapest pass containing ``mi`` and the level mask that reads it off."""
    need = Counter(mi)
    candidates = [i for i, p in enumerate(passes) if _contains(Counter(p.directions), need)]
    i = min(candidates, key=lambda j: passes[j].levels)
    mask, left = 0, dict(need)
    for level, c in enumerate(passes[i].directions):
        if left.get(c, 0) > 0:
            mask |= 1 << level
            left[c] -= 1
    return i, mask


def describe(plan: Plan, strategy: str, *, keys: Sequence[Any], argnums: tuple[int, ...],
             backend: str | None, shapes: Sequence[tuple[int, ...]] | None,
             batch_axis: int | None, notes: Sequence[str] = (),
             batch_size: int | None = None) -> str:
    """The human-readable report printed by ``derivs.explain``."""
    def coord(c: Coord) -> str:
        return f"x{c[1]}" if len(argnums) == 1 else f"arg{argnums[c[0]]}[{c[1]}]"

    lines = [
        f"strategy        : {strategy} ({STRATEGIES[strategy]})",
        f"backend         : {backend or 'chosen at call time from the argument types'}",
    ]
    if shapes is not None:
        label = "sample shapes   : " if batch_axis is not None else "argument shapes : "
        lines.append(label + ", ".join(
            f"arg{a}: {tuple(s)}" for a, s in zip(argnums, shapes)))
    if batch_axis is not None:
        serves = ("one pass serves every sample" if batch_size is None
                  else f"one pass serves {batch_size} samples at a time")
        lines.append(f"batch axis      : {batch_axis} ({serves}; valid when samples are "
                     "independent)")
    passes = plan.passes_for(strategy)
    lines.append(f"passes          : {len(passes)}")
    for i, p in enumerate(passes):
        dirs = ", ".join(coord(c) for c in p.directions) or "(value only)"
        served = [repr(k) for k, (j, _) in zip(keys, plan.lookup)
                  if j == i or strategy == TRACED_JET]
        cost = plan.estimated_cost(strategy) if strategy == TRACED_JET else p.cost
        if plan.operator is not None:
            served = ["the operator " + " + ".join(
                f"{c:g}*d{k!r}" for c, k in zip(plan.operator, keys))]
        lines.append(f"  pass {i}: {p.levels} level(s) [{dirs}] "
                     f"~{cost:g} f-evals; serves {', '.join(served)}")
    if strategy == REVERSE:
        lines.append(f"  one gradient: serves {', '.join(repr(k) for k in keys)}")
    model = ("Leibniz terms summed over the requested coefficients and their lower sets"
             + (", top order collapsed" if plan.operator is not None else "")
             if strategy == TRACED_JET else
             "a forward pass keeping intermediates, then one backward pass"
             if strategy == REVERSE else f"{LEVEL_FACTOR:g}^levels per pass")
    # NOTE [cost labels]: the model counts products (or passes) per product of f. It
    # ranks strategies and plans; it is not a time: XLA and Inductor fuse the
    # coefficient products with f's own, so a measured ratio is far lower (the seed
    # problem d^3 prod / dx0 dx2 dx4: model 27, measured 0.78x f under jax.jit).
    lines.append(f"estimated cost  : <= {plan.estimated_cost(strategy):g} x f, an upper bound in "
                 "evaluations of f before fusion, for ranking plans (model: "
                 f"{model}); measured ratios: python -m benchmarks")
    lines += [f"note            : {n}" for n in notes]
    return "\n".join(lines)
