"""JAX side of sparse derivatives: detection entry points, compressed passes
(vmapped JVPs, VJPs or Hessian-vector products over the color seeds) and
native outputs. Everything after detection is traceable, so a prepared sparse
derivative runs under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import _jax_detect
from ..backends import _varying

name = "jax"


def _bind(fun, args, argnum, has_aux):
    """``x -> (f(..., x, ...), aux)`` for the selected argument."""
    def f_x(x):
        full = list(args)
        full[argnum] = x
        out = fun(*full)
        return out if has_aux else (out, None)
    return f_x


def detect(kind, fun, args, argnum, has_aux, unknown):
    if kind == "jacobian":
        target = (lambda *a: fun(*a)[0]) if has_aux else fun
    else:  # the Hessian pattern is the Jacobian pattern of the gradient
        grad = jax.grad(fun, argnums=argnum, has_aux=has_aux)
        target = (lambda *a: grad(*a)[0]) if has_aux else grad
    # The pattern reads the values f closes over (zeros of constant arrays): it holds
    # while the state guard of what f reads holds (JAX arrays cannot change in place,
    # so identities, Python values and NumPy contents cover it).
    from ..backends import _guards

    try:
        valid = _guards.walk(fun).check
    except _guards.Unguardable:
        valid = None
    return (*_jax_detect.detect(target, args, argnum, unknown), valid)


def compressed(mode, fun, args, argnum, has_aux, seeds):
    """The stack of compressed products, one row per seed, and ``aux``."""
    x = args[argnum]
    f_x = _bind(fun, args, argnum, has_aux)
    seeds = jnp.asarray(seeds, x.dtype)
    if mode == "row":  # seeds live in the output space
        out, vjp, aux = jax.vjp(f_x, x, has_aux=True)
        cot = _varying.like(seeds.reshape((-1,) + out.shape), out)
        (rows,) = jax.vmap(vjp)(cot)
        return rows.reshape(cot.shape[0], -1), aux
    seeds = _varying.like(seeds.reshape((-1,) + x.shape), x)  # NOTE [varying axes]
    # Column mode: JVPs of f; Hessian: JVPs of its gradient (forward over reverse).
    # linearize evaluates the primal once and vmaps only the linear map (measured
    # faster than vmapping jvp, whose batched trace keeps more of the primal work).
    g = f_x if mode == "column" else jax.grad(f_x, has_aux=True)
    _, lin, aux = jax.linearize(g, x, has_aux=True)
    out = jax.vmap(lin)(seeds)
    return out.reshape(seeds.shape[0], -1), aux


def evaluator(mode, fun, argnum, has_aux, seeds, gather):
    """``args -> (nonzero values in pattern order, aux)``: the compressed passes
    and one gather (traceable: runs under ``jit``)."""
    gather = np.asarray(gather)

    def evaluate(args):
        stack, aux = compressed(mode, fun, args, argnum, has_aux, seeds)
        # derivs built the indices: in bounds and unique, so XLA may skip the checks.
        return stack.reshape(-1).at[gather].get(mode="promise_in_bounds",
                                                unique_indices=True), aux
    return evaluate


def layout(pattern):
    """Index arrays of the output, built once per prepared derivative."""
    return {"coo": np.stack([pattern.rows, pattern.cols], 1).astype(np.int32),
            "cols": pattern.cols.astype(np.int32), "indptr": pattern.indptr.astype(np.int32)}


def assemble(data, lay, pattern, fmt):
    m, n = pattern.shape
    if fmt in ("native", "coo"):
        from jax.experimental import sparse as jsparse

        return jsparse.BCOO((data, jnp.asarray(lay["coo"])), shape=(m, n), indices_sorted=True,
                            unique_indices=True)
    if fmt == "csr":
        from jax.experimental import sparse as jsparse

        return jsparse.BCSR((data, jnp.asarray(lay["cols"]), jnp.asarray(lay["indptr"])),
                            shape=(m, n))
    if fmt == "scipy":
        if isinstance(data, jax.core.Tracer):
            raise TypeError("format='scipy' gives a host (NumPy) matrix and cannot be used "
                            "under jax.jit; use format='native' (BCOO) inside jit.")
        return sp.csr_array((np.asarray(data), pattern.cols, pattern.indptr), shape=(m, n))
    dense = jnp.zeros((m, n), data.dtype).at[pattern.rows, pattern.cols].set(data)
    return dense.reshape(pattern.out_shape + pattern.in_shape)


def is_tracing(args) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in args)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


def dense(kind, fun, args, argnum, has_aux):
    if kind == "hessian":
        return jax.hessian(fun, argnums=argnum, has_aux=has_aux)(*args)
    out = jax.eval_shape(fun, *args)
    out = out[0] if has_aux else out
    # Forward mode when the input is no larger than the output, reverse otherwise.
    fwd = np.size(args[argnum]) <= int(np.prod(out.shape, dtype=np.int64))
    jac = jax.jacfwd if fwd else jax.jacrev
    return jac(fun, argnums=argnum, has_aux=has_aux)(*args)


def output_shape(fun, args, has_aux) -> tuple:
    out = jax.eval_shape(fun, *args)
    return tuple((out[0] if has_aux else out).shape)
