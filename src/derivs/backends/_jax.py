"""JAX backend: one forward-mode level is ``jax.jvp``.

Everything stays a traceable JAX computation, so the result composes with
``jax.jit``, ``jax.vmap``, ``jax.grad`` and with further derivs transforms, and
XLA removes the hyper-dual coefficients that no request reads (under ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _common
from . import jax_engine as engine  # noqa: F401  (the traced-jet strategy)

name = "jax"


def owns(x: Any) -> bool:
    return isinstance(x, jax.Array)


def as_input(x: Any, argnum: int, api: str, batch_axis: int | None) -> jax.Array:
    if not isinstance(x, (jax.Array, int, float)) and not hasattr(x, "__array__"):
        raise TypeError(
            f"{api}: argument {argnum} is a {type(x).__name__}; derivs differentiates "
            "arrays. Pass a jax.Array (flatten containers first, e.g. with "
            "jax.flatten_util.ravel_pytree)."
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        kind = ("complex" if jnp.issubdtype(x.dtype, jnp.complexfloating)
                else "boolean" if x.dtype == jnp.bool_ else "integer")
        raise TypeError(_common.bad_dtype_message(
            api, argnum, x.dtype, kind, "x.astype(jnp.float32)"))
    if batch_axis is not None:
        _common.check_batch_axis(api, argnum, x.ndim, batch_axis)
    return x


def check_output(out: Any, api: str) -> None:
    if not jax.tree_util.tree_leaves(out):
        raise TypeError(_common.no_output_message(api, out))
    for leaf in jax.tree_util.tree_leaves(out):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(_common.bad_output_message(api, dtype))


def one_hot(x: jax.Array, flat: int, batch_axis: int | None) -> jax.Array:
    shape = _common.sample_shape(x.shape, batch_axis)
    t = jnp.zeros(_common.numel(shape), x.dtype).at[flat].set(1).reshape(shape)
    if batch_axis is None:
        return t
    return jnp.broadcast_to(jnp.expand_dims(t, batch_axis % x.ndim), x.shape)


def jvp(fun, primal, tangent):
    return _common.jvp_passing_aux(
        lambda g, p, t: jax.jvp(g, (p,), (t,), has_aux=True),
        jax.tree_util.tree_flatten, owns, fun, primal, tangent)


def signature(fun, args: tuple, kwargs: dict):
    """What f's output shape can depend on: shapes and dtypes of the array leaves
    and of the arrays f reads from its closure and globals, and plain values.
    None when a leaf is neither."""
    parts = []
    for leaf in jax.tree_util.tree_leaves((args, kwargs)):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            parts.append((tuple(leaf.shape), str(leaf.dtype)))
        elif isinstance(leaf, (int, float, bool, str, type(None))):
            parts.append((type(leaf), leaf))
        else:
            return None
    read = tuple((tuple(v.shape), str(v.dtype)) for _, v in _common.referenced_values(fun)
                 if isinstance(v, jax.Array))
    return str(jax.tree_util.tree_structure((args, kwargs))), tuple(parts), read


def state_check(fun):
    """Always valid: the signature already holds the shapes of closed-over arrays,
    and a jaxpr is traced per call."""
    return _always


def _always() -> bool:
    return True


def output_shape(fun, args: tuple, kwargs: dict, cache=None) -> tuple[int, ...] | None:
    """The shape of f's output (abstract evaluation), None if not one array."""
    out = jax.eval_shape(lambda *a: fun(*a, **kwargs), *args)
    return tuple(out.shape) if hasattr(out, "shape") else None


def first_order_reverse(fun, selected: tuple, requests) -> list:
    """The value and the gradient of a one-number output, read off per request
    (``()`` the value, ``((slot, flat),)`` a first-order partial)."""
    def scalar(sel):
        out = fun(sel)
        return jnp.reshape(out, ()), out

    (_, out), grads = jax.value_and_grad(scalar, has_aux=True)(tuple(selected))
    return [out if not mi else jnp.reshape(jnp.reshape(grads[mi[0][0]], (-1,))[mi[0][1]],
                                           jnp.shape(out))
            for mi in requests]
