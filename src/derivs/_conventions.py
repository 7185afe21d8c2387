"""The calling conventions users bring from JAX and ``torch.func``, shared by the
operators and estimators: ``argnums`` (with ``argnum``, the older spelling, kept as
an alias) and ``has_aux``.

NOTE [aux by a second call]: with ``has_aux=True`` f returns ``(output, aux)``.
The operator differentiates ``output`` and returns ``(result, aux)``, as
``jax.grad(f, has_aux=True)`` does. ``aux`` comes from one more plain call of f
at the same arguments, so it is f's aux at the point, whatever the operator's
strategy (a captured graph, directions stacked on an axis, chunks, a batch split
into pieces). It costs one evaluation of f beside the operator's several; under
``jax.jit`` the second call's unused output is dropped by the compiler.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from . import _report

_UNSET = None


def transform(api: str, leading: int = 0):
    """Decorates a public transform ``fn(f, ..., argnums=0, ..., has_aux=False,
    argnum=None, ...)``: ``argnum`` is resolved into ``argnums`` and ``has_aux``
    handled here, so ``fn``'s body always runs with ``has_aux=False`` and
    ``argnum=None``. ``leading``: how many arguments the made callable takes
    before f's own (an estimator's random key)."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def public(*args: Any, **kwargs: Any) -> Callable:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            given["argnums"] = resolve_argnums(api, given["argnums"], given.pop("argnum"))
            given["argnum"] = _UNSET
            has_aux = given["has_aux"]
            if not isinstance(has_aux, bool):
                raise TypeError(f"{api}: has_aux must be True or False, got {has_aux!r}.")
            if not has_aux:
                return fn(*bound.args, **bound.kwargs)
            f = given["f"]
            if not callable(f):
                raise TypeError(f"{api}: f must be callable, got {type(f).__name__}.")
            given["f"], given["has_aux"] = _output_of(api, f), False
            return _with_aux(api, f, fn(*bound.args, **bound.kwargs), leading)
        return public
    return decorate


def resolve_argnums(api: str, argnums: Any, argnum: Any) -> Any:
    """``argnums``, or ``argnum`` where only the alias was given (checked later,
    with the other options, as one argument's index)."""
    if argnum is _UNSET:
        return argnums
    if argnums != 0 and argnums != argnum:
        raise TypeError(f"{api}: got argnums={argnums!r} and argnum={argnum!r}; pass one "
                        "(argnums; argnum is its older spelling).")
    return argnum


def _output_of(api: str, f: Callable) -> Callable:
    """``f``'s output without its aux (checked to be a pair). Not ``functools.wraps``:
    that would copy an ``nn.Module``'s ``__dict__`` onto the function."""
    def output(*args: Any, **kwargs: Any) -> Any:
        return _pair(api, f(*args, **kwargs))[0]
    return output


def _pair(api: str, out: Any) -> tuple:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"{api}: has_aux=True needs f to return a pair (output, aux), got "
                        f"{type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                        + "; return (output, aux), or drop has_aux.")
    return tuple(out)


def _with_aux(api: str, f: Callable, op: Callable, leading: int) -> Callable:
    """``op`` returning ``(result, aux)``, aux from one more call of f (NOTE [aux by
    a second call]); ``explain`` sees ``op``'s plan."""
    @functools.wraps(op)
    def op_with_aux(*args: Any, **kwargs: Any) -> tuple:
        result = op(*args, **kwargs)
        return result, _pair(api, f(*args[leading:], **kwargs))[1]

    explain = _report.hook(op)
    if explain is not None:
        _report.attach(op_with_aux, explain)
    return op_with_aux
