"""Runs a plan with a backend: nested forward mode with one-hot tangents.

The executor is framework-free: of the backend protocol (``backends/_protocol.py``)
it needs only ``one_hot`` (the tangent that seeds one coordinate) and ``jvp`` (one
forward-mode level over a single argument, passing auxiliary data through). Both JAX and torch.func
implement ``jvp`` as a composable transform, so the result composes with their
``vmap``/``grad``/``jit`` and with ordinary autograd.

NOTE [true partials]: each level differentiates with respect to the argument
*as passed in*: every other argument is closed over and held fixed, whatever the
caller computed it from. This is what makes ``partial(f, 0)(x, y)`` the partial
derivative, never the total derivative, when ``y`` was computed from ``x``
(seed problem 1).
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._plan import Plan


class ForwardMode(Protocol):
    """What the executor needs from a framework: the framework-free part of the
    adapter protocol (``backends._protocol.Backend`` extends it). A backend may also
    offer ``serialized()``, a context manager held while a plan runs (for frameworks
    whose forward mode is not thread-safe)."""

    name: str

    def one_hot(self, x: Any, flat: int, batch_axis: int | None) -> Any: ...

    def jvp(self, fun: Callable[[Any], tuple[Any, Any]], primal: Any,
            tangent: Any) -> tuple[Any, Any, Any]:
        """``fun(x) -> (out, aux)``; returns ``(out, d out[tangent], aux)``."""
        ...


def run_plan(backend: ForwardMode, plan: Plan, call: Callable[[tuple], tuple[Any, Any]],
             selected: tuple, batch_axis: int | None) -> tuple[list[Any], Any]:
    """Evaluates ``plan``; returns the requested results in request order and the
    auxiliary data of ``call`` (``call(selected) -> (out, aux)``).

    ``batch_axis``: when not None, every selected argument has independent samples
    along this axis and one-hot tangents seed the coordinate in every sample."""
    results: list[Any] = [None] * len(plan.requests)
    aux = None
    serialized = getattr(backend, "serialized", contextlib.nullcontext)
    with serialized():
        for i, p in enumerate(plan.passes):
            coeffs, aux = _nested(backend, call, selected, p.directions, batch_axis)
            for r, (j, mask) in enumerate(plan.lookup):
                if j == i:
                    results[r] = coeffs[mask]
    return results, aux


def _nested(backend: ForwardMode, call: Callable, selected: tuple,
            directions: Sequence[tuple[int, int]],
            batch_axis: int | None) -> tuple[list[Any], Any]:
    """The ``2**m`` hyper-dual coefficients of ``call`` along ``directions``;
    coefficient ``mask`` has the partials of the levels whose bits are set."""
    if not directions:
        out, aux = call(selected)
        return [out], aux
    *inner_dirs, (slot, flat) = directions

    def inner(a):
        args = selected[:slot] + (a,) + selected[slot + 1:]
        coeffs, aux = _nested(backend, call, args, inner_dirs, batch_axis)
        return tuple(coeffs), aux

    tangent = backend.one_hot(selected[slot], flat, batch_axis)
    primal_out, tangent_out, aux = backend.jvp(inner, selected[slot], tangent)
    return [*primal_out, *tangent_out], aux


__all__ = ["ForwardMode", "run_plan"]
