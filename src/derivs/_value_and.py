"""``value_and_jacobian`` and ``value_and_hessian``: f's value beside its
derivative, as ``jax.value_and_grad`` gives it beside the gradient (and asdex beside
a sparse Jacobian), so that a Newton or Gauss-Newton step makes one call.

NOTE [value by one more call]: the value comes from one plain call of f at the same
arguments, next to the derivative (dense or sparse, any coloring, any format).
That is f's value whatever the derivative's strategy; it costs one evaluation of f
beside the derivative's several passes (``D`` JVPs, or one per color).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import _report
from ._conventions import converted, output_of, pair
from ._sparse import hessian, jacobian


def value_and_jacobian(f: Callable, argnums: int | Sequence[int] = 0, *,
                       has_aux: bool = False, **options: Any) -> Callable:
    """``f``'s value and its :func:`derivs.jacobian` in one call:
    ``value_and_jacobian(f, ...)(*args)`` returns ``(f(*args), J)``, and with
    ``has_aux=True`` (f returning ``(output, aux)``) ``((output, aux), J)``, as
    ``jax.value_and_grad`` does. ``argnums`` and the other options
    (``sparse``, ``format``, ``coloring``, ``check``, ``unknown``) are
    :func:`derivs.jacobian`'s. NOTE [value by one more call].

    Example (one Newton step on ``x^2 = 2`` per coordinate):

      >>> import jax.numpy as jnp, derivs
      >>> step = derivs.value_and_jacobian(lambda x: x ** 2 - 2.0, sparse=True, format="dense")
      >>> x = jnp.array([1.0, 2.0], dtype=jnp.float32)
      >>> r, J = step(x)
      >>> x - jnp.linalg.solve(J, r)
      Array([1.5, 1.5], dtype=float32)
    """
    return _value_and("derivs.value_and_jacobian", jacobian, f, argnums, has_aux, options)


def value_and_hessian(f: Callable, argnums: int = 0, *, has_aux: bool = False,
                      **options: Any) -> Callable:
    """``f``'s (scalar) value and its :func:`derivs.hessian` in one call:
    ``(f(*args), H)``, or ``((output, aux), H)`` with ``has_aux=True``. The options
    (``sparse``, ``format``, ``check``, ``unknown``) are :func:`derivs.hessian`'s.
    NOTE [value by one more call].

    Example:

      >>> import torch, derivs
      >>> f = lambda x: (x ** 3).sum()
      >>> derivs.value_and_hessian(f)(torch.tensor([1.0, 2.0], dtype=torch.float64))
      (tensor(9., dtype=torch.float64), tensor([[ 6.,  0.],
              [ 0., 12.]], dtype=torch.float64))
    """
    return _value_and("derivs.value_and_hessian", hessian, f, argnums, has_aux, options)


def _value_and(api: str, derivative: Callable, f: Callable, argnums: Any, has_aux: Any,
               options: dict) -> Callable:
    if not callable(f):
        raise TypeError(f"{api}: f must be callable, got {type(f).__name__}.")
    if not isinstance(has_aux, bool):
        raise TypeError(f"{api}: has_aux must be True or False, got {has_aux!r}.")
    if "argnum" in options:
        raise TypeError(f"{api}: the argument index is argnums.")
    # the derivative of f's output alone; its own checks run here, at creation
    d = derivative(output_of(api, f) if has_aux else f, argnums, **options)

    def value_and(*args: Any) -> tuple:
        result = d(*args)
        value = f(*converted(api, args, argnums))
        return (pair(api, value) if has_aux else value), result

    explain = _report.hook(d)
    if explain is not None:
        _report.attach(value_and, explain)
    value_and.__doc__ = f"{api} of {getattr(f, '__name__', 'f')}."
    return value_and
