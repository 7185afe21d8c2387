"""The stacked layout of a collapsed operator: which coefficients a pass carries,
in which rows, and the index tables of its rules (framework-free).

A pass seeds ``G`` groups (group ``g`` moves the input along a seed vector
``s_g``) and computes ``L = sum_alpha c_alpha d^alpha f`` for multi-indices
``alpha`` over the groups (sorted tuples of group ids: ``(0, 0, 3)`` is
``d^3 / dt_0^2 dt_3``). Every intermediate ``v`` carries its value, the
coefficients ``v[kappa]`` (derivative-normalized, as in ``core._jets``) for every
``kappa`` in the *rows*: the proper sub-multi-indices of the terms, ordered by
level (order) and stacked on one axis, and one collapsed top coefficient ``L v``.
A Laplacian in ``D`` coordinates has ``D`` rows (the units), a Bi-Laplacian
``D + D (D + 1) / 2 + D^2`` (levels 1, 2, 3), against ``3 D^2`` for ``D^2``
univariate directions.

NOTE [stacked rules]: by the multivariate Faa di Bruno formula, for any smooth op
``phi`` of the value ``a`` (several inputs: a tuple)

    phi(a)[kappa] = sum over set partitions {B_1..B_m} of kappa's positions of
                    D^m phi(a)[a[B_1], ..., a[B_m]],

so every rule is: the ``m = 1`` term, ``D phi(a)[a[kappa]]``, applied to the whole
stack at once (one op for a linear ``phi``), plus, for ``m >= 2``, gathered
products over the entries of this module's tables (``D^m phi`` is ``phi^(m)``
times the product for an elementwise op, ``u_a v_b + v_a u_b`` for a bilinear one,
nested JVPs for any other op). Partitions with the same blocks are merged into
one entry with a multiplicity. At the top, ``L phi(a) = D phi(a)[L a] + sum_alpha
c_alpha (the m >= 2 terms of alpha)``: the top-order coefficients are summed
before they are propagated (collapsed Taylor mode), as in ``core._jets.Collapsed``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import numpy as np

Multi = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    """Entries of ``m`` blocks whose blocks have the levels ``levels`` (and, in a
    rows table, whose target has level ``target_level``): ``blocks[t]`` are the
    rows of entry ``t``'s blocks, ``target[t]`` the row it adds to, counted from
    the target level's first row (rows tables; None for top tables), ``weight[t]``
    its multiplicity (times ``c_alpha`` in top tables). Splitting tables by levels
    makes the columns of a univariate layout contiguous ranges: slices, not
    gathers."""

    m: int
    levels: tuple[int, ...]
    blocks: np.ndarray  # (T, m) int64
    target_level: int | None
    target: np.ndarray | None  # (T,) int64
    weight: np.ndarray  # (T,) float64

    def limited(self, rows: int) -> "Table | None":
        """The entries whose blocks lie in the first ``rows`` rows (a stack of
        lower depth has zeros past them); None if none do."""
        keep = np.all(self.blocks < rows, axis=1)
        if keep.all():
            return self
        if not keep.any():
            return None
        return dataclasses.replace(self, blocks=self.blocks[keep],
                                   target=None if self.target is None else self.target[keep],
                                   weight=self.weight[keep])


class Layout:
    """Rows and rule tables for the terms ``[(c, alpha), ...]`` over ``groups``."""

    def __init__(self, groups: int, terms: Sequence[tuple[float, Multi]],
                 read: Sequence[Multi] = ()):
        """``read``: multi-indices carried as rows (with their lower sets) to be read
        off the outputs themselves, not summed (e.g. a Hessian diagonal)."""
        self.groups = groups
        merged: dict[Multi, float] = {}
        for c, alpha in terms:
            alpha = tuple(sorted(alpha))
            if not alpha:
                raise ValueError("a collapsed layout has no order-0 term (add f's value "
                                 "outside the pass)")
            merged[alpha] = merged.get(alpha, 0.0) + float(c)
        self.terms = tuple((c, a) for a, c in merged.items() if c != 0.0)
        below: set[Multi] = set()
        for _, alpha in self.terms:
            below.update(_proper_submultisets(alpha))
        below.update((g,) for _, a in self.terms for g in a)  # every seeded group
        self.read = tuple(tuple(sorted(k)) for k in read)
        for k in self.read:
            below.update(_proper_submultisets(k) | {k})
        self.rows: tuple[Multi, ...] = tuple(sorted(below, key=lambda k: (len(k), k)))
        self.index = {k: i for i, k in enumerate(self.rows)}
        self.order = max([len(a) for _, a in self.terms] + [len(k) for k in self.read] + [1])
        levels = max((len(k) for k in self.rows), default=0)
        # rows[:level_end[d]] are the rows of levels 1 .. d + 1
        self.level_end = tuple(sum(1 for k in self.rows if len(k) <= d + 1)
                               for d in range(levels))
        self.seed_groups = tuple(k[0] for k in self.rows if len(k) == 1)
        self.read_rows = tuple(self.index[k] for k in self.read)
        self.first_order = tuple((c, a[0]) for c, a in self.terms if len(a) == 1)

    @property
    def size(self) -> int:
        return len(self.rows)

    def level_start(self, level: int) -> int:
        return 0 if level == 1 else self.level_end[level - 2]

    @functools.cached_property
    def row_tables(self) -> tuple[Table, ...]:
        """The partition entries with ``m >= 2`` blocks of every row of level >= 2."""
        groups: dict[tuple, list] = {}
        for r, kappa in enumerate(self.rows):
            for blocks, mult in _partitions(kappa):
                if len(blocks) >= 2:
                    key = (len(blocks), tuple(len(b) for b in blocks), len(kappa))
                    local = r - self.level_start(len(kappa))
                    groups.setdefault(key, []).append(
                        ([self.index[b] for b in blocks], local, float(mult)))
        return tuple(Table(m, levels, np.array([e[0] for e in es], np.int64), level,
                           np.array([e[1] for e in es], np.int64),
                           np.array([e[2] for e in es], np.float64))
                     for (m, levels, level), es in sorted(groups.items()))

    @functools.cached_property
    def top_tables(self) -> tuple[Table, ...]:
        """The partition entries with ``m >= 2`` blocks of the terms, weighted by
        ``c`` and merged over terms."""
        merged: dict[tuple[int, ...], float] = {}
        for c, alpha in self.terms:
            for blocks, mult in _partitions(alpha):
                if len(blocks) >= 2:
                    key = tuple(self.index[b] for b in blocks)
                    merged[key] = merged.get(key, 0.0) + c * mult
        groups: dict[tuple, list] = {}
        for key, w in merged.items():
            if w != 0.0:
                levels = tuple(len(self.rows[i]) for i in key)
                groups.setdefault((len(key), levels), []).append((key, w))
        return tuple(Table(m, levels, np.array([k for k, _ in es], np.int64), None, None,
                           np.array([w for _, w in es], np.float64))
                     for (m, levels), es in sorted(groups.items()))


def _proper_submultisets(alpha: Multi) -> set[Multi]:
    out: set[Multi] = set()
    for r in range(1, len(alpha)):
        out.update(itertools.combinations(alpha, r))  # alpha is sorted: sorted tuples
    return out


@functools.lru_cache(maxsize=4096)
def _partitions(kappa: Multi) -> tuple[tuple[tuple[Multi, ...], int], ...]:
    """The set partitions of ``kappa``'s positions as ``(blocks, count)``: blocks
    as a sorted tuple of sorted multi-indices, ``count`` the partitions giving
    them."""
    counts: dict[tuple[Multi, ...], int] = {}
    for part in _set_partitions(list(range(len(kappa)))):
        blocks = tuple(sorted(tuple(sorted(kappa[i] for i in b)) for b in part))
        counts[blocks] = counts.get(blocks, 0) + 1
    return tuple(sorted(counts.items(), key=lambda e: (len(e[0]), e[0])))


def _set_partitions(items: list):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part
