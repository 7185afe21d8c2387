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
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{api}: {e}") from None
            given = dict(bound.arguments)  # what the caller passed, before defaults
            bound.apply_defaults()
            if "argnum" in given and given["argnum"] is not _UNSET:
                if "argnums" in given and given["argnums"] != given["argnum"]:
                    raise TypeError(f"{api}: got argnums={given['argnums']!r} and argnum="
                                    f"{given['argnum']!r}; pass one (argnums; argnum is "
                                    "its older spelling).")
                bound.arguments["argnums"] = given["argnum"]
            bound.arguments["argnum"] = _UNSET
            has_aux = bound.arguments["has_aux"]
            if not isinstance(has_aux, bool):
                raise TypeError(f"{api}: has_aux must be True or False, got {has_aux!r}.")
            if not has_aux:
                return fn(*bound.args, **bound.kwargs)
            f = bound.arguments["f"]
            if not callable(f):
                raise TypeError(f"{api}: f must be callable, got {type(f).__name__}.")
            bound.arguments["f"], bound.arguments["has_aux"] = output_of(api, f), False
            op = fn(*bound.args, **bound.kwargs)
            return _with_aux(api, f, op, leading, bound.arguments["argnums"],
                             bound.arguments.get("batch_axis"))
        return public
    return decorate


def output_of(api: str, f: Callable) -> Callable:
    """``f``'s output without its aux (checked to be a pair), as a
    ``functools.partial`` of f: state guards and the capture walk a partial's
    function and arguments, so they see f itself (a closure defined here would be
    walked as library code, and f's state would go unguarded)."""
    return functools.partial(_output, api, f)


def _output(api: str, f: Callable, *args: Any, **kwargs: Any) -> Any:
    return pair(api, f(*args, **kwargs))[0]


def pair(api: str, out: Any) -> tuple:
    """``out`` checked to be ``(output, aux)``."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        what = (f"{type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list))
                else f"an array of shape {tuple(out.shape)}" if hasattr(out, "shape")
                else type(out).__name__)
        raise TypeError(f"{api}: has_aux=True needs f to return a pair (output, aux), got "
                        f"{what}; return (output, aux), or drop has_aux.")
    return tuple(out)


def _with_aux(api: str, f: Callable, op: Callable, leading: int, argnums: Any,
              batch_axis: Any) -> Callable:
    """``op`` returning ``(result, aux)``, aux from one more call of f (NOTE [aux by
    a second call]) on the arguments as the operator takes them (a Python number
    or NumPy array at ``argnums`` converted the same way); ``explain`` sees
    ``op``'s plan."""
    def op_with_aux(*args: Any, **kwargs: Any) -> tuple:
        result = op(*args, **kwargs)
        own = converted(api, args[leading:], argnums, batch_axis)
        return result, pair(api, f(*own, **kwargs))[1]

    functools.update_wrapper(op_with_aux, f, updated=())
    explain = _report.hook(op)
    if explain is not None:
        _report.attach(op_with_aux, explain)
    return op_with_aux


def converted(api: str, args: tuple, argnums: Any, batch_axis: Any = None) -> tuple:
    """``args`` with the differentiated ones (``argnums``) converted as the
    transforms convert them (a Python number or NumPy array becomes an array of
    f's framework), for the plain calls of f beside a transform."""
    from . import backends

    own = list(args)
    backend = backends.backend_for(tuple(own), api)
    for i in (argnums if isinstance(argnums, (tuple, list)) else (argnums,)):
        if isinstance(i, int) and 0 <= i < len(own):
            own[i] = backend.as_input(own[i], i, api, batch_axis)
    return tuple(own)
