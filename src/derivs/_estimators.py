"""Stochastic estimators, used only when asked for by name.

Every other operator in derivs is exact. ``hutchinson_laplacian`` trades
exactness for a cost that does not grow with the dimension: ``S`` second
directional derivatives instead of ``D``. It is never chosen automatically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import backends
from ._operators import _framework, check_operator_arguments
from .backends import _common

DISTRIBUTIONS = ("rademacher", "gaussian")


def hutchinson_laplacian(f: Callable, samples: int = 64, argnum: int = 0, *,
                         batch_axis: int | None = None, distribution: str = "rademacher",
                         with_stderr: bool = False) -> Callable:
    """An unbiased random estimate of the Laplacian ``tr(H)`` of ``f`` in argument
    ``argnum`` (Hutchinson's estimator), for when ``D`` is too large for the exact
    :func:`derivs.laplacian`.

    Returns ``estimate(key, *args, **kwargs)``. ``key`` is a ``jax.random`` key
    (JAX), or an int seed or ``torch.Generator`` (PyTorch). The estimate is
    ``mean_s v_s^T H v_s`` over ``samples`` random directions ``v_s``; each term is
    one second directional derivative (forward over forward mode, vmapped), so
    the cost is about ``4 * samples`` evaluations of f whatever ``D`` is. Every
    output of ``f`` gets its own estimate, with the same directions. With
    ``batch_axis``, each sample along that axis gets its own estimate, also with
    the same directions.

    Variance of one term ``v^T H v`` (divide by ``samples`` for the estimate):

    * ``"rademacher"`` (entries +-1, the default): ``2 * sum_{i != j} H_ij^2``.
      The diagonal contributes nothing, so a diagonal Hessian is estimated
      exactly, and the variance is the lowest of all distributions with
      independent entries.
    * ``"gaussian"`` (standard normal entries): ``2 * ||H||_F^2``.

    ``with_stderr=True`` also returns the estimated standard error of the
    estimate, ``std(v_s^T H v_s) / sqrt(samples)``.

    Example:

      >>> import jax, jax.numpy as jnp, derivs
      >>> f = lambda x: jnp.sum(x ** 3)          # diagonal Hessian: exact
      >>> est = derivs.hutchinson_laplacian(f, samples=4)
      >>> est(jax.random.key(0), jnp.array([1.0, 2.0, 3.0], dtype=jnp.float32))
      Array(36., dtype=float32)
    """
    api = "derivs.hutchinson_laplacian"
    check_operator_arguments(api, f, argnum, batch_axis)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{api}: samples must be a positive int, got {samples!r}.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{api}: distribution={distribution!r} is not one of "
                         f"{DISTRIBUTIONS}.")

    @functools.wraps(f)
    def estimate(key: Any, *args: Any, **kwargs: Any) -> Any:
        if argnum >= len(args):
            raise ValueError(f"{api}: argnum={argnum} but the estimator was called with "
                             f"{len(args)} argument(s) after the key; call it as "
                             "estimate(key, *args).")
        backend = backends.backend_for(args, api)
        x = backend.as_input(args[argnum], argnum, api, batch_axis)
        sample = _common.sample_shape(tuple(x.shape), batch_axis)
        fw = _framework(backend.name)
        directions = _draw(backend.name, key, (samples,) + tuple(sample), x, distribution, api)

        def at(z):
            return f(*args[:argnum], z, *args[argnum + 1:], **kwargs)

        def quad(v):  # d^2/dt^2 f(x + t v) at t = 0, i.e. v^T H v
            if batch_axis is not None:  # the same direction in every sample
                v = fw.broadcast(fw.unsqueeze(v, batch_axis % x.ndim), x)
            return fw.jvp(lambda z: fw.jvp(at, z, v), x, v)

        terms = fw.vmap(quad)(directions)
        mean = terms.mean(0)
        if not with_stderr:
            return mean
        spread = ((terms - mean) ** 2).sum(0) / max(samples - 1, 1)
        return mean, (spread / samples) ** 0.5

    estimate.__derivs_estimator__ = api
    return estimate


def _draw(framework: str, key: Any, shape: tuple[int, ...], like: Any, distribution: str,
          api: str) -> Any:
    """``shape`` random directions with ``like``'s dtype and device."""
    if framework == "jax":
        import jax

        if not (isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                                or key.shape == (2,))):
            raise TypeError(f"{api}: with JAX arrays, key must be a jax.random key "
                            f"(e.g. jax.random.key(0)), got {type(key).__name__}.")
        if distribution == "rademacher":
            return jax.random.rademacher(key, shape, dtype=like.dtype)
        return jax.random.normal(key, shape, dtype=like.dtype)
    import torch

    if isinstance(key, int) and not isinstance(key, bool):
        key = torch.Generator(device=like.device).manual_seed(key)
    if not isinstance(key, torch.Generator):
        raise TypeError(f"{api}: with torch tensors, key must be an int seed or a "
                        f"torch.Generator, got {type(key).__name__}.")
    if distribution == "rademacher":
        bits = torch.randint(0, 2, shape, generator=key, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    return torch.randn(shape, generator=key, dtype=like.dtype, device=like.device)
