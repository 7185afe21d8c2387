"""Public Jacobians and Hessians: ``jacobian``, ``hessian`` (dense or sparse) and
``sparsity``.

A sparse derivative is prepared once per argument signature (shapes and dtypes):
detection (a graph interpretation with index sets) gives the global pattern,
coloring groups the columns (rows) that can share a pass, and each call then
runs one vmapped pass per color and gathers the values into a native sparse
matrix. The pattern is *global*: valid for every value of the inputs.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import _report, _validation, backends
from .backends._common import leaf_signature
from .core._cache import LRUCache
from ._sparsity import _coloring
from ._sparsity import _pattern
from ._sparsity._errors import SparsityWarning
from ._sparsity._pattern import Pattern

FORMATS = ("native", "coo", "csr", "scipy", "dense")
UNKNOWN = ("warn", "error", "silent")


def _framework(args: tuple, api: str):
    backend = backends.backend_for(args, api)
    return backend.sparsity(), backend


def _check_argnum(argnum: Any, n_args: int | None, api: str) -> int:
    if isinstance(argnum, bool) or not isinstance(argnum, int) or argnum < 0:
        raise TypeError(f"{api}: argnums must be a non-negative int here, got {argnum!r}; for "
                        "several arguments pass a tuple to derivs.jacobian, or concatenate "
                        "them into one array.")
    if n_args is not None and argnum >= n_args:
        raise ValueError(f"{api}: argnums={argnum} selects argument {argnum}, but f was called "
                         f"with {n_args} positional argument(s).")
    return argnum


def _normalize(args: tuple, argnum: int, api: str) -> tuple:
    """``(framework module, backend, args)`` with ``args[argnum]`` an array of its
    framework (a Python number becomes one; integer arrays are refused with the fix)."""
    _check_argnum(argnum, len(args), api)
    fw, backend = _framework(args, api)
    args = list(args)
    args[argnum] = backend.as_input(args[argnum], argnum, api, None)
    _validation.check_not_empty(api, argnum, tuple(args[argnum].shape))
    return fw, backend, tuple(args)


def _signature(args: tuple) -> tuple | None:
    """Shapes, dtypes and devices of array arguments, and the values of plain
    Python ones (a trace bakes those in: ``f(x, k)`` may slice with ``k``)."""
    return leaf_signature(args, _array_meta)  # None: nothing to key on, prepare afresh


def _array_meta(a: Any) -> tuple | None:
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return type(a).__name__, tuple(a.shape), str(a.dtype), str(getattr(a, "device", ""))
    return None


class SparseExplanation(_report.Report):
    """What ``derivs.explain`` reports for a sparse Jacobian or Hessian.

    Attributes: ``strategy`` (``"colored-forward"``, ``"colored-reverse"`` or
    ``"colored-hvp"``), ``colors``, ``estimated_cost`` (passes: one per color),
    ``pattern``, ``coloring`` and ``backend``; ``str()`` is the report.
    """

    def __init__(self, prepared: "Prepared", report: str):
        mode = prepared.coloring.mode
        self.strategy = {"column": "colored-forward", "row": "colored-reverse"}.get(
            mode, "colored-hvp")
        self.colors = prepared.coloring.n_colors
        self.estimated_cost = float(self.colors)
        self.pattern = prepared.pattern
        self.coloring = prepared.coloring
        self.backend = prepared.framework
        self._report = report

    def text(self) -> str:
        return self._report


class Prepared:
    """A sparse derivative prepared for one argument signature: its ``pattern``
    (:class:`Pattern`), ``coloring`` (:class:`derivs.Coloring`) and the
    seconds detection and coloring took. Calling it evaluates the derivative."""

    def __init__(self, owner: "SparseDerivative", fw, pattern: Pattern,
                 coloring: _coloring.Coloring, detect_s: float, color_s: float,
                 conservative: list[str], valid=None):
        self.owner = owner
        # PyTorch: the pattern depends on what f reads (its closed-over tensors'
        # values and Python state); None: it depends on the signature only
        self._valid = valid
        self.framework = fw.name
        self._fw = fw
        self.pattern = pattern
        self.coloring = coloring
        self.detect_seconds = detect_s
        self.coloring_seconds = color_s
        self.conservative_ops = conservative
        self._layout = fw.layout(pattern)
        self._switched = False  # colored for the other mode once f refused this one
        self._evaluate = fw.evaluator(coloring.mode, owner.fun, owner.argnum, owner.has_aux,
                                      coloring, pattern.shape)

    def fresh(self) -> bool:
        """Whether the pattern still holds for what f reads now."""
        return self._valid is None or self._valid()

    @property
    def n_colors(self) -> int:
        return self.coloring.n_colors

    def __call__(self, *args):
        try:
            return self._call(args)
        except Exception as e:  # noqa: BLE001 - re-raised unless the other mode works
            if not self._switch_mode():
                raise
            try:
                return self._call(args)
            except Exception:  # noqa: BLE001
                raise e from None

    def _switch_mode(self) -> bool:
        """A Jacobian colored for one mode whose passes fail (f's own rules forbid that
        mode: a custom_vjp function has no forward mode, a custom_linear_solve without
        transpose_solve no reverse mode) is colored for the other, once; explain then
        shows the coloring that runs."""
        mode = self.coloring.mode
        if mode not in ("column", "row") or self._switched:
            return False
        self._switched = True
        other = "row" if mode == "column" else "column"
        self.coloring = _coloring.color_jacobian(self.pattern, mode=other)
        self._evaluate = self._fw.evaluator(other, self.owner.fun, self.owner.argnum,
                                            self.owner.has_aux, self.coloring,
                                            self.pattern.shape)
        return True

    def _call(self, args):
        fw = self._fw
        if (self.owner.format in ("native", "coo") and fw.sharded(args[self.owner.argnum])
                and fw.read_layout_pays(self._evaluate, self.pattern.nnz)):
            # a sharded input: the output stays sharded (NOTE [read-position layout])
            data, aux = self._evaluate(args, "by_read")
            out = fw.assemble_by_read(data, self._evaluate, self.pattern, self._layout)
        else:
            data, aux = self._evaluate(args)
            out = fw.assemble(data, self._layout, self.pattern, self.owner.format)
        return (out, aux) if self.owner.has_aux else out

    def check(self, *args, n_probes: int = 3, seed: int = 0) -> float:
        """Verify the pattern numerically: ``J @ v`` from the sparse result against
        exact JVPs (HVPs) for random ``v``. Returns the largest relative error;
        raises ``ValueError`` when it is large (an entry outside the pattern)."""
        o = self.owner
        rng = np.random.default_rng(seed)
        # at the point, and at a random point nearby: an entry that happens to vanish
        # at the first point (a Newton start at 0) shows at the second; a point where
        # f is not finite (outside its domain) is skipped
        errs = [self._check_at(args, rng, n_probes)]
        x = self._fw.to_numpy(args[o.argnum])
        near = x + 0.1 * (1 + np.abs(x)) * rng.standard_normal(x.shape)
        moved = list(args)
        moved[o.argnum] = self._fw.like(args[o.argnum], near)
        errs.append(self._check_at(tuple(moved), rng, n_probes))
        finite = [e for e in errs if np.isfinite(e)]
        err = max(finite) if finite else float("nan")
        low = ("float32", "float16", "bfloat16")
        tol = 1e-3 if str(args[o.argnum].dtype).endswith(low) else 1e-8
        if err > tol:
            why = ("the pattern passed as pattern= misses entries of f's derivative. Pass a "
                   "pattern that covers them, or drop pattern= to have it detected."
                   if o.given is not None else "the detected pattern misses entries. Please "
                   "report this with f; meanwhile use sparse=False.")
            raise ValueError(
                f"{o.api}: check=True found the sparse result disagreeing with exact "
                f"{'JVPs' if o.kind == 'jacobian' else 'HVPs'} (relative error {err:.2e}): "
                + why)
        return err

    def _check_at(self, args, rng, n_probes: int) -> float:
        """The largest relative error of ``J @ v`` against exact JVPs (HVPs) at ``args``."""
        o, fw = self.owner, self._fw
        vs = rng.standard_normal((n_probes, self.pattern.shape[1]))
        mode = "column" if o.kind == "jacobian" else "hessian"
        exact, _ = fw.compressed(mode, o.fun, args, o.argnum, o.has_aux, vs)
        exact = np.asarray(fw.to_numpy(exact), np.float64)
        data, _ = self._evaluate(args)
        data = np.asarray(fw.to_numpy(data), np.float64)
        mat = sp.csr_array((data, self.pattern.cols, self.pattern.indptr),
                           shape=self.pattern.shape)
        got = np.stack([mat @ v for v in vs])
        scale = np.abs(exact).max() + np.abs(got).max() + 1e-30
        return float(np.abs(got - exact).max() / scale)

    def explain(self) -> "SparseExplanation":
        """The plan for this signature; ``str()`` gives a readable report."""
        c = self.coloring
        how = {"column": "forward mode (vmapped JVPs)", "row": "reverse mode (vmapped VJPs)",
               "star": "Hessian-vector products, star coloring",
               "symmetric-column": "Hessian-vector products, distance-2 coloring"}[c.mode]
        tried = ", ".join(f"{k}: {v}" for k, v in sorted(c.tried.items()))
        lines = [
            f"{self.owner.api} ({self.framework})",
            f"  pattern: {self.pattern.shape[0]} x {self.pattern.shape[1]}, "
            f"nnz {self.pattern.nnz} (density {self.pattern.density:.3g})",
            f"  strategy: colored {how}",
            f"  colors: {c.n_colors} (ordering: {c.ordering}; tried {tried})",
            f"  estimated cost: {c.n_colors} passes "
            f"(dense would take {min(self.pattern.shape) if c.mode in ('column', 'row') else self.pattern.shape[1]})",
            f"  prepared in {self.detect_seconds * 1e3:.1f} ms "
            + ("reading the given pattern (pattern=; not detected, and not checked "
               "unless check=True)" if self.owner.given is not None else "detection")
            + f" + {self.coloring_seconds * 1e3:.1f} ms coloring",
        ]
        if self._switched:
            lines.append(f"  f refuses {'forward' if c.mode == 'row' else 'reverse'} mode (its "
                         "own rules: custom_vjp, custom_linear_solve, autograd.Function), so "
                         "the pattern is colored for this mode")
        if self.conservative_ops:
            lines.append("  dense (conservative) rules used for: "
                         + ", ".join(self.conservative_ops))
        return SparseExplanation(self, "\n".join(lines))


class SparseDerivative:
    """A sparse Jacobian or Hessian of ``fun``, prepared once per argument
    signature and reused (pattern, coloring) on every later call, including under
    ``jax.jit``. Made by ``derivs.jacobian(f, sparse=True)`` and
    ``derivs.hessian(f, sparse=True)``; call it like ``f``.

    The pattern is detected from the code of ``f`` for the argument shapes and
    dtypes. PyTorch: the values of tensors ``f`` reads (closures, globals, module
    buffers; not those that require grad) are used, so their zeros count as
    structural; the prepared pattern is guarded like the engine's graphs (NOTE
    [state guards]) and by those tensors' version counters, and is detected again
    when any of them changes. JAX: the pattern is guarded the same way (JAX arrays
    cannot change in place, so their identities, Python values and NumPy arrays
    ``f`` reads cover it).
    """

    def __init__(self, fun: Callable, kind: str, argnum: int, has_aux: bool, fmt: str,
                 coloring: str, check: bool, unknown: str, api: str, pattern: Any = None):
        self.fun = fun
        self.given = pattern  # pattern=: used instead of detection
        self.kind = kind
        self.argnum = argnum
        self.has_aux = has_aux
        self.format = fmt
        self.coloring_mode = coloring
        self.check_on_prepare = check
        self.unknown = unknown
        self.api = api
        self._cache = LRUCache(maxsize=32)
        self._lock = threading.Lock()

    def _normalize(self, args: tuple) -> tuple:
        return _normalize(args, self.argnum, self.api)

    def prepare(self, *args) -> Prepared:
        """Detect and color for these arguments' signature (cached)."""
        fw, backend, args = self._normalize(args)
        key = _signature(args)
        hit = None if key is None else self._cache.get(key)
        if hit is not None and hit.fresh():
            return hit
        with self._lock:
            hit = None if key is None else self._cache.get(key)
            if hit is not None and hit.fresh():
                return hit
            t0 = time.perf_counter()
            pattern, conservative, valid = self.detect(fw, backend, tuple(args))
            t1 = time.perf_counter()
            if self.kind == "hessian":
                col = _coloring.color_hessian(pattern)
            else:
                col = _coloring.color_jacobian(pattern, self.coloring_mode)
            t2 = time.perf_counter()
            prepared = Prepared(self, fw, pattern, col, t1 - t0, t2 - t1, conservative, valid)
            if self.check_on_prepare and not fw.is_tracing(args):
                prepared.check(*args)
            elif self.check_on_prepare:
                warnings.warn(
                    f"{self.api}: check=True cannot run while jax traces f (under jax.jit "
                    "the arguments have no values): the pattern is unchecked. Call the "
                    "derivative once outside jit first; it checks on that call.",
                    SparsityWarning, stacklevel=3)
                return prepared  # not cached: the first call outside jit checks
            if key is not None:
                self._cache.put(key, prepared)
            return prepared

    def detect(self, fw, backend, args: tuple) -> tuple[Pattern, list[str], Any]:
        """The pattern for these arguments (not cached), the ops that got the
        conservative dense rule, and a check that the pattern still holds (None:
        it holds for the signature)."""
        if self.kind == "hessian":
            self._check_scalar(fw, args)
        if self.given is not None:  # the user's pattern: no detection, no guard
            in_shape = tuple(args[self.argnum].shape)
            out_shape = in_shape if self.kind == "hessian" else tuple(
                fw.output_shape(self.fun, args, self.has_aux))
            m = int(np.prod(out_shape, dtype=np.int64))
            n = int(np.prod(in_shape, dtype=np.int64))
            return (_pattern.given(self.api, self.given, (m, n), out_shape, in_shape,
                                   symmetric=self.kind == "hessian"), [], None)
        matrix, out_shape, in_shape, conservative, valid = fw.detect(
            self.kind, self.fun, args, self.argnum, self.has_aux, self.unknown)
        m, n = int(np.prod(out_shape, dtype=np.int64)), int(np.prod(in_shape, dtype=np.int64))
        if self.kind == "jacobian":
            return Pattern(matrix, (m, n), out_shape, in_shape), conservative, valid
        if matrix is not None:
            matrix = (matrix + matrix.T).tocsr()  # a Hessian is symmetric
        return (Pattern(matrix, (n, n), in_shape, in_shape, symmetric=True), conservative,
                valid)

    def _check_scalar(self, fw, args) -> None:
        try:
            shape = fw.output_shape(self.fun, args, self.has_aux)
        except Exception:  # f cannot run abstractly: the gradient's own check speaks
            return
        if shape != ():
            raise ValueError(
                f"{self.api}: f must return a scalar (one number) for a Hessian, but it "
                f"returns shape {shape}. For a vector output use derivs.jacobian (of its "
                "gradient, or of each component), or reduce it to a scalar first.")

    def __call__(self, *args):
        # Hot path: a prepared signature whose differentiated argument is already a
        # floating array (prepare validated that signature once), whose pattern still
        # holds for what f reads.
        key = _signature(args)
        hit = None if key is None or self.argnum >= len(args) else self._cache.get(key)
        if hit is not None and hasattr(args[self.argnum], "dtype") and hit.fresh():
            return hit(*args)
        return backends.checked_call(self.fun, args, self.api, lambda: self._first(args))

    def _first(self, args):
        args = self._normalize(args)[2]
        return self.prepare(*args)(*args)

    def explain(self, *args) -> "SparseExplanation":
        prepared = self.prepare(*args)
        mode = prepared.coloring.mode
        if mode in ("column", "row") and not prepared._switched:
            # the mode a call would find refused is switched now, as the call would:
            # the report shows the coloring that runs
            fw, _, full = _normalize(args, self.argnum, self.api)
            m, n = prepared.pattern.shape
            if _refusal(fw, mode, self.fun, full, self.argnum, self.has_aux, (n, m)):
                prepared._switch_mode()
        return prepared.explain()

    __derivs_explain__ = explain  # the hook derivs.explain calls (``_report.py``)

    def __repr__(self) -> str:
        return f"<derivs sparse {self.kind} of {getattr(self.fun, '__name__', self.fun)!r}>"


