"""Helpers shared by the backends: shape bookkeeping, error texts, the engines' fallback,
what a function reads from its closure, and coefficient sums with None as zero."""

from __future__ import annotations

import dataclasses
import math


def sample_shape(shape: tuple[int, ...], batch_axis: int | None) -> tuple[int, ...]:
    """The shape of one sample: ``shape`` without the batch axis."""
    if batch_axis is None:
        return tuple(shape)
    axis = batch_axis % len(shape)
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def bad_dtype_message(api: str, argnum: int, dtype: object, kind: str, cast: str) -> str:
    if kind == "complex":
        return (
            f"{api}: argument {argnum} has complex dtype {dtype}; derivs differentiates real "
            "floating-point inputs (float16/bfloat16/float32/float64). Split a complex input "
            "into real and imaginary parts and pass them as separate real arguments."
        )
    return (
        f"{api}: argument {argnum} has {kind} dtype {dtype}, which has no derivative. "
        f"Pass a floating-point array, e.g. {cast}, or move it out of argnums if it is "
        "meant to be held fixed."
    )


def bad_output_message(api: str, dtype: object) -> str:
    return (
        f"{api}: f returned an output of dtype {dtype}; derivatives are defined only for "
        "floating-point outputs. Return a float array (cast with .astype / .to), or return "
        "the non-differentiable part as auxiliary data with has_aux=True."
    )


def no_output_message(api: str, out) -> str:
    what = "None" if out is None else f"an empty {type(out).__name__}"
    return (f"{api}: f returned {what}; derivs needs f to return arrays (did f forget a "
            "return statement?).")


def check_axis_in_range(api: str, argnum: int, ndim: int, batch_axis: int) -> None:
    """``batch_axis`` is an axis of argument ``argnum`` (``ndim`` dimensions); the type
    check of the option itself is ``_validation.check_batch_axis``."""
    if not -ndim <= batch_axis < ndim or ndim == 0:
        raise ValueError(
            f"{api}: batch_axis={batch_axis} does not exist in argument {argnum}, which has "
            f"{ndim} dimension(s). Pass batch_axis=None for unbatched inputs, or the axis "
            "that indexes the independent samples."
        )


def jvp_passing_aux(jvp_has_aux, tree_flatten, is_array, fun, primal, tangent):
    """One ``jvp_has_aux(fun, primal, tangent)`` level where ``fun`` returns
    ``(out, aux)`` and ``aux`` may hold anything.

    Frameworks accept only arrays as auxiliary output of a transform (they must
    lower them out of the transform's level), so the array leaves of ``aux`` go
    through the transform and every other leaf (None, ints, strings) is carried
    around it unchanged.
    """
    side = {}

    def fun_arrays_only(a):
        out, aux = fun(a)
        leaves, spec = tree_flatten(aux)
        side["spec"], side["leaves"] = spec, leaves
        return out, tuple(leaf for leaf in leaves if is_array(leaf))

    primal_out, tangent_out, arrays = jvp_has_aux(fun_arrays_only, primal, tangent)
    it = iter(arrays)
    leaves = [next(it) if is_array(leaf) else leaf for leaf in side["leaves"]]
    return primal_out, tangent_out, side["spec"].unflatten(leaves)


@dataclasses.dataclass
class Fallback:
    """An engine could not take this call (``reason`` says why, for ``explain``);
    the general path runs it. Shared by the JAX and PyTorch engines."""

    reason: str


# -- coefficient arithmetic with None as a structural zero (both engines' eager jets;
# the PyTorch builder has its own, over graph nodes and narrow columns) -------------
def add(x, y):
    """``x + y`` with None as a structural zero (the jet algebras' coefficient sum)."""
    if x is None:
        return y
    if y is None:
        return x
    return x + y


def scale(x, c: float):
    """``c * x``; None for a zero ``x`` or ``c``, and ``x`` itself for ``c == 1``."""
    if x is None or c == 0:
        return None
    return x if c == 1 else x * c


def total(values):
    """The sum of ``values``, None as zero (None when all are)."""
    out = None
    for v in values:
        out = add(out, v)
    return out


# Plain Python values a trace bakes in as constants (``f(x, k)`` may slice with
# ``k``): part of a signature by value.
PLAIN = (int, float, bool, str, complex, type(None))


def leaf_signature(leaves, array_meta) -> tuple | None:
    """The cache signature of argument leaves: ``array_meta(leaf)`` for arrays (the
    framework's shape / dtype / device; None for a non-array) and ``(type, value)``
    for plain values. None when a leaf is neither: derivs then keys nothing on it
    and prepares afresh. Shared by every signature (the engines' caches, the
    sparse transforms'), so that what a cache keys on is decided in one place."""
    parts = []
    for leaf in leaves:
        meta = array_meta(leaf)
        if meta is not None:
            parts.append(meta)
        elif isinstance(leaf, (float, complex)):
            # by repr: -0.0 == 0.0 (and hashes alike), but f may tell them apart
            # (atan2, copysign, 1 / x); and one NaN key serves every NaN
            parts.append((type(leaf), repr(leaf)))
        elif isinstance(leaf, PLAIN):
            parts.append((type(leaf), leaf))
        else:
            return None
    return tuple(parts)


_ABSENT = object()


def referenced_values(fun):
    """``(name or None, value)`` for what ``fun`` reads from its closure cells and
    module globals (the values a trace would bake in). A callable without code
    (an object with ``__call__``) yields nothing: its state is not visible here."""
    code = getattr(fun, "__code__", None)
    if code is None:
        return
    for cell in getattr(fun, "__closure__", None) or ():
        try:
            yield None, cell.cell_contents
        except ValueError:  # an empty cell
            continue
    glb = getattr(fun, "__globals__", {})
    for name in code.co_names:
        v = glb.get(name, _ABSENT)
        if v is not _ABSENT:
            yield name, v
