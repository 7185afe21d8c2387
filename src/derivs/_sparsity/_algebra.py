"""Index-set algebra shared by the JAX and PyTorch detectors.

The dependency sets of an array value with ``size`` elements on ``n`` input
coordinates are one boolean CSR matrix of shape ``(size, n)``: row ``i`` is the
set of inputs element ``i`` may depend on. ``None`` is the empty set for every
element (constants, integers, values with zero derivative). Every rule is a
sparse 0/1 linear map applied to the stacked sets of its operands, so each
primitive costs one SciPy product (C code) however many elements it has; that is
what makes detection at n = 1e5 take milliseconds instead of a Python loop per
element. Booleans make the product an OR, so sets never overflow or cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

Deps = "sp.csr_array | None"


def identity(n: int) -> sp.csr_array:
    return sp.csr_array((np.ones(n, bool), np.arange(n), np.arange(n + 1)), shape=(n, n))


def empty(size: int, n: int) -> sp.csr_array:
    return sp.csr_array((size, n), dtype=bool)


def stack(deps: Sequence, sizes: Sequence[int], n: int):
    """The sets of several operands one above the other (None if all are empty)."""
    if all(d is None for d in deps):
        return None
    parts = [empty(s, n) if d is None else d for d, s in zip(deps, sizes)]
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


def _apply(rows: np.ndarray, cols: np.ndarray, n_out: int, deps):
    """``M @ deps`` for the 0/1 map with entries ``(rows, cols)``."""
    if deps is None:
        return None
    m = sp.csr_array((np.ones(len(rows), bool), (rows, cols)), shape=(n_out, deps.shape[0]))
    out = m @ deps
    out.sum_duplicates()
    return out if out.nnz else None


def take(deps, src: np.ndarray):
    """Element ``i`` of the result copies source element ``src[i]`` (negative: none)."""
    if deps is None:
        return None
    src = np.asarray(src).reshape(-1).astype(np.int64, copy=False)
    keep = np.nonzero(src >= 0)[0]
    return _apply(keep, src[keep], src.size, deps)


def group(deps, labels: np.ndarray, n_out: int):
    """Element ``labels[i]`` of the result gathers source element ``i`` (union)."""
    if deps is None:
        return None
    labels = np.asarray(labels).reshape(-1).astype(np.int64, copy=False)
    keep = np.nonzero(labels >= 0)[0]
    return _apply(labels[keep], keep, n_out, deps)


def union(deps: Sequence):
    live = [d for d in deps if d is not None]
    if not live:
        return None
    out = live[0]
    for d in live[1:]:
        out = out + d
    return out


def broadcast(deps, in_shape: tuple, out_shape: tuple):
    """NumPy-style broadcast of ``in_shape`` to ``out_shape``."""
    if deps is None or tuple(in_shape) == tuple(out_shape):
        return deps
    ids = np.arange(int(np.prod(in_shape, dtype=np.int64))).reshape(in_shape)
    return take(deps, np.broadcast_to(ids, out_shape))


def elementwise(deps: Sequence, shapes: Sequence[tuple], out_shape: tuple):
    """Union of operands broadcast to ``out_shape``."""
    return union([broadcast(d, s, out_shape) for d, s in zip(deps, shapes)])


def masked(deps, keep: np.ndarray):
    """Rows where ``keep`` is False become empty (a product with a known zero)."""
    if deps is None or keep.all():
        return deps
    rows = np.nonzero(keep.reshape(-1))[0]
    return _apply(rows, rows, keep.size, deps)


def product(deps: Sequence, shapes: Sequence[tuple], known: Sequence, out_shape: tuple):
    """Elementwise product: like :func:`elementwise`, but an element where a known
    factor is zero depends on nothing (``0 * anything`` is 0 for every input)."""
    out = elementwise(deps, shapes, out_shape)
    for v in known:
        if v is not None and np.ndim(v) <= len(out_shape):
            out = masked(out, np.broadcast_to(np.asarray(v) != 0, out_shape))
    return out


def reduce(deps, shape: tuple, axes: Sequence[int], keepdims: bool = False):
    """Union over ``axes``; the result keeps the other axes in order."""
    if deps is None:
        return None
    axes = sorted(a % len(shape) for a in axes) if shape else []
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(shape))
    out_size = int(np.prod(out_shape, dtype=np.int64))
    labels = np.broadcast_to(np.arange(out_size).reshape(out_shape), shape)
    return group(deps, labels, out_size)


def along(deps, shape: tuple, axes: Sequence[int]):
    """Each element depends on every element that shares its other coordinates
    (softmax, sort, fft along ``axes``): a reduction broadcast back."""
    if deps is None:
        return None
    axes = [a % len(shape) for a in axes]
    out_shape = tuple(1 if i in axes else s for i, s in enumerate(shape))
    return broadcast(reduce(deps, shape, axes), out_shape, shape)


def dense(deps: Sequence, out_size: int):
    """Every output element depends on every input element (the conservative rule)."""
    live = [d for d in deps if d is not None]
    if not live:
        return None
    cols = np.unique(np.concatenate([d.indices for d in live]))
    if cols.size == 0:
        return None
    n = live[0].shape[1]
    indptr = np.arange(out_size + 1, dtype=np.int64) * cols.size
    return sp.csr_array((np.ones(out_size * cols.size, bool), np.tile(cols, out_size), indptr),
                        shape=(out_size, n))


def cumulative(deps, shape: tuple, axis: int, reverse: bool = False):
    """Prefix unions along ``axis`` (cumsum, cumprod, cummax)."""
    if deps is None:
        return None
    axis %= len(shape)
    length = shape[axis]
    ids = np.moveaxis(np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape), axis, -1)
    ids = ids.reshape(-1, length)
    j, k = np.tril_indices(length)  # output position j reads input position k <= j
    if reverse:
        j, k = length - 1 - j, length - 1 - k
    rows = ids[:, j].reshape(-1)
    cols = ids[:, k].reshape(-1)
    return _apply(rows, cols, ids.size, deps)


def contract(lhs, rhs, lhs_ids: np.ndarray, rhs_ids: np.ndarray, out_ids: np.ndarray,
             lhs_mask: np.ndarray, rhs_mask: np.ndarray):
    """A batched product ``out[b, m, n] = sum_k lhs[b, m, k] * rhs[b, k, n]``.

    ``*_ids`` give the flat position of each canonical entry in its array
    (shapes ``(B, M, K)``, ``(B, K, N)``, ``(B, M, N)``); ``*_mask`` says which
    entries may be nonzero (all of them for a variable, the nonzeros of a known
    constant). ``out[b, m, n]`` reads ``lhs[b, m, k]`` where ``rhs[b, k, n]`` may be
    nonzero, and symmetrically.
    """
    B, M, K = lhs_ids.shape
    N = rhs_ids.shape[2]
    parts = []
    if lhs is not None and rhs_mask.all() and _distinct(lhs_ids) and _distinct(out_ids):
        # a dense factor (a weight matrix): every out[b, m, :] reads all of lhs[b, m, :],
        # so one union per row serves every column (a map of B M K + B M N entries
        # instead of B M K N: seconds for a 768-wide layer)
        parts.append(_rows_to_all(lhs, lhs_ids, out_ids, (B, M, K), N))
        lhs = None
    if rhs is not None and lhs_mask.all() and _distinct(rhs_ids) and _distinct(out_ids):
        # the same with the dense factor on the left: out[b, :, n] reads all of rhs[b, :, n]
        parts.append(_rows_to_all(rhs, rhs_ids.transpose(0, 2, 1), out_ids.transpose(0, 2, 1),
                                  (B, N, K), M))
        rhs = None
    if lhs is not None:
        b, k, n = np.nonzero(rhs_mask)
        m = np.arange(M)[:, None]
        rows = out_ids[b[None], m, n[None]].reshape(-1)
        cols = lhs_ids[b[None], m, k[None]].reshape(-1)
        parts.append(_apply(rows, cols, out_ids.size, lhs))
    if rhs is not None:
        b, m, k = np.nonzero(lhs_mask)
        n = np.arange(N)[:, None]
        rows = out_ids[b[None], m[None], n].reshape(-1)
        cols = rhs_ids[b[None], k[None], n].reshape(-1)
        parts.append(_apply(rows, cols, out_ids.size, rhs))
    return union(parts)


def _distinct(ids: np.ndarray) -> bool:
    return np.unique(ids).size == ids.size


def _rows_to_all(deps, ids: np.ndarray, out_ids: np.ndarray, shape: tuple, width: int):
    """``out[b, r, c]`` (for every ``c < width``) = the union of ``src[b, r, :]``, with
    ``ids`` (``shape``: ``(B, R, K)``) and ``out_ids`` (``(B, R, width)``) the flat
    positions of the source and result entries."""
    B, R, K = shape
    labels = np.full(deps.shape[0], -1, np.int64)
    labels[ids.reshape(-1)] = np.repeat(np.arange(B * R), K)
    rows = group(deps, labels, B * R)
    src = np.full(out_ids.size, -1, np.int64)
    src[out_ids.reshape(-1)] = np.repeat(np.arange(B * R), width)
    return take(rows, src)


def window_positions(in_len: int, out_len: int, window: int, stride: int, pad_lo: int,
                     in_dilation: int = 1, window_dilation: int = 1) -> np.ndarray:
    """``T[o, w]``: the input position output ``o`` reads at window offset ``w``,
    or -1 where it reads padding or a hole of the input dilation."""
    o = np.arange(out_len)[:, None]
    w = np.arange(window)[None, :]
    pos = o * stride + w * window_dilation - pad_lo  # position in the dilated input
    ok = (pos >= 0) & (pos % in_dilation == 0) & (pos // in_dilation < in_len)
    return np.where(ok, pos // in_dilation, -1)


def windows(spatial_in: Sequence[int], tables: Sequence[np.ndarray]) -> np.ndarray:
    """Combine per-dimension tables into ``T[out_flat, window_flat]`` over all
    spatial dimensions (row-major), -1 where any dimension reads padding."""
    if not tables:
        return np.zeros((1, 1), np.int64)
    flat = np.zeros((1, 1), np.int64)
    valid = np.ones((1, 1), bool)
    for size, t in zip(spatial_in, tables):
        o, w = t.shape
        flat = (flat[:, None, :, None] * size + t[None, :, None, :]).reshape(-1, flat.shape[1] * w)
        valid = (valid[:, None, :, None] & (t >= 0)[None, :, None, :]).reshape(flat.shape)
    return np.where(valid, flat, -1)


def window_sum(deps, in_ids: np.ndarray, out_ids: np.ndarray, table: np.ndarray):
    """Reductions over windows (reduce_window, pooling): ``out[o]`` reads
    ``in[table[o, w]]`` for every valid ``w``. ``in_ids``/``out_ids`` are flat
    positions in window coordinates."""
    if deps is None:
        return None
    o, w = np.nonzero(table >= 0)
    return _apply(out_ids.reshape(-1)[o], in_ids.reshape(-1)[table[o, w]], out_ids.size, deps)


def convolution(lhs, rhs, lhs_ids: np.ndarray, rhs_ids: np.ndarray, out_ids: np.ndarray,
                table: np.ndarray, rhs_mask: np.ndarray, groups: int):
    """A convolution in canonical layout: ``lhs_ids (N, C, S_in)``,
    ``rhs_ids (O, C/groups, W)``, ``out_ids (N, O, S_out)`` (spatial dims flat),
    ``table[s_out, w]`` from :func:`windows`. ``out[n, o, s]`` reads
    ``lhs[n, g*C/G + c, table[s, w]]`` where the kernel entry ``(o, c, w)`` may be
    nonzero, and those kernel entries where the input position is not padding."""
    N, O, S = out_ids.shape
    cg = rhs_ids.shape[1]
    per_group = O // groups
    o, c, w = np.nonzero(rhs_mask)
    s = np.arange(S)[:, None]
    t = table[s, w[None]]  # (S, nnz)
    ok = t >= 0
    chan = (o // per_group) * cg + c  # the input channel each kernel entry reads
    lhs_pairs, rhs_pairs = [], []
    for n in range(N):
        rows = out_ids[n][o[None, :], s][ok]
        if lhs is not None:
            lhs_pairs.append((rows, lhs_ids[n][np.broadcast_to(chan[None], t.shape)[ok], t[ok]]))
        if rhs is not None:
            rhs_pairs.append((rows, np.broadcast_to(rhs_ids[o, c, w][None], t.shape)[ok]))
    out = [_apply(np.concatenate([r for r, _ in pairs]), np.concatenate([q for _, q in pairs]),
                  out_ids.size, deps)
           for pairs, deps in ((lhs_pairs, lhs), (rhs_pairs, rhs)) if pairs]
    return union(out)
