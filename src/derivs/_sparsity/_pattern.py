"""The sparsity pattern of a Jacobian or Hessian: which entries may be nonzero."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class Pattern:
    """The global sparsity pattern of a derivative: an entry outside it is zero for
    every value of the inputs.

    Rows index the flattened (row-major) output, columns the flattened input, so
    a Jacobian of ``f: (3, 4) -> (5,)`` has ``shape == (5, 12)``; a Hessian is
    square and ``symmetric``. ``rows``/``cols`` list the entries in row-major order.

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> p = derivs.sparsity(lambda x: x[1:] * x[:-1], jnp.ones(4))
      >>> p
      Pattern(shape=(3, 4), nnz=6, density=0.5)
      >>> p.todense().astype(int)
      array([[1, 1, 0, 0],
             [0, 1, 1, 0],
             [0, 0, 1, 1]])
    """

    def __init__(self, matrix: sp.csr_array | None, shape: tuple[int, int],
                 out_shape: tuple[int, ...], in_shape: tuple[int, ...],
                 symmetric: bool = False):
        if matrix is None:
            matrix = sp.csr_array(shape, dtype=bool)
        matrix = sp.csr_array(matrix, dtype=bool)
        matrix.sum_duplicates()
        matrix.sort_indices()
        self.shape = tuple(int(s) for s in shape)
        self.out_shape = tuple(out_shape)
        self.in_shape = tuple(in_shape)
        self.symmetric = symmetric
        self.indptr = matrix.indptr.astype(np.int64)
        self.cols = matrix.indices.astype(np.int64)
        self.rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))

    @property
    def nnz(self) -> int:
        return int(self.cols.size)

    @property
    def density(self) -> float:
        total = self.shape[0] * self.shape[1]
        return self.nnz / total if total else 0.0

    def to_scipy(self) -> sp.csr_array:
        """The pattern as a boolean ``scipy.sparse.csr_array``."""
        return sp.csr_array((np.ones(self.nnz, bool), self.cols, self.indptr), shape=self.shape)

    def todense(self) -> np.ndarray:
        """The pattern as a dense boolean NumPy matrix (small sizes only)."""
        return self.to_scipy().toarray()

    def __eq__(self, other) -> bool:
        return (isinstance(other, Pattern) and self.shape == other.shape
                and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.cols, other.cols))

    __hash__ = None

    def __repr__(self) -> str:
        return f"Pattern(shape={self.shape}, nnz={self.nnz}, density={self.density:.3g})"


def given(api: str, pattern, shape: tuple[int, int], out_shape: tuple, in_shape: tuple,
          symmetric: bool = False) -> Pattern:
    """A pattern the user passed (``pattern=``), checked against the derivative at
    these arguments: a :class:`Pattern` made for the same output and input shapes;
    a SciPy sparse matrix or array of shape ``(m, n)``, whose *stored* entries are
    the pattern (explicit zeros included: a derivative's own value at a point
    stores the entries that happen to vanish there); or a boolean (or 0/1) array of
    shape ``(m, n)`` or ``out_shape + in_shape`` exactly (never another shape of
    the same size: a transposed array would put entries in the wrong places). A
    Hessian's is symmetrized (an entry on one side counts on both)."""
    m, n = shape
    full = tuple(out_shape) + tuple(in_shape)
    if isinstance(pattern, Pattern):
        if (pattern.out_shape, pattern.in_shape) != (tuple(out_shape), tuple(in_shape)):
            raise ValueError(
                f"{api}: pattern= is a Pattern for output shape {pattern.out_shape} and input "
                f"shape {pattern.in_shape}, but these arguments give {tuple(out_shape)} and "
                f"{tuple(in_shape)}. Pass the pattern of this signature.")
        matrix = pattern.to_scipy()
    elif sp.issparse(pattern):
        stored = sp.csr_array(pattern)
        stored.sum_duplicates()
        matrix = sp.csr_array((np.ones(stored.indices.size, bool), stored.indices,
                               stored.indptr), shape=stored.shape)
    else:
        try:
            dense = np.asarray(pattern)
        except Exception:  # noqa: BLE001 - reported below with the accepted kinds
            dense = None
        if dense is None or dense.dtype == object or tuple(dense.shape) not in ((m, n), full) \
                or not (dense.dtype == bool or np.issubdtype(dense.dtype, np.number)):
            raise TypeError(
                f"{api}: pattern= must be a derivs.Pattern, a scipy.sparse matrix, or a "
                f"boolean array of shape {(m, n)}"
                + (f" or {full}" if full != (m, n) else "")
                + f", got {type(pattern).__name__}"
                + (f" of shape {dense.shape}" if dense is not None and dense.ndim else "")
                + ".")
        matrix = sp.csr_array(dense.reshape(m, n) != 0)
    if tuple(matrix.shape) != (m, n):
        raise ValueError(f"{api}: pattern= has shape {tuple(matrix.shape)}, but the derivative "
                         f"at these arguments is {m} x {n} (flattened output x flattened "
                         "input).")
    if symmetric:
        matrix = sp.csr_array(matrix + matrix.T)
    return Pattern(matrix, (m, n), out_shape, in_shape, symmetric=symmetric)