def _validate(f, fmt, coloring, unknown, api):
    if not callable(f):
        raise TypeError(f"{api}: f must be callable, got {type(f).__name__}.")
    if fmt not in FORMATS:
        raise ValueError(f"{api}: format={fmt!r} is not one of {FORMATS}.")
    if coloring not in ("auto", "column", "row"):
        raise ValueError(f"{api}: coloring={coloring!r} is not one of 'auto', 'column', 'row'.")
    if unknown not in UNKNOWN:
        raise ValueError(f"{api}: unknown={unknown!r} is not one of {UNKNOWN}.")


def jacobian(f: Callable, argnums: int | Sequence[int] = 0, *, has_aux: bool = False,
             sparse: bool = False, format: str = "native", coloring: str = "auto",
             check: bool = False, unknown: str = "warn", pattern: Any = None) -> Callable:
    """The Jacobian of ``f`` with respect to argument ``argnums``.

    Dense (``sparse=False``): the framework's ``jacfwd``/``jacrev``, whichever
    is cheaper for the shapes, shaped ``out_shape + in_shape``.

    Sparse (``sparse=True``): the pattern is detected from ``f``'s graph, columns
    (or rows, whichever needs fewer colors; force with ``coloring``) are colored,
    and one vmapped JVP (VJP) per color gives every nonzero. The result is a 2-D
    matrix of shape ``(f(x).size, x.size)`` (row-major flattening) in ``format``:

    * ``"native"``/``"coo"``: ``jax.experimental.sparse.BCOO`` or a coalesced
      ``torch.sparse_coo_tensor``;
    * ``"csr"``: ``BCSR`` or ``torch.sparse_csr_tensor``;
    * ``"scipy"``: ``scipy.sparse.csr_array`` (host memory; not under ``jit``);
    * ``"dense"``: a dense array shaped ``out_shape + in_shape``.

    Detection treats ops without a rule as dense over their inputs and warns
    (``unknown="warn"``), or raises (``"error"``); the pattern never misses an
    entry. ``check=True`` verifies the prepared pattern against random JVPs on
    the first call. ``derivs.explain(J, x)`` reports the pattern and colors.
    With a tuple ``argnums`` the result is a tuple of Jacobians, one per argument.

    ``pattern=`` (with ``sparse=True``): a known pattern (a stencil, a mesh) used
    instead of detection: a :class:`derivs.Pattern`, a SciPy sparse matrix or a
    boolean array of shape ``(f(x).size, x.size)`` or ``f(x).shape + x.shape``
    (a SciPy matrix's stored entries count, explicit zeros included). It is the
    caller's promise: an entry outside it is not computed, and it spoils the
    entries that share its color, so ``check=True`` verifies the pattern on the
    first call, at its point and at a random point near it.

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> f = lambda x: x[1:] ** 2 - x[:-1]
      >>> J = derivs.jacobian(f, sparse=True)(jnp.arange(4.0, dtype=jnp.float32))
      >>> J.todense()
      Array([[-1.,  2.,  0.,  0.],
             [ 0., -1.,  4.,  0.],
             [ 0.,  0., -1.,  6.]], dtype=float32)
    """
    api = "derivs.jacobian"
    _validate(f, format, coloring, unknown, api)
    _check_sparse_options(api, sparse, format, coloring, check, pattern)
    if isinstance(argnums, (tuple, list)):
        if pattern is not None:
            raise TypeError(f"{api}: pattern= describes one argument's Jacobian; with "
                            "several argnums make one derivs.jacobian per argument.")
        parts = [jacobian(f, a, has_aux=has_aux, sparse=sparse, format=format,
                          coloring=coloring, check=check, unknown=unknown) for a in argnums]

        def blocks(*args):
            outs = [p(*args) for p in parts]
            if has_aux:
                return tuple(o[0] for o in outs), outs[0][1]
            return tuple(outs)

        def explain_blocks(*args) -> "BlocksExplanation":
            return BlocksExplanation(api, [(a, _report.hook(p)(*args))
                                           for a, p in zip(argnums, parts)])

        return _report.attach(blocks, explain_blocks)
    argnum = _check_argnum(argnums, None, api)
    if sparse:
        return SparseDerivative(f, "jacobian", argnum, has_aux, format, coloring, check,
                                unknown, api, pattern)
    return _dense(f, "jacobian", argnum, has_aux, api)


