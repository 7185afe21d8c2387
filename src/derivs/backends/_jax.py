"""JAX backend: one forward-mode level is ``jax.jvp``.

Everything stays a traceable JAX computation, so the result composes with
``jax.jit``, ``jax.vmap``, ``jax.grad`` and with further derivs transforms, and
XLA removes the hyper-dual coefficients that no request reads (under ``jit``).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _common, _varying
from . import jax_engine as engine  # noqa: F401  (the traced-jet strategy)

one_hot = engine.one_hot  # the engine's seeds, shared

name = "jax"
accepts_torch_compile = False  # jit the transform instead
stacked_family = False  # a family of directions is vmapped (jax_engine.run_family)
# NOTE [batch axis layout] (``_batch.py``): a proven batch axis runs the per-sample
# operator under jax.vmap, measured faster than seeding every sample in one pass.
vmap_operators = True
# NOTE [per-sample route]: XLA:CPU runs the vmapped batch-of-one program (every
# intermediate with a size-1 axis) 2.6x slower than the bare-sample one (tanh MLP,
# D = 10, width 64, 256 points: 2.48 against 0.94 ms), so the bare route, where it
# reproduces f, goes first.
bare_samples_first = True


def launch_bound(device_type: str | None) -> bool:
    """Whether one kernel per op and direction would dominate: never for XLA, which
    fuses the unrolled directions into few kernels."""
    return False


def sparsity():
    """The sparse-derivative side of this framework (detection, compressed passes)."""
    return importlib.import_module("derivs._sparsity._jax")


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
        _common.check_axis_in_range(api, argnum, x.ndim, batch_axis)
    return x


def check_output(out: Any, api: str) -> None:
    if not jax.tree_util.tree_leaves(out):
        raise TypeError(_common.no_output_message(api, out))
    for leaf in jax.tree_util.tree_leaves(out):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(_common.bad_output_message(api, dtype))


def jvp(fun, primal, tangent):
    return _common.jvp_passing_aux(
        lambda g, p, t: jax.jvp(g, (p,), (t,), has_aux=True),
        jax.tree_util.tree_flatten, owns, fun, primal, tangent)


def _array_meta(leaf) -> tuple | None:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), str(leaf.dtype)
    return None


def signature(fun, args: tuple, kwargs: dict):
    """What f's output shape can depend on: shapes and dtypes of the array leaves
    and of the arrays f reads from its closure and globals, and plain values.
    None when a leaf is neither."""
    parts = _common.leaf_signature(jax.tree_util.tree_leaves((args, kwargs)), _array_meta)
    if parts is None:
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
    try:
        out = jax.eval_shape(lambda *a: fun(*a, **kwargs), *args)
    except jax.errors.ConcretizationTypeError:
        # a Python branch on a value (f can still be differentiated eagerly, as
        # jax.grad does): evaluate f itself
        out = fun(*args, **kwargs)
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


# -- the array operations the operators need (``_operators.py``, ``_collapsed.py``) -------
unsqueeze = jnp.expand_dims
stack = jnp.stack
concatenate = jnp.concatenate
grad = jax.grad
vmap = jax.vmap
reduce_sum = jnp.sum
movedim = jnp.moveaxis
tree_map = jax.tree_util.tree_map


def broadcast(v, like):
    return jnp.broadcast_to(v, like.shape)


def jvp_tangent(g, x, v):
    """The tangent of ``g`` at ``x`` along ``v`` (inside ``shard_map``, ``v`` typed as
    varying like ``x``: NOTE [varying axes]; a unit direction made here varies over
    nothing, and ``jax.grad`` of the product then fails to transpose)."""
    return jax.jvp(g, (x,), (_varying.like(v, x),))[1]


def over_units(g, n: int, sample, like, chunk_size):
    """``g`` vmapped over the unit directions ``e_0 .. e_{n-1}`` shaped ``sample``,
    stacked, ``chunk_size`` at a time (``jax_engine.map_units``)."""
    out = engine.map_units(g, n, sample, like.dtype, chunk_size)
    return out.reshape((-1,) + out.shape[2:])[:n]  # zero padding directions dropped


def tree_add(a, b):
    return jax.tree_util.tree_map(lambda u, v: u + v, a, b)


def as_array(v, like):
    """``v`` as an array of ``like``'s dtype (and device)."""
    return jnp.asarray(v, like.dtype)


def tensordot(a, b):
    """``a`` contracted with ``b`` over ``a``'s last and ``b``'s first axis."""
    return jnp.tensordot(a, b, axes=1)


def _key(key, api: str):
    if not (isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                            or key.shape == (2,))):
        raise TypeError(f"{api}: with JAX arrays, key must be a jax.random key "
                        f"(e.g. jax.random.key(0)), got {type(key).__name__}.")
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.shape != (() if typed else (2,)):
        raise ValueError(f"{api}: key must be one jax.random key, got an array of keys of "
                         f"shape {key.shape}; for one estimate per key, jax.vmap the "
                         "estimator over the keys.")
    return key


