"""Sequential greedy coloring kernels, compiled with Numba when it is installed.

Greedy coloring is inherently sequential (each vertex takes the smallest color
its colored neighbors leave free), so it is a loop over vertices. Numba compiles
these loops (cached on disk after the first use); without Numba the same
functions run as plain Python, correct but about 100x slower at n = 1e5.
"""

from __future__ import annotations

import heapq

import numpy as np

import importlib.util

# An optional accelerator, never required, and imported only when a coloring first
# runs (``import numba`` costs about 0.2 s): the kernels below are plain functions
# named ``<name>_py``; the first access to ``<name>`` compiles them all
# (``__getattr__``), so kernels calling kernels resolve to compiled ones.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_KERNELS = ("_smallest_free", "greedy", "star", "smallest_last", "dsatur")
_smallest_free = None  # bound by _bind() before any kernel runs (kernels call it)


def _bind() -> None:
    jit = (lambda fn: fn)
    if HAVE_NUMBA:
        import numba

        jit = numba.njit(cache=True, nogil=True)
    for name in _KERNELS:
        globals()[name] = jit(globals()[name + "_py"])


def __getattr__(name: str):
    if name in _KERNELS:
        _bind()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _smallest_free_py(indptr, indices, colors, mark, v):
    """The smallest color no colored neighbor of ``v`` has (``mark`` is scratch:
    ``mark[c] == v`` means color ``c`` is taken near ``v``)."""
    for p in range(indptr[v], indptr[v + 1]):
        c = colors[indices[p]]
        if c >= 0:
            mark[c] = v
    c = 0
    while mark[c] == v:
        c += 1
    return c


def greedy_py(indptr, indices, order):
    """Distance-1 greedy coloring of the graph with adjacency ``(indptr, indices)``
    visiting vertices in ``order``. Returns colors 0, 1, ..."""
    n = indptr.size - 1
    colors = np.full(n, -1, np.int64)
    mark = np.full(n + 1, -1, np.int64)
    for v in order:
        colors[v] = _smallest_free(indptr, indices, colors, mark, v)
    return colors


def star_py(indptr, indices, order):
    """Greedy star coloring (Gebremedhin, Manne & Pothen 2005, Algorithm 4.1):
    a distance-1 coloring in which every path on four vertices uses at least
    three colors, which lets a symmetric matrix be recovered from ``H @ seeds``."""
    n = indptr.size - 1
    colors = np.full(n, -1, np.int64)
    mark = np.full(n + 1, -1, np.int64)
    for v in order:
        for p in range(indptr[v], indptr[v + 1]):
            w = indices[p]
            if colors[w] >= 0:
                mark[colors[w]] = v
        for p in range(indptr[v], indptr[v + 1]):
            w = indices[p]
            for q in range(indptr[w], indptr[w + 1]):
                x = indices[q]
                if x == v or colors[x] < 0:
                    continue
                if colors[w] < 0:
                    mark[colors[x]] = v  # v and x would share the uncolored w
                else:
                    for r in range(indptr[x], indptr[x + 1]):
                        y = indices[r]
                        if y != w and colors[y] == colors[w]:
                            mark[colors[x]] = v  # v-w-x-y would be two-colored
                            break
        c = 0
        while mark[c] == v:
            c += 1
        colors[v] = c
    return colors


def smallest_last_py(indptr, indices):
    """Smallest-last ordering (Matula & Beck): repeatedly remove a vertex of
    minimum remaining degree; color in the reverse order of removal."""
    n = indptr.size - 1
    degree = np.empty(n, np.int64)
    for v in range(n):
        degree[v] = indptr[v + 1] - indptr[v]
    max_deg = 0
    for v in range(n):
        if degree[v] > max_deg:
            max_deg = degree[v]
    # Bucket lists as doubly linked lists over vertices.
    head = np.full(max_deg + 1, -1, np.int64)
    nxt = np.full(n, -1, np.int64)
    prv = np.full(n, -1, np.int64)
    for v in range(n):
        d = degree[v]
        nxt[v] = head[d]
        if head[d] >= 0:
            prv[head[d]] = v
        head[d] = v
    removed = np.zeros(n, np.bool_)
    order = np.empty(n, np.int64)
    low = 0
    for k in range(n - 1, -1, -1):
        while head[low] < 0:
            low += 1
        v = head[low]
        head[low] = nxt[v]
        if nxt[v] >= 0:
            prv[nxt[v]] = -1
        removed[v] = True
        order[k] = v
        for p in range(indptr[v], indptr[v + 1]):
            w = indices[p]
            if removed[w]:
                continue
            d = degree[w]
            # unlink w from bucket d, relink in d - 1
            if prv[w] >= 0:
                nxt[prv[w]] = nxt[w]
            else:
                head[d] = nxt[w]
            if nxt[w] >= 0:
                prv[nxt[w]] = prv[w]
            d -= 1
            degree[w] = d
            prv[w] = -1
            nxt[w] = head[d]
            if head[d] >= 0:
                prv[head[d]] = w
            head[d] = w
            if d < low:
                low = d
    return order


def dsatur_py(indptr, indices):
    """DSATUR (Brélaz): color next the vertex whose neighbors already use the most
    distinct colors, ties to the larger degree. Lazy max-heap on (saturation,
    degree)."""
    n = indptr.size - 1
    colors = np.full(n, -1, np.int64)
    sat = np.zeros(n, np.int64)
    mark = np.full(n + 1, -1, np.int64)
    heap = [(0, 0, 0)]
    heap.pop()
    for v in range(n):
        heapq.heappush(heap, (0, -(indptr[v + 1] - indptr[v]), v))
    done = 0
    while done < n:
        neg_sat, neg_deg, v = heapq.heappop(heap)
        if colors[v] >= 0 or -neg_sat != sat[v]:
            continue
        c = _smallest_free(indptr, indices, colors, mark, v)
        colors[v] = c
        done += 1
        for p in range(indptr[v], indptr[v + 1]):
            w = indices[p]
            if colors[w] >= 0:
                continue
            new = True  # is c new among w's colored neighbors?
            for q in range(indptr[w], indptr[w + 1]):
                x = indices[q]
                if x != v and colors[x] == c:
                    new = False
                    break
            if new:
                sat[w] += 1
                heapq.heappush(heap, (-sat[w], -(indptr[w + 1] - indptr[w]), w))
    return colors
