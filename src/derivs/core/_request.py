"""Derivative requests: parsing and validating multi-indices.

A *request* names one partial derivative as a multi-index over scalar input
coordinates. Internally a coordinate is a pair ``(slot, flat)``: ``slot`` is the
position of the differentiated argument inside ``argnums`` (always 0 when
``argnums`` is an int) and ``flat`` is the row-major flat position inside that
argument (inside one sample when ``batch_axis`` is given). A multi-index is the
sorted tuple of its coordinates, so ``(2, 0)`` and ``(0, 2)`` name the same
derivative (mixed partials of smooth functions commute).

Spelling, as the user writes it:

* ``argnums`` an int:   an int ``i`` (first order) or a sequence of ints,
  e.g. ``(0, 2, 4)`` -> d^3 f / dx0 dx2 dx4, ``(0, 0)`` -> d^2 f / dx0^2.
* ``argnums`` a tuple:  a sequence of ``(argnum, flat)`` pairs, e.g.
  ``((0, 3), (1, 0))`` -> d^2 f / dx_3 dy_0 for ``argnums=(0, 1)``.
* ``()`` (empty) means the value of ``f`` itself; only ``partials`` and
  ``value_and_partials`` accept it.

Everything that can be checked without the arguments is checked here, when the
transform is built; index ranges are checked by :func:`check_ranges` once the
argument shapes are known.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

Coord = tuple[int, int]  # (slot in argnums, flat index)
MultiIndex = tuple[Coord, ...]


def normalize_argnums(argnums: Any, api: str) -> tuple[tuple[int, ...], bool]:
    """Returns ``(argnums_tuple, is_tuple)``; raises on anything else."""
    if _is_int(argnums):
        a = operator.index(argnums)
        _check_argnum_sign(a, api)
        return (a,), False
    if isinstance(argnums, Sequence) and not isinstance(argnums, str):
        if len(argnums) == 0:
            raise ValueError(
                f"{api}: argnums=() selects no argument to differentiate; "
                "pass an int such as argnums=0 or a tuple such as argnums=(0, 1)."
            )
        out = []
        for a in argnums:
            if not _is_int(a):
                raise TypeError(
                    f"{api}: argnums must hold ints, got {a!r} of type {type(a).__name__}."
                )
            a = operator.index(a)
            _check_argnum_sign(a, api)
            out.append(a)
        if len(set(out)) != len(out):
            raise ValueError(f"{api}: argnums={tuple(out)} repeats an argument; list each once.")
        return tuple(out), True
    raise TypeError(
        f"{api}: argnums must be an int or a tuple of ints, got {argnums!r} "
        f"of type {type(argnums).__name__}."
    )


def parse_index(spec: Any, argnums: tuple[int, ...], is_tuple: bool, *, api: str,
                allow_value: bool) -> MultiIndex:
    """Turns one user-written request into a canonical (sorted) multi-index."""
    if is_tuple:
        coords = _parse_pairs(spec, argnums, api)
    else:
        coords = _parse_ints(spec, api)
    if not coords and not allow_value:
        raise ValueError(
            f"{api}: the empty multi-index () asks for a derivative of order 0, i.e. "
            "f itself. Pass a non-empty index such as (0,), or use "
            "derivs.value_and_partials / derivs.partials, where () means the value."
        )
    return tuple(sorted(coords))


def request_key(spec: Any) -> Any:
    """The dict key under which a request's result is returned: the request as the
    user wrote it, with lists turned into tuples so that it is hashable."""
    if isinstance(spec, list):
        return tuple(request_key(s) for s in spec)
    if isinstance(spec, tuple):
        return tuple(request_key(s) for s in spec)
    return spec


def check_ranges(requests: Sequence[MultiIndex], sizes: Sequence[int],
                 shapes: Sequence[tuple[int, ...]], argnums: tuple[int, ...], *, api: str,
                 batch_axis: int | None) -> None:
    """Checks every flat index against the (per-sample) size of its argument."""
    for mi in requests:
        for slot, flat in mi:
            if flat >= sizes[slot]:
                where = "per-sample shape" if batch_axis is not None else "shape"
                last = sizes[slot] - 1
                raise IndexError(
                    f"{api}: index {flat} is out of range for argument {argnums[slot]} of "
                    f"{where} {tuple(shapes[slot])} ({sizes[slot]} elements); flat indices "
                    f"are row-major and run from 0 to {last}."
                    + (" A 0-d argument has the single index 0." if not shapes[slot] else "")
                )


def order(mi: MultiIndex) -> int:
    return len(mi)


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _check_argnum_sign(a: int, api: str) -> None:
    if a < 0:
        raise ValueError(
            f"{api}: argnums={a} is negative; count arguments from 0 (argnums=0 is the first)."
        )


def _check_flat(v: Any, api: str, what: str) -> int:
    if not _is_int(v):
        raise TypeError(
            f"{api}: {what} must be an int (a row-major flat position), got {v!r} "
            f"of type {type(v).__name__}."
        )
    v = operator.index(v)
    if v < 0:
        raise IndexError(
            f"{api}: {what} {v} is negative; flat indices count from 0 (negative "
            "indices are not supported, write the position explicitly)."
        )
    return v


def _parse_ints(spec: Any, api: str) -> list[Coord]:
    if _is_int(spec):
        return [(0, _check_flat(spec, api, "index"))]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return [(0, _check_flat(v, api, "index")) for v in spec]
    raise TypeError(
        f"{api}: a derivative index must be an int such as 0 or a tuple of ints such "
        f"as (0, 2, 4), got {spec!r} of type {type(spec).__name__}."
    )


def _parse_pairs(spec: Any, argnums: tuple[int, ...], api: str) -> list[Coord]:
    hint = (
        f"with argnums={argnums} write each index as a tuple of (argnum, flat_index) "
        f"pairs, e.g. (({argnums[0]}, 0),) for a first derivative or "
        f"(({argnums[0]}, 0), ({argnums[-1]}, 1)) for a mixed second derivative"
    )
    if not (isinstance(spec, Sequence) and not isinstance(spec, str)):
        raise TypeError(f"{api}: got index {spec!r}; {hint}.")
    coords = []
    for pair in spec:
        if not (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2):
            raise TypeError(f"{api}: got index {spec!r}; {hint}.")
        a, flat = pair
        if not _is_int(a) or operator.index(a) not in argnums:
            raise ValueError(
                f"{api}: index {spec!r} names argument {a!r}, which is not in "
                f"argnums={argnums}; add it to argnums or fix the index."
            )
        coords.append((argnums.index(operator.index(a)), _check_flat(flat, api, "flat index")))
    return coords
