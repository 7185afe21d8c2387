"""Coloring: which derivative directions can share one pass.

Columns of a Jacobian that never share a row can be summed into one seed and
read back apart (column coloring, forward mode); rows that never share a column
likewise (row coloring, reverse mode). A symmetric Hessian needs less: a star
coloring lets every entry be read either from its row or its column. Greedy
coloring quality depends on the vertex order, so several orders are tried and
the fewest colors kept.

The result of a coloring is everything decompression needs: a seed matrix and,
for each nonzero of the pattern, its flat position in the compressed product.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from . import _kernels
from ._pattern import Pattern

ORDERINGS = ("natural", "largest-first", "smallest-last", "dsatur")
# A conflict graph with more entries than this is not built: such a pattern has a
# dense row (or column) and that mode would need about as many colors as columns.
MAX_GRAPH_NNZ = 50_000_000


@dataclasses.dataclass(frozen=True)
class Coloring:
    """How a sparse derivative is compressed.

    ``mode`` is ``"column"`` (``J @ seeds``, forward mode), ``"row"``
    (``seeds.T @ J``, reverse mode), or ``"star"`` / ``"symmetric-column"`` for a
    Hessian (``H @ seeds``, Hessian-vector products). ``colors[v]`` is the color
    of column (row) ``v``; ``gather[k]`` is where nonzero ``k`` of the pattern
    lies in the flattened ``(n_colors, ...)`` stack of compressed products, one
    row per seed (the layout ``vmap`` over seeds returns). ``tried`` maps each
    ``(mode, ordering)`` tried to its number of colors.
    """

    mode: str
    ordering: str
    colors: np.ndarray
    n_colors: int
    gather: np.ndarray
    tried: dict

    def seeds(self, dtype=np.float64) -> np.ndarray:
        """``(n_colors, n)``: row ``c`` is the sum of the unit vectors of color ``c``."""
        s = np.zeros((self.n_colors, self.colors.size), dtype)
        s[self.colors, np.arange(self.colors.size)] = 1
        return s


def _graph_nnz_bound(p: sp.csr_array) -> int:
    lengths = np.diff(p.indptr).astype(np.int64)
    return int((lengths * lengths).sum())


def _adjacency(g: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    g = sp.csr_array(g, dtype=bool, copy=True)  # setdiag below must not touch the caller's
    g.setdiag(False)
    g.eliminate_zeros()
    g.sort_indices()
    return g.indptr.astype(np.int64), g.indices.astype(np.int64)


def _orders(indptr, indices, orderings):
    n = indptr.size - 1
    degree = np.diff(indptr)
    for name in orderings:
        if name == "natural":
            yield name, np.arange(n, dtype=np.int64)
        elif name == "largest-first":
            yield name, np.argsort(-degree, kind="stable").astype(np.int64)
        elif name == "smallest-last":
            yield name, _kernels.smallest_last(indptr, indices)


def _best_distance1(indptr, indices, orderings, kernel=None,
                    bound: int = 0) -> tuple[str, np.ndarray, dict]:
    """Greedy (or star, with ``kernel``) colorings in every ordering; the fewest
    wins. Stops early once a coloring reaches ``bound``, a known lower bound (no
    ordering can do better)."""
    kernel = kernel or _kernels.greedy
    best, tried = None, {}
    for name, order in _orders(indptr, indices, orderings):
        colors = kernel(indptr, indices, order)
        tried[name] = int(colors.max()) + 1 if colors.size else 0
        if best is None or tried[name] < tried[best[0]]:
            best = (name, colors)
        if tried[name] <= bound:
            return name, colors, tried
    if "dsatur" in orderings and kernel is _kernels.greedy:
        colors = _kernels.dsatur(indptr, indices)
        tried["dsatur"] = int(colors.max()) + 1 if colors.size else 0
        if best is None or tried["dsatur"] < tried[best[0]]:
            best = ("dsatur", colors)
    if best is None:  # no vertices
        return orderings[0], np.zeros(0, np.int64), tried
    return best[0], best[1], tried


def _trivial(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def color_jacobian(pattern: Pattern, mode: str = "auto",
                   orderings: tuple[str, ...] = ORDERINGS) -> Coloring:
    """Column and/or row coloring of a Jacobian pattern; ``mode="auto"`` keeps
    the one with fewer colors (ties go to columns: forward mode is cheaper)."""
    if mode not in ("auto", "column", "row"):
        raise ValueError(f"coloring mode must be 'auto', 'column' or 'row', got {mode!r}.")
    _check_orderings(orderings)
    p = pattern.to_scipy()
    m, n = pattern.shape
    # A symmetric pattern has the same row and column graphs: color once.
    symmetric = m == n and (p != p.T).nnz == 0
    candidates = []
    for kind, size, rows_of in (("column", n, p), ("row", m, p.T.tocsr())):
        if mode not in ("auto", kind) or (mode == "auto" and kind == "row" and symmetric):
            continue
        # ``rows_of``: the pattern whose rows group what must differ (J's rows for
        # columns, J^T's rows for rows). Conflict graph: pairs sharing such a row.
        if _graph_nnz_bound(rows_of) > MAX_GRAPH_NNZ:
            candidates.append((kind, "trivial", _trivial(size), {f"{kind}/trivial": size}))
            continue
        indptr, indices = _adjacency(rows_of.T @ rows_of)
        # The entries of one such row all need distinct colors.
        bound = int(np.diff(rows_of.indptr).max(initial=0))
        name, colors, tried = _best_distance1(indptr, indices, orderings, bound=bound)
        candidates.append((kind, name, colors, {f"{kind}/{k}": v for k, v in tried.items()}))
    tried = {k: v for *_, t in candidates for k, v in t.items()}
    kind, name, colors, _ = min(candidates, key=lambda c: (_n(c[2]), c[0] != "column"))
    k = _n(colors)
    if kind == "column":  # J @ seed c is row c of a (k, m) stack: (i, j) sits at [color[j], i]
        gather = colors[pattern.cols] * m + pattern.rows
    else:  # seed c @ J is row c of a (k, n) stack: (i, j) sits at [color[i], j]
        gather = colors[pattern.rows] * n + pattern.cols
    return Coloring(kind, name, colors, k, gather, tried)


def color_hessian(pattern: Pattern, orderings: tuple[str, ...] = ORDERINGS) -> Coloring:
    """Star coloring of a symmetric pattern, against distance-2 (column)
    coloring; the fewest colors win."""
    _check_orderings(orderings)
    p = pattern.to_scipy()
    n = pattern.shape[0]
    indptr, indices = _adjacency(p)
    star_orders = tuple(o for o in orderings if o != "dsatur")
    candidates = []
    if _graph_nnz_bound(p) <= MAX_GRAPH_NNZ:
        name, colors, tried = _best_distance1(indptr, indices, star_orders or ("natural",),
                                              kernel=_kernels.star)
        gather = _star_gather(pattern, colors)
        if gather is not None:  # always, for a correct star coloring
            candidates.append(("star", name, colors, gather, {f"star/{k}": v
                                                              for k, v in tried.items()}))
        bound = int(np.diff(p.indptr).max(initial=0))
        best_star = min((_n(c[2]) for c in candidates), default=None)
        if best_star is None or best_star > bound:  # else distance-2 cannot do better
            indptr2, indices2 = _adjacency(p @ p)
            name, colors, tried2 = _best_distance1(indptr2, indices2, orderings, bound=bound)
            candidates.append(("symmetric-column", name, colors, None,
                               {f"column/{k}": v for k, v in tried2.items()}))
    else:
        candidates.append(("symmetric-column", "trivial", _trivial(n), None,
                           {"column/trivial": n}))
    tried = {k: v for *_, t in candidates for k, v in t.items()}
    kind, name, colors, gather, _ = min(candidates, key=lambda c: (_n(c[2]), c[0] != "star"))
    k = _n(colors)
    if gather is None:  # H @ seed c is row c of a (k, n) stack
        gather = colors[pattern.cols] * n + pattern.rows
    return Coloring(kind, name, colors, k, gather, tried)


def _star_gather(pattern: Pattern, colors) -> np.ndarray | None:
    """Where each entry of a symmetric matrix is read from ``H @ seeds``.

    ``H @ seed_c`` at ``i`` sums row ``i`` over columns of color ``c``; entry
    ``(i, j)`` is read there when ``j`` is the only one of color ``c`` in row
    ``i``, otherwise at ``(j, color[i])``. A star coloring guarantees one of the
    two for every entry (checked here; None if not)."""
    n = pattern.shape[0]
    k = _n(colors)
    if n == 0:
        return np.zeros(0, np.int64)
    p = pattern.to_scipy().astype(np.int32)
    onehot = sp.csr_array((np.ones(n, np.int32), (np.arange(n), colors)), shape=(n, k))
    counts = (p @ onehot).toarray() if n * k <= 50_000_000 else None
    if counts is None:
        return None
    i, j = pattern.rows, pattern.cols
    direct = counts[i, colors[j]] == 1
    flipped = counts[j, colors[i]] == 1
    if not np.all(direct | flipped):
        return None
    return np.where(direct, colors[j] * n + i, colors[i] * n + j)


def _n(colors: np.ndarray) -> int:
    return int(colors.max()) + 1 if colors.size else 0


def _check_orderings(orderings) -> None:
    bad = [o for o in orderings if o not in ORDERINGS]
    if bad or not orderings:
        raise ValueError(f"unknown vertex ordering(s) {bad}; choose from {ORDERINGS}.")
