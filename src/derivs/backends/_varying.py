"""Varying manual axes: the types ``jax.shard_map`` gives arrays inside its body.

NOTE [varying axes]: inside ``jax.shard_map`` (its default ``check_vma=True``) every
array's type says over which manual mesh axes its value varies, and most primitives
(``sub``, ``mul``, ...) and JAX's own JVPs require their operands to agree. ``jnp``
inserts the casts while a function is traced, so the user's jaxpr already holds its
``pvary``s; derivs, though, creates arrays that jaxpr never saw (seeds, zero
coefficients, the literals of JAX's own JVP of ``tanh``) and binds primitives on
them directly. Those arrays are cast up to the varying axes of what they meet, as
``jnp`` would: a no-op cast that changes the type, never the value. Outside
``shard_map`` every array varies over nothing and these helpers return their input.
"""

from __future__ import annotations

from typing import Any

import jax


def abstract_mesh() -> Any:
    """The abstract mesh being traced under (None on a JAX without one)."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    return None if get is None else get()


def in_shard_map() -> bool:
    """Whether this is traced inside ``jax.shard_map`` (some mesh axis is manual)."""
    return bool(getattr(abstract_mesh(), "manual_axes", ()))


def axes(x: Any) -> frozenset:
    """The manual mesh axes over which ``x`` varies (empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.10: the manual axis type; before: .vma
    return mat.varying if mat is not None else getattr(aval, "vma", frozenset())


def cast(x: Any, to: frozenset) -> Any:
    """``x`` typed as varying over ``to`` (a superset of its own axes)."""
    missing = to - axes(x)
    return jax.lax.pcast(x, tuple(sorted(missing)), to="varying") if missing else x


def like(x: Any, reference: Any) -> Any:
    """``x`` typed as varying over at least the axes ``reference`` varies over."""
    to = axes(reference)
    return cast(x, to | axes(x)) if to else x


def match(args: tuple) -> tuple:
    """Operands cast up to the union of their varying axes, as ``jnp`` casts the
    operands of one primitive."""
    if len(args) < 2:
        return args
    kinds = [axes(a) for a in args]
    union = frozenset().union(*kinds)
    if all(k == union for k in kinds):
        return args
    return tuple(a if k == union else cast(a, union) for a, k in zip(args, kinds))


def explicit_mesh(x: Any) -> bool:
    """Whether ``x``'s type is sharded over an explicit-sharding mesh axis."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    return bool(getattr(getattr(sharding, "mesh", None), "explicit_axes", ())) and \
        spec is not None and any(s is not None for s in spec)


def stacked_like(stack: Any, reference: Any) -> Any:
    """``stack`` (a leading axis, then ``reference``'s shape: seeds, cotangents)
    typed as ``reference`` is: varying over its manual axes, and, under an explicit
    sharding mesh (``jax.sharding.AxisType.Explicit``, where shardings are part of
    the type), sharded as ``reference`` along the trailing axes, as JAX requires
    of a tangent."""
    stack = like(stack, reference)
    sharding = getattr(jax.typeof(reference), "sharding", None)
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = getattr(mesh, "explicit_axes", ())
    if spec is None or not explicit or not any(s is not None for s in spec):
        return stack
    return jax.sharding.reshard(stack, jax.sharding.PartitionSpec(None, *spec))
