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
``D + D (D + 1) / 2 + D`` (levels 1, 2, 3; the third level merged: NOTE [merged
rows]), against ``3 D^2`` for ``D^2`` univariate directions.

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
        self.order = max([len(a) for _, a in self.terms] + [len(k) for k in self.read] + [1])
        # members[r]: the multi-indices row r sums (one, unless merged: NOTE [merged rows])
        self._top_entries = _top_entries(self.terms)
        self.members: tuple[tuple[Multi, ...], ...] = _merge_rows(
            sorted(below, key=lambda k: (len(k), k)), self._top_entries, self.order,
            merge=not self.read)
        self.rows: tuple[Multi, ...] = tuple(ks[0] for ks in self.members)
        self.index = {k: i for i, ks in enumerate(self.members) for k in ks}
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

    @functools.cached_property
    def contracted(self) -> "Contracted | None":
        """The Bi-Laplacian's index maps when the terms are ``c sum_ij d_i^2 d_j^2``
        over every group (NOTE [contracted Bi-Laplacian]), else None."""
        G = self.groups
        if self.read or G < 1 or self.order != 4 or len(self.terms) != G * (G + 1) // 2:
            return None  # cheap checks first: the set below has G^2 entries
        want = {tuple(sorted((i, i, j, j))) for i in range(G) for j in range(G)}
        coef = dict((a, c) for c, a in self.terms)
        if self.read or set(coef) != want or G < 1:
            return None
        c = coef[(0, 0, 0, 0)]
        if any(coef[a] != (c if a[0] == a[3] else 2 * c) for a in want):
            return None
        second = self.level_start(2)
        full = np.array([self.index[tuple(sorted((i, j)))] - second
                         for i in range(G) for j in range(G)], np.int64)
        pairs = np.array([k[0] * G + k[1] for k in self.rows if len(k) == 2], np.int64)
        third = np.array([self.index[(j, j, j)] - self.level_start(3) for j in range(G)],
                         np.int64)
        if self.size != 2 * G + G * (G + 1) // 2 or sorted(third) != list(range(G)):
            return None  # the rows are not merged as NOTE [merged rows] says
        return Contracted(c, G, full, pairs, third)

    def level_start(self, level: int) -> int:
        return 0 if level == 1 else self.level_end[level - 2]

    @functools.cached_property
    def row_tables(self) -> tuple[Table, ...]:
        """The partition entries with ``m >= 2`` blocks of every row of level >= 2."""
        groups: dict[tuple, list] = {}
        for r, kappas in enumerate(self.members):
            for kappa in kappas:  # a merged row sums its members' entries (index_add)
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
        for blocks, w in self._top_entries.items():
            # an entry reading a merged row stands for one entry per member, all
            # of the same weight (NOTE [merged rows]): it is kept once, not summed
            key = tuple(sorted((self.index[b] for b in blocks),
                               key=lambda i: (len(self.rows[i]), i)))
            merged[key] = w
        groups: dict[tuple, list] = {}
        for key, w in merged.items():
            if w != 0.0:
                levels = tuple(len(self.rows[i]) for i in key)
                groups.setdefault((len(key), levels), []).append((key, w))
        return tuple(Table(m, levels, np.array([k for k, _ in es], np.int64), None, None,
                           np.array([w for _, w in es], np.float64))
                     for (m, levels), es in sorted(groups.items()))


# NOTE [contracted Bi-Laplacian]: with its third level merged (NOTE [merged
# rows]), a Bi-Laplacian stack holds, per intermediate v, the gradient g_i =
# d_i v, the Hessian H_ij (i <= j) and T_j = d_j (Laplacian v), with the top Q =
# Bi-Laplacian v. Its Faa di Bruno tables sum hundreds of gathered products
# (1010 per elementwise op at D = 10) that factor through a few contractions
# (S = |g|^2, L = tr H, P_j = sum_i g_i H_ij): for y = phi(v),
#   H'_ij = phi'' g_i g_j + phi' H_ij
#   T'_j  = phi''' S g_j + phi'' (L g_j + 2 P_j) + phi' T_j
#   Q'    = phi'''' S^2 + phi''' (2 S L + 4 g.P) + phi'' (L^2 + 2 |H|^2 + 4 g.T) + phi' Q
# (Laplacian of the Laplacian of phi(v), by the chain rule), and for y = a b
#   H' = H^a b + a H^b + g^a g^b^T + g^b g^a^T
#   T' = T^a b + a T^b + L^a g^b + L^b g^a + 2 (H^a g^b + H^b g^a)
#   Q' = Q^a b + a Q^b + 2 L^a L^b + 4 (T^a.g^b + T^b.g^a) + 4 <H^a, H^b>.
# Engines evaluate these instead of the tables: about ten full-Hessian passes per
# op instead of a thousand gathered products. The tables stay the reference
# (tests compare both against dense nested derivatives).
@dataclasses.dataclass(frozen=True)
class Contracted:
    """Index maps of a Bi-Laplacian stack: ``c`` scales the operator;
    ``full[i * G + j]`` is the level-2 row (from the level's start) of H_ij,
    ``pairs[r]`` the flat ``i * G + j`` of level-2 row ``r``, ``third[j]`` the
    level-3 row of T_j."""

    c: float
    groups: int
    full: np.ndarray
    pairs: np.ndarray
    third: np.ndarray


def _top_entries(terms) -> dict[tuple[Multi, ...], float]:
    """The ``m >= 2`` partition entries of the terms, by blocks, weighted by ``c``."""
    out: dict[tuple[Multi, ...], float] = {}
    for c, alpha in terms:
        for blocks, mult in _partitions(alpha):
            if len(blocks) >= 2:
                out[blocks] = out.get(blocks, 0.0) + c * mult
    return out


# NOTE [merged rows]: the rows one level below the top are read only by the top
# (a row's m >= 2 entries have blocks of lower levels) and always next to one
# level-1 block. Rows whose top entries are the same, up to the row itself (same
# other blocks, same weights), can be carried as one row holding their sum: the
# linear part of every rule commutes with the sum, the row entries targeting
# them add into it (index_add), and each top entry ``w * row * other`` becomes
# one entry on the sum. For the Bi-Laplacian ``sum_ij d_i^2 d_j^2`` the D^2
# third-level rows ``d_i^2 d_j`` become the D rows ``d_j (Laplacian)``: D + D (D +
# 1) / 2 + D rows instead of D + D (D + 1) / 2 + D^2 (75 against 165 at D = 10),
# the nested Laplacian's rows. Grouping by the exact top entries makes the merge
# exact for any term set; rows that differ in any entry stay apart.
def _merge_rows(rows: list, top_entries: dict, order: int, merge: bool) -> tuple:
    """``rows`` as tuples of members: rows of level ``order - 1 >= 2`` with the
    same top entries (``_top_entries``) merged (NOTE [merged rows])."""
    if not merge or order < 3:
        return tuple((k,) for k in rows)
    level = order - 1
    readers: dict[Multi, list] = {}
    for blocks, w in top_entries.items():
        for i, b in enumerate(blocks):
            if len(b) == level:
                readers.setdefault(b, []).append((blocks[:i] + blocks[i + 1:], w))
    by_signature: dict[tuple, list] = {}
    out: list = []
    for k in rows:
        if len(k) == level and k in readers:
            sig = tuple(sorted(readers[k]))
            if sig not in by_signature:
                by_signature[sig] = []
                out.append(by_signature[sig])
            by_signature[sig].append(k)
        else:
            out.append([k])
    return tuple(tuple(ks) for ks in out)


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