def hessian(f: Callable, argnums: int = 0, *, has_aux: bool = False, sparse: bool = False,
            format: str = "native", check: bool = False, unknown: str = "warn",
            pattern: Any = None) -> Callable:
    """The Hessian of a scalar ``f`` with respect to argument ``argnums``.

    Dense: the framework's ``hessian``, shaped ``in_shape + in_shape``. Sparse:
    the pattern of the gradient's Jacobian is detected and symmetrized, star
    coloring (several vertex orders; distance-2 coloring as the alternative,
    fewest colors win) groups the columns, and one Hessian-vector product
    (forward over reverse) per color gives every nonzero. Formats as for
    :func:`jacobian`, shape ``(x.size, x.size)``; ``pattern=`` as there (an
    entry on one side of the diagonal counts on both).

    Example:

      >>> import torch, derivs
      >>> f = lambda x: ((x[1:] - x[:-1] ** 2) ** 2).sum()
      >>> H = derivs.hessian(f, sparse=True, format="dense")(torch.ones(4, dtype=torch.float64))
      >>> H
      tensor([[ 8., -4.,  0.,  0.],
              [-4., 10., -4.,  0.],
              [ 0., -4., 10., -4.],
              [ 0.,  0., -4.,  2.]], dtype=torch.float64)
    """
    api = "derivs.hessian"
    _validate(f, format, "auto", unknown, api)
    _check_sparse_options(api, sparse, format, "auto", check, pattern)
    argnum = _check_argnum(argnums, None, api)
    if sparse:
        return SparseDerivative(f, "hessian", argnum, has_aux, format, "auto", check,
                                unknown, api, pattern)
    return _dense(f, "hessian", argnum, has_aux, api)