def random_directions(key, shape: tuple, like, distribution: str, api: str):
    """``shape`` random numbers (Rademacher or Gaussian) of ``like``'s dtype; ``key``
    a ``jax.random`` key."""
    key = _key(key, api)
    if distribution == "rademacher":
        return jax.random.rademacher(key, shape, dtype=like.dtype)
    return jax.random.normal(key, shape, dtype=like.dtype)


# NOTE [drawing coordinates]: ``jax.random.choice(replace=False)`` shuffles all n
# indices: 5 ms at n = 1e4 and 60 ms at 1e5 on CPU, more than the estimate it
# feeds. Floyd's algorithm draws a uniform S-subset in S steps whatever n is (0.03
# ms at S = 16, n = 1e5); above 256 samples its O(S^2) membership tests give way to
# the top S of n random 32-bit words (1.3 ms at n = 1e5; a tie at the cut, which
# favours the lower index, has probability about S n / 2^32).
FLOYD_LIMIT = 256


def random_coordinates(key, samples: int, n: int, like, api: str):
    """``samples`` distinct indices below ``n``, uniformly without replacement
    (NOTE [drawing coordinates])."""
    key = _key(key, api)
    if samples > FLOYD_LIMIT:
        bits = jax.random.bits(key, (n,), jnp.uint32)
        return jax.lax.top_k(bits, samples)[1]
    keys = jax.random.split(key, samples)

    def step(i, chosen):  # Floyd: j = n - S + i; t uniform in [0, j]; t taken -> j
        j = jnp.asarray(n - samples + i, jnp.int32)
        t = jax.random.randint(keys[i], (), 0, j + 1, dtype=jnp.int32)
        return chosen.at[i].set(jnp.where(jnp.any(chosen == t), j, t))

    return jax.lax.fori_loop(0, samples, step, jnp.full((samples,), -1, jnp.int32))


def coordinate_rows(indices, n: int, like):
    return jax.nn.one_hot(indices, n, dtype=like.dtype)


def vmap_over(fn, in_dims: tuple, out_axis: int):
    return jax.vmap(fn, in_axes=in_dims, out_axes=out_axis)


def unvmappable(error: BaseException) -> bool:
    """A Python branch or conversion on a traced value."""
    return isinstance(error, (jax.errors.ConcretizationTypeError,
                              jax.errors.TracerArrayConversionError,
                              jax.errors.TracerIntegerConversionError))


def no_grad():
    return contextlib.nullcontext()


def to_numpy(a):
    return np.asarray(a)


def random_like(args: tuple, signed: bool = False) -> tuple:
    rng = np.random.default_rng(1 if signed else 0)
    out = []
    for a in args:
        if hasattr(a, "shape") and hasattr(a, "dtype") and jnp.issubdtype(a.dtype,
                                                                           jnp.floating):
            draw = rng.standard_normal(a.shape) if signed else rng.uniform(0.25, 0.75, a.shape)
            a = np.asarray(draw).astype(a.dtype)
        out.append(a)
    return tuple(out)


def concrete():
    return jax.ensure_compile_time_eval()


# NOTE [strided chunks]: ``lax.map(batch_size=b)`` cuts the samples into contiguous
# chunks, and a chunk axis reshaped out of a sharded sample axis spans every device:
# under ``jax.jit`` with the points sharded, XLA gathered the whole batch onto every
# device and ran every chunk everywhere. Chunk ``c`` takes the samples ``c, c + k,
# c + 2k, ...`` instead (``k`` chunks): the reshape ``(size,) -> (b, k)`` keeps the
# sharded axis first, so each device holds its share of every chunk, the map runs
# over the second axis, and the output is sharded like the input (when the devices
# divide ``b``: each then holds ``b / devices`` samples of every chunk). Where ``b``
# does not divide the samples, the contiguous map runs (its last chunk is shorter).
def map_chunks(per_sample, batched, args: tuple, dims: list, size: int, out_axis: int,
               batch_size: int):
    """``per_sample`` over the samples, ``batch_size`` at a time: ``jax.lax.map``
    over strided chunks (NOTE [strided chunks]), vmapped within each chunk.
    ``dims``: each argument's sample axis, or None."""
    mapped = tuple(jnp.moveaxis(a, d, 0) for a, d in zip(args, dims) if d is not None)

    def one(xs):
        it = iter(xs)
        return per_sample(*[a if d is None else next(it) for a, d in zip(args, dims)])

    if size % batch_size:
        out = jax.lax.map(one, mapped, batch_size=batch_size)
        return jax.tree_util.tree_map(lambda o: jnp.moveaxis(o, 0, out_axis), out)
    k = size // batch_size
    # (size, ...) -> (b, k, ...) -> (k, b, ...): chunk c holds samples i * k + c
    chunks = tuple(jnp.moveaxis(a.reshape((batch_size, k) + a.shape[1:]), 1, 0)
                   for a in mapped)
    out = jax.lax.map(jax.vmap(one), chunks)
    # (k, b, ...) -> (b, k, ...) -> (size, ...): each sample back at its place

    def back(o):
        o = jnp.moveaxis(o, 0, 1)
        return jnp.moveaxis(o.reshape((size,) + o.shape[2:]), 0, out_axis)

    return jax.tree_util.tree_map(back, out)

