"""Stochastic estimators, used only when asked for by name.

Every other operator in derivs is exact. ``hutchinson_laplacian``,
``hutchinson_bilaplacian`` and ``hutchinson_diffusion`` trade exactness for a cost
that does not grow with the dimension: ``S`` directional derivatives instead of
``D`` (``D^2`` for the Bi-Laplacian, ``r`` for a diffusion of rank ``r``). None is
ever chosen automatically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._collapsed import directional
from ._validation import check_operator_arguments, operator_input

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
    _check(api, f, argnum, batch_axis, samples)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{api}: distribution={distribution!r} is not one of "
                         f"{DISTRIBUTIONS}.")

    @functools.wraps(f)
    def estimate(key: Any, *args: Any, **kwargs: Any) -> Any:
        backend, args, x, sample = _inputs(api, args, argnum, batch_axis)
        directions = backend.random_directions(key, (samples,) + tuple(sample), x, distribution, api)
        # v^T H v = d^2/dt^2 f(x + t v) at t = 0; the same direction in every sample
        terms = directional(backend.name, f, args, kwargs, argnum, batch_axis, directions,
                             2, per_sample=False)
        return _mean(terms, samples, with_stderr)

    estimate.__derivs_estimator__ = api
    return estimate


def hutchinson_bilaplacian(f: Callable, samples: int = 64, argnum: int = 0, *,
                           batch_axis: int | None = None, with_stderr: bool = False
                           ) -> Callable:
    """An unbiased random estimate of the Bi-Laplacian ``sum_ij d^4 f / dx_i^2 dx_j^2``
    of ``f`` in argument ``argnum``, for when ``D^2`` directions of the exact
    :func:`derivs.bilaplacian` are too many.

    Returns ``estimate(key, *args, **kwargs)`` (``key`` as for
    :func:`hutchinson_laplacian`). For standard normal ``v``, ``E[v_a v_b v_c v_d]
    = d_ab d_cd + d_ac d_bd + d_ad d_bc``, so ``E[D^4 f[v]] = 3 * Delta^2 f``: the
    estimate is ``mean_s D^4 f[v_s] / 3`` over ``samples`` Gaussian directions,
    four nested JVPs each (Rademacher directions would be biased: their fourth
    moments lose ``2 sum_i d^4 f / dx_i^4``). The variance of one term is
    ``(E[D^4 f[v]^2] - 9 (Delta^2 f)^2) / 9``, a sum over the eighth moments of
    ``v``; for ``f = |x|^4`` it is ``64 (D (D+2) (D+4) (D+6) - (D (D+2))^2)``.
    ``with_stderr=True`` also returns the estimated standard error.

    Example (``f = |x|^4``: ``Delta^2 f = 8 D (D + 2) = 120`` at ``D = 3``):

      >>> import torch, derivs
      >>> est = derivs.hutchinson_bilaplacian(lambda x: (x ** 2).sum() ** 2, samples=20000)
      >>> value = est(0, torch.zeros(3, dtype=torch.float64))
      >>> bool(abs(value - 120) < 5)
      True
    """
    api = "derivs.hutchinson_bilaplacian"
    _check(api, f, argnum, batch_axis, samples)

    @functools.wraps(f)
    def estimate(key: Any, *args: Any, **kwargs: Any) -> Any:
        backend, args, x, sample = _inputs(api, args, argnum, batch_axis)
        directions = backend.random_directions(key, (samples,) + tuple(sample), x, "gaussian", api)
        terms = directional(backend.name, f, args, kwargs, argnum, batch_axis, directions, 4,
                             per_sample=False)
        return _mean(terms / 3, samples, with_stderr)

    estimate.__derivs_estimator__ = api
    return estimate


def hutchinson_diffusion(f: Callable, sigma: Any, drift: Any = None, reaction: Any = None,
                         samples: int = 64, argnum: int = 0, *, batch_axis: int | None = None,
                         distribution: str = "rademacher", with_stderr: bool = False
                         ) -> Callable:
    """An unbiased random estimate of :func:`derivs.diffusion_operator`'s
    ``tr(sigma sigma^T Hess f) + drift . grad f + reaction * f``: the trace over
    ``samples`` random combinations ``sigma z`` of ``sigma``'s ``r`` columns
    (``E[z z^T] = I``), for when ``r`` is large; the drift and reaction terms are
    exact. Arguments as for :func:`derivs.diffusion_operator`; ``key`` as for
    :func:`hutchinson_laplacian`.

    With ``H' = sigma^T H sigma`` (``r x r``), the variance of one term is
    ``2 * sum_{i != j} H'_ij^2`` for Rademacher ``z`` and ``2 * ||H'||_F^2`` for
    Gaussian ``z``; ``with_stderr=True`` also returns the estimated standard error.

    Example (``f = x0 x1``, ``sigma = I``: ``tr H = 0``, every Rademacher term is
    ``2 z0 z1``, so the estimate varies around 0):

      >>> import jax, jax.numpy as jnp, derivs
      >>> est = derivs.hutchinson_diffusion(lambda x: x[0] * x[1], jnp.eye(2), samples=4000)
      >>> bool(abs(est(jax.random.key(0), jnp.ones(2))) < 0.2)
      True
    """
    from ._collapsed import diffusion_terms

    api = "derivs.hutchinson_diffusion"
    _check(api, f, argnum, batch_axis, samples)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{api}: distribution={distribution!r} is not one of "
                         f"{DISTRIBUTIONS}.")
    if sigma is None:
        raise TypeError(f"{api}: sigma is required (a function of x returning x.shape + "
                        "(r,), or a constant array sample_shape + (r,)).")

    @functools.wraps(f)
    def estimate(key: Any, *args: Any, **kwargs: Any) -> Any:
        backend, args, x, sample = _inputs(api, args, argnum, batch_axis)
        call = diffusion_terms(api, backend, x, sample, batch_axis, sigma, drift, reaction)
        cols = call.seeds  # (r, *x.shape) per sample, or (r, *sample)
        z = backend.random_directions(key, (samples, cols.shape[0]), x, distribution, api)
        directions = backend.tensordot(z, cols)
        terms = directional(backend.name, f, args, kwargs, argnum, batch_axis, directions, 2,
                             per_sample=call.per_sample)
        out = _mean(terms, samples, with_stderr)
        exact = _exact_terms(backend, f, args, kwargs, argnum, call)
        if exact is None:
            return out
        return (out[0] + exact, out[1]) if with_stderr else out + exact

    estimate.__derivs_estimator__ = api
    return estimate


def _check(api, f, argnum, batch_axis, samples) -> None:
    check_operator_arguments(api, f, argnum, batch_axis)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{api}: samples must be a positive int, got {samples!r}.")


def _inputs(api, args, argnum, batch_axis):
    """``(backend, args, x, sample shape)`` as for the exact operators, with the
    estimators' own hint for a missing argument (the key comes first)."""
    if argnum >= len(args):
        raise ValueError(f"{api}: argnum={argnum} but the estimator was called with "
                         f"{len(args)} argument(s) after the key; call it as "
                         "estimate(key, *args).")
    return operator_input(api, args, argnum, batch_axis, False)


def _mean(terms, samples: int, with_stderr: bool):
    mean = terms.mean(0)
    if not with_stderr:
        return mean
    spread = ((terms - mean) ** 2).sum(0) / max(samples - 1, 1)
    return mean, (spread / samples) ** 0.5


def _exact_terms(backend, f, args, kwargs, argnum, call):
    """``Df[drift] + reaction * f`` of a diffusion call (None when both are absent)."""
    out = None
    x = args[argnum]

    def at(z):
        return f(*args[:argnum], z, *args[argnum + 1:], **kwargs)

    if call.drift is not None:
        out = backend.jvp_tangent(at, x, call.drift)
    if call.value is not None:
        v = call.value(at(x))
        out = v if out is None else out + v
    return out