def _check_sparse_options(api: str, sparse, fmt: str, coloring: str, check,
                          pattern: Any = None) -> None:
    """``sparse`` is a bool, and options that only a sparse result reads are not
    silently ignored on a dense one."""
    if not isinstance(sparse, bool):
        raise TypeError(f"{api}: sparse must be True or False, got {sparse!r}.")
    if not isinstance(check, bool):
        raise TypeError(f"{api}: check must be True or False, got {check!r}.")
    if not sparse:
        given = [f"{k}={v!r}" for k, v, default in (
            ("format", fmt, "native"), ("coloring", coloring, "auto"), ("check", check, False))
            if v != default] + (["pattern=..."] if pattern is not None else [])
        if given:
            raise ValueError(f"{api}: {', '.join(given)} applies to sparse results only; pass "
                             "sparse=True as well, or drop it for the dense result.")


def _dense(f, kind, argnum, has_aux, api):
    def dense(*args):
        fw, _, args = _normalize(args, argnum, api)
        return fw.dense(kind, f, args, argnum, has_aux)

    def explain(*args) -> "DenseExplanation":
        fw, backend, args = _normalize(args, argnum, api)
        out = fw.output_shape(f, args, has_aux)
        if kind == "hessian":
            how = "forward over reverse (the framework's hessian): one HVP per input"
        else:
            n_in, n_out = math.prod(tuple(args[argnum].shape)), math.prod(out)
            mode = "column" if n_in <= n_out else "row"
            refused = _refusal(fw, mode, f, args, argnum, has_aux, (n_in, n_out))
            forward = (mode == "column") != (refused is not None)
            if refused is None:
                how = ("forward mode (jacfwd): one JVP per input, no more inputs than "
                       "outputs" if forward else "reverse mode (jacrev): one VJP per "
                       "output, fewer outputs than inputs")
            else:
                how = (("forward mode (jacfwd): one JVP per input" if forward else
                        "reverse mode (jacrev): one VJP per output") + f", because {refused}")
        return DenseExplanation(api, backend.name, kind, out, tuple(args[argnum].shape), how)

    dense.__doc__ = f"Dense {kind} of {getattr(f, '__name__', 'f')} (derivs)."
    return _report.attach(dense, explain)


