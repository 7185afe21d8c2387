"""Argument validation shared by the transforms: the options they all take
(``argnum``, ``batch_axis``, ``chunk_size``, ``batch_size``, ``strategy``,
``torch_compile``), the conversion of the differentiated argument, and the entry
every exact operator's callable shares. Each error says what to pass instead."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import _batch, backends
from .core import _ledger
from .backends import _common


def check_operator_options(api: str, f: Callable, argnum: Any, batch_axis: Any, strategy: Any,
                           strategies: tuple, chunk_size: Any, batch_size: Any,
                           torch_compile: Any, chunked: str) -> None:
    """The checks of every exact operator's options (``chunked``: what
    ``chunk_size`` counts)."""
    check_operator_arguments(api, f, argnum, batch_axis)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"{api}: chunk_size must be None (all {chunked} at once) or a "
                         f"positive int, got {chunk_size!r}.")
    _batch.check_batch_size(api, batch_size, batch_axis)
    if strategy not in (None, *strategies):
        raise ValueError(f"{api}: strategy={strategy!r} is not one of None (automatic), "
                         + ", ".join(repr(k) for k in strategies) + ".")
    check_torch_compile(api, torch_compile)


def check_operator_arguments(api: str, f: Callable, argnum: Any, batch_axis: Any) -> None:
    """The checks every operator and estimator makes on its arguments."""
    if not callable(f):
        raise TypeError(f"{api}: f must be callable, got {type(f).__name__}.")
    if isinstance(argnum, bool) or not isinstance(argnum, int) or argnum < 0:
        raise TypeError(f"{api}: argnums must be a non-negative int (one argument), got "
                        f"{argnum!r}; for several arguments concatenate them into one.")
    check_batch_axis(api, batch_axis)


def check_batch_axis(api: str, batch_axis: Any) -> None:
    if batch_axis is not None and (isinstance(batch_axis, bool) or not isinstance(batch_axis, int)):
        raise TypeError(f"{api}: batch_axis must be None or an int axis, got {batch_axis!r}.")


def check_torch_compile(api: str, torch_compile: Any) -> None:
    if not isinstance(torch_compile, bool):
        raise TypeError(f"{api}: torch_compile must be True or False, got {torch_compile!r}.")


def operator_input(api: str, args: tuple, argnum: int, batch_axis: int | None,
                   torch_compile: bool):
    """``(backend, args, x, sample shape)`` of an operator's call: the argument
    ``argnum`` converted to the backend's array, checked against ``batch_axis``."""
    if argnum >= len(args):
        raise ValueError(f"{api}: argnum={argnum} but the function was called with "
                         f"{len(args)} positional argument(s).")
    backend = backends.backend_for(args, api)
    if torch_compile and not backend.accepts_torch_compile:
        raise ValueError(f"{api}: torch_compile=True is for PyTorch functions; for "
                         f"{backend.name} functions wrap the operator in jax.jit instead.")
    x = backend.as_input(args[argnum], argnum, api, batch_axis)
    args = args[:argnum] + (x,) + args[argnum + 1:]
    sample = _common.sample_shape(tuple(x.shape), batch_axis)
    check_not_empty(api, argnum, sample)
    return backend, args, x, sample


def check_not_empty(api: str, argnum: int, sample: tuple) -> None:
    if _common.numel(sample) == 0:
        raise ValueError(f"{api}: argument {argnum} has no elements (sample shape "
                         f"{tuple(sample)}): there is no coordinate to differentiate "
                         "along. Pass a non-empty array.")


def operator_entry(api: str, f: Callable, argnum: int, batch_axis: int | None,
                   torch_compile: bool, routes: "_batch.SampleRoutes", body: Callable,
                   ledger: "_ledger.Ledger | None" = None) -> Callable:
    """An exact operator's callable (``f``'s signature): the argument ``argnum``
    checked and converted (:func:`operator_input`), a route over the samples taken
    when one applies (``routes.run``), else ``body(backend, args, x, sample,
    kwargs)``; a failure that a framework mix-up explains says so
    (``backends.checked_call``). ``ledger`` records the first call (NOTE
    [first-call ledger])."""
    def run(args, kwargs):
        backend, args, x, sample = operator_input(api, args, argnum, batch_axis, torch_compile)
        routed, out = routes.run(backend, args, kwargs, x)
        return out if routed else body(backend, args, x, sample, kwargs)

    @functools.wraps(f)
    def op(*args, **kwargs):
        call = lambda: backends.checked_call(f, args, api, lambda: run(args, kwargs))  # noqa: E731
        return call() if ledger is None else ledger.call(call)
    return op