def _refusal(fw, mode, f, args, argnum, has_aux, sizes) -> str | None:
    """Why a Jacobian in ``mode`` ("column" or "row") is not taken that way: f's own
    rules refuse it (a custom_vjp function has no forward mode, a custom_linear_solve
    without transpose_solve no reverse mode) while the other mode works, as the
    evaluation does; None otherwise."""
    n_in, n_out = sizes
    size = {"column": n_in, "row": n_out}
    why = fw.refusal(mode, f, args, argnum, has_aux, size[mode])
    other = "row" if mode == "column" else "column"
    if why is None or fw.refusal(other, f, args, argnum, has_aux, size[other]) is not None:
        return None
    name = {"column": "forward", "row": "reverse"}
    return f"f refuses {name[mode]} mode, which its shape would take ({why})"


class DenseExplanation(_report.Report):
    """What ``derivs.explain`` reports for a dense ``jacobian`` / ``hessian``
    (``sparse=False``): the framework's own dense transform and the mode it takes."""

    def __init__(self, api, backend, kind, out_shape, in_shape, how):
        self.api, self.backend, self.kind, self.how = api, backend, kind, how
        self.strategy = "dense"
        self.out_shape, self.in_shape = tuple(out_shape), tuple(in_shape)

    def text(self) -> str:
        return (f"{self.api} ({self.backend}), dense: output {self.out_shape}, input "
                f"{self.in_shape}\n  {self.how}\n  sparse=True detects the pattern and "
                "colors it instead")


class BlocksExplanation(_report.Report):
    """A Jacobian over several ``argnums``: one explanation per argument's block."""

    def __init__(self, api, parts):
        self.api, self.parts = api, parts
        self.strategy = "blocks"

    def text(self) -> str:
        return "\n".join(f"{self.api}, block of argument {a}:\n{report.text()}"
                         for a, report in self.parts)


def sparsity(f: Callable, *args: Any, argnums: int = 0, has_aux: bool = False,
             hessian: bool = False, unknown: str = "warn") -> Pattern:
    """The global sparsity pattern of ``f``'s Jacobian (or, with ``hessian=True``,
    of its Hessian) at arguments shaped like ``args``: a :class:`Pattern` of shape
    ``(f(x).size, x.size)``, valid for every value of the inputs.

    Example:

      >>> import jax.numpy as jnp, derivs
      >>> derivs.sparsity(lambda x: jnp.sum(x[1:] * x[:-1]), jnp.ones(4), hessian=True).todense().astype(int)
      array([[0, 1, 0, 0],
             [1, 0, 1, 0],
             [0, 1, 0, 1],
             [0, 0, 1, 0]])
    """
    api = "derivs.sparsity"
    _validate(f, "native", "auto", unknown, api)
    if not args:
        raise TypeError(f"{api}(f, *args): pass example arguments (their shapes and dtypes "
                        "define the pattern), e.g. derivs.sparsity(f, x).")
    kind = "hessian" if hessian else "jacobian"
    d = SparseDerivative(f, kind, _check_argnum(argnums, len(args), api), has_aux, "native",
                         "auto", False, unknown, api)
    fw, backend, args = d._normalize(tuple(args))
    return d.detect(fw, backend, args)[0]
