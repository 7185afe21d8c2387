"""Stochastic estimators, used only when asked for by name.

Every other operator in derivs is exact. ``hutchinson_laplacian``,
``hutchinson_bilaplacian`` and ``hutchinson_diffusion`` trade exactness for a cost
that does not grow with the dimension: ``S`` directional derivatives instead of
``D`` (``D^2`` for the Bi-Laplacian, ``r`` for a diffusion of rank ``r``). None is
ever chosen automatically.

NOTE [collapsed estimators]: an estimate ``mean_s D^K f[v_s]`` is a collapsed
operator over the ``S`` random directions (terms ``(1/S, (s,) * K)``; for a
diffusion, ``sigma = V / sqrt(S)``), so it runs on the same machine as the exact
operators (``_collapsed.Machine``): one Taylor pass with the directions stacked,
each intermediate carrying its value, ``K - 1`` coefficients per direction and one
summed top coefficient, instead of ``K`` nested JVPs per direction. With
``with_stderr`` the samples themselves are needed: the pass reads each direction's
top coefficient off the outputs (``Call.read``: ``K`` coefficients per direction).
The batch axis is proven as for the exact operators.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _batch, _conventions, _probes, _report, backends
from .backends import _common
from ._collapsed import Call, Machine
from ._validation import check_operator_arguments, check_torch_compile, operator_input

DISTRIBUTIONS = ("rademacher", "gaussian", "coordinates")


@_conventions.transform("derivs.hutchinson_laplacian", leading=1)
def hutchinson_laplacian(f: Callable, samples: int = 64, argnums: int = 0, *,
                         batch_axis: int | None = None, batch_size: int | None = None,
                         distribution: str = "rademacher",
                         with_stderr: bool = False, torch_compile: bool = False,
                         has_aux: bool = False, argnum: int | None = None) -> Callable:
    """An unbiased random estimate of the Laplacian ``tr(H)`` of ``f`` in argument
    ``argnums`` (Hutchinson's estimator), for when ``D`` is too large for the exact
    :func:`derivs.laplacian`.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    Returns ``estimate(key, *args, **kwargs)``. ``key`` is a ``jax.random`` key
    (JAX), or an int seed or ``torch.Generator`` (PyTorch). The estimate is
    ``mean_s v_s^T H v_s`` over ``samples`` random directions ``v_s``; each term is
    one second directional derivative (forward over forward mode, vmapped), so
    the cost is about ``4 * samples`` evaluations of f whatever ``D`` is. Every
    output of ``f`` gets its own estimate, with the same directions. With
    ``batch_axis``, each sample along that axis gets its own estimate, also with
    the same directions; ``batch_size`` runs that many samples at a time (memory
    for ``batch_size`` samples, the same estimate), on every estimator.

    Variance of one term ``v^T H v`` (divide by ``samples`` for the estimate):

    * ``"rademacher"`` (entries +-1, the default): ``2 * sum_{i != j} H_ij^2``.
      The diagonal contributes nothing, so a diagonal Hessian is estimated
      exactly, and the variance is the lowest of all distributions with
      independent entries.
    * ``"gaussian"`` (standard normal entries): ``2 * ||H||_F^2``.
    * ``"coordinates"``: ``samples`` of the ``D`` coordinates drawn without
      replacement, each term ``D * H_ii`` (STDE's and SDGD's sampling; NOTE
      [coordinate sampling]). ``samples == D`` is the exact Laplacian. The
      variance of the estimate is ``D^2 var_i(H_ii) / samples * (D - samples) /
      (D - 1)``: zero for a constant diagonal, large for one concentrated on few
      coordinates. The seeds stay one-hot, so a dense first layer reads its
      weight's rows at the drawn coordinates (NOTE [picked seeds]): the cost per
      sample does not grow with ``D``.

    ``with_stderr=True`` also returns the estimated standard error of the
    estimate, ``std(v_s^T H v_s) / sqrt(samples)`` (times ``sqrt((D - samples) /
    D)`` for coordinates); it needs ``samples >= 2``. The estimate is one collapsed
    Taylor pass over the directions (NOTE [collapsed estimators]);
    ``torch_compile=True`` (PyTorch) runs it under ``torch.compile``, as for the
    exact operators.

    Example:

      >>> import jax, jax.numpy as jnp, derivs
      >>> f = lambda x: jnp.sum(x ** 3)          # diagonal Hessian: exact
      >>> est = derivs.hutchinson_laplacian(f, samples=4)
      >>> est(jax.random.key(0), jnp.array([1.0, 2.0, 3.0], dtype=jnp.float32))
      Array(36., dtype=float32)
      >>> g = lambda x: jnp.sum(x ** 2)          # H_ii = 2 everywhere: any draw is exact
      >>> est = derivs.hutchinson_laplacian(g, samples=2, distribution="coordinates")
      >>> est(jax.random.key(0), jnp.ones(1000, dtype=jnp.float32))
      Array(2000., dtype=float32)
    """
    api = "derivs.hutchinson_laplacian"
    _check(api, f, argnums, batch_axis, samples, batch_size, with_stderr)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{api}: distribution={distribution!r} is not one of "
                         f"{DISTRIBUTIONS}.")

    runner = _Runner(f, argnums, batch_axis, api, samples, 2, 1.0, with_stderr,
                     torch_compile, batch_size)
    if distribution == "coordinates":  # NOTE [coordinate sampling]
        def build(picks, backend, x, sample, axis):
            n = _common.numel(tuple(sample))
            scale = math.sqrt(n)
            rows = backend.coordinate_rows(picks, n, x) * scale
            seeds = rows.reshape((samples,) + tuple(sample))
            return runner.call(seeds, picks=picks, pick_scale=scale), None

        return runner.estimator(_coordinate_draw(runner, api, samples), build)

    def draw(key, backend, x, sample):
        # v^T H v = d^2/dt^2 f(x + t v) at t = 0; the same directions in every sample
        return backend.random_directions(key, (samples,) + tuple(sample), x, distribution, api)

    return runner.estimator(draw, lambda directions, *_: (runner.call(directions), None))


@_conventions.transform("derivs.hutchinson_bilaplacian", leading=1)
def hutchinson_bilaplacian(f: Callable, samples: int = 64, argnums: int = 0, *,
                           batch_axis: int | None = None, batch_size: int | None = None,
                           distribution: str = "gaussian", with_stderr: bool = False,
                           torch_compile: bool = False, has_aux: bool = False,
                           argnum: int | None = None) -> Callable:
    """An unbiased random estimate of the Bi-Laplacian ``sum_ij d^4 f / dx_i^2 dx_j^2``
    of ``f`` in argument ``argnums``, for when ``D^2`` directions of the exact
    :func:`derivs.bilaplacian` are too many.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    Returns ``estimate(key, *args, **kwargs)`` (``key`` as for
    :func:`hutchinson_laplacian`). For standard normal ``v``, ``E[v_a v_b v_c v_d]
    = d_ab d_cd + d_ac d_bd + d_ad d_bc``, so ``E[D^4 f[v]] = 3 * Delta^2 f``: the
    estimate is ``mean_s D^4 f[v_s] / 3`` over ``samples`` Gaussian directions,
    four nested JVPs each (Rademacher directions would be biased: their fourth
    moments lose ``2 sum_i d^4 f / dx_i^4``). The variance of one term is
    ``(E[D^4 f[v]^2] - 9 (Delta^2 f)^2) / 9``, a sum over the eighth moments of
    ``v``; for ``f = |x|^4`` it is ``64 (D (D+2) (D+4) (D+6) - (D (D+2))^2)``.
    ``with_stderr=True`` also returns the estimated standard error.

    ``distribution="coordinates"`` draws ``samples >= 2`` of the ``D``
    coordinates without replacement and returns ``(D / S) sum_{i in I} f_iiii +
    D (D - 1) / (S (S - 1)) sum_{i != j in I} f_iijj``: each diagonal term is drawn
    with probability ``S / D`` and each pair with ``S (S - 1) / (D (D - 1))``, so
    the estimate is unbiased, and exact at ``samples == D`` (NOTE [coordinate
    sampling]). It costs the ``S^2`` pair directions of :func:`derivs.bilaplacian`
    on ``S`` coordinates. Its terms are pairs, not independent draws, so it has no
    ``with_stderr``: take the spread over several keys.

    Example (``f = |x|^4``: ``Delta^2 f = 8 D (D + 2) = 120`` at ``D = 3``):

      >>> import torch, derivs
      >>> est = derivs.hutchinson_bilaplacian(lambda x: (x ** 2).sum() ** 2, samples=20000)
      >>> value = est(0, torch.zeros(3, dtype=torch.float64))
      >>> bool(abs(value - 120) < 5)
      True
    """
    api = "derivs.hutchinson_bilaplacian"
    _check(api, f, argnums, batch_axis, samples, batch_size, with_stderr)
    if distribution not in ("gaussian", "coordinates"):
        raise ValueError(f"{api}: distribution={distribution!r} is not 'gaussian' or "
                         "'coordinates' (Rademacher directions would be biased: their "
                         "fourth moments lose 2 sum_i d^4 f / dx_i^4).")

    runner = _Runner(f, argnums, batch_axis, api, samples, 4, 1.0 / 3.0, with_stderr,
                     torch_compile, batch_size)
    if distribution == "coordinates":  # NOTE [coordinate sampling]
        if with_stderr:
            raise ValueError(
                f"{api}: distribution='coordinates' sums over pairs of the drawn "
                "coordinates, not independent terms, so it has no with_stderr; pass "
                "with_stderr=False and take the spread over several keys.")
        def build(picks, backend, x, sample, axis):
            n = _common.numel(tuple(sample))
            rows, terms = _pair_terms(samples, n)
            units = backend.coordinate_rows(picks, n, x)  # (S, n)
            seeds = backend.tensordot(backend.as_array(rows, x), units)
            return Call(seeds.reshape((len(rows),) + tuple(sample)), terms), None

        return runner.estimator(_coordinate_draw(runner, api, samples, least=2), build)

    def draw(key, backend, x, sample):
        return backend.random_directions(key, (samples,) + tuple(sample), x, "gaussian", api)

    return runner.estimator(draw, lambda directions, *_: (runner.call(directions), None))


@_conventions.transform("derivs.hutchinson_diffusion", leading=1)
def hutchinson_diffusion(f: Callable, sigma: Any, drift: Any = None, reaction: Any = None,
                         samples: int = 64, argnums: int = 0, *, batch_axis: int | None = None,
                         batch_size: int | None = None, distribution: str = "rademacher",
                         with_stderr: bool = False,
                         torch_compile: bool = False, has_aux: bool = False,
                         argnum: int | None = None) -> Callable:
    """An unbiased random estimate of :func:`derivs.diffusion_operator`'s
    ``tr(sigma sigma^T Hess f) + drift . grad f + reaction * f``: the trace over
    ``samples`` random combinations ``sigma z`` of ``sigma``'s ``r`` columns
    (``E[z z^T] = I``), for when ``r`` is large; the drift and reaction terms are
    exact. Arguments as for :func:`derivs.diffusion_operator`; ``key`` as for
    :func:`hutchinson_laplacian`.

    ``argnums`` is one argument's index (``argnum``, the older spelling, is an
    alias). ``has_aux=True``: f returns ``(output, aux)``; the operator of
    ``output`` comes back as ``(result, aux)`` (NOTE [aux by a second call]).

    With ``H' = sigma^T H sigma`` (``r x r``), the variance of one term is
    ``2 * sum_{i != j} H'_ij^2`` for Rademacher ``z`` and ``2 * ||H'||_F^2`` for
    Gaussian ``z``; ``"coordinates"`` draws ``samples`` of the ``r`` columns of
    sigma without replacement, each term ``r * H'_kk`` (exact at ``samples == r``;
    NOTE [coordinate sampling]). ``with_stderr=True`` also returns the estimated
    standard error.

    Example (``f = x0 x1``, ``sigma = I``: ``tr H = 0``, every Rademacher term is
    ``2 z0 z1``, so the estimate varies around 0):

      >>> import jax, jax.numpy as jnp, derivs
      >>> est = derivs.hutchinson_diffusion(lambda x: x[0] * x[1], jnp.eye(2), samples=4000)
      >>> bool(abs(est(jax.random.key(0), jnp.ones(2))) < 0.2)
      True
    """
    from ._collapsed import diffusion_terms

    api = "derivs.hutchinson_diffusion"
    _check(api, f, argnums, batch_axis, samples, batch_size, with_stderr)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{api}: distribution={distribution!r} is not one of "
                         f"{DISTRIBUTIONS}.")
    if sigma is None:
        raise TypeError(f"{api}: sigma is required (a function of x returning x.shape + "
                        "(r,), or a constant array sample_shape + (r,)).")

    runner = _Runner(f, argnums, batch_axis, api, samples, 2, 1.0, with_stderr,
                     torch_compile, batch_size)
    runner.whole_batch = any(callable(v) for v in (sigma, drift, reaction))
    if distribution == "coordinates":  # the rank: the draws are (samples, rank)
        runner.population = lambda sample, draws: draws.shape[1]

    def draw(key, backend, x, sample):
        rank = diffusion_terms(api, backend, x, sample, batch_axis, sigma, None,
                               None).seeds.shape[0]
        if distribution == "coordinates":  # NOTE [coordinate sampling]: columns of sigma
            picks = _picks(api, backend, key, samples, rank, x, "columns of sigma")
            return backend.coordinate_rows(picks, rank, x) * math.sqrt(rank)
        return backend.random_directions(key, (samples, rank), x, distribution, api)

    def build(z, backend, x, sample, axis):
        call = diffusion_terms(api, backend, x, sample, axis, sigma, drift, reaction)
        cols = call.seeds  # (r, *x.shape) per sample, or (r, *sample)
        return runner.call(backend.tensordot(z, cols), call), call

    return runner.estimator(draw, build)


def _check(api, f, argnum, batch_axis, samples, batch_size, with_stderr=False) -> None:
    check_operator_arguments(api, f, argnum, batch_axis)
    _batch.check_batch_size(api, batch_size, batch_axis)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{api}: samples must be a positive int, got {samples!r}.")
    if with_stderr and samples < 2:
        raise ValueError(f"{api}: with_stderr=True estimates the spread of the samples, "
                         "which takes samples >= 2; pass samples=2 or more, or "
                         "with_stderr=False.")


# NOTE [coordinate sampling]: ``distribution="coordinates"`` draws ``S`` of the ``n``
# coordinates (a diffusion: columns of sigma) uniformly without replacement, and
# each term is ``n * d^2 f / dx_i^2`` along the seed ``sqrt(n) e_i``. Each
# coordinate is drawn with probability ``S / n``, so the mean over the draw,
# ``(n / S) sum_{i in I} H_ii``, is unbiased, and with ``S == n`` it is the exact
# Laplacian. Its variance is that of a mean without replacement, ``sigma^2 / S *
# (n - S) / (n - 1)`` with ``sigma^2`` the terms' population variance; the drawn
# terms' sample variance ``s^2`` (ddof 1) estimates ``sigma^2 n / (n - 1)`` without
# bias, so the reported standard error is ``s / sqrt(S) * sqrt((n - S) / n)``
# (zero at ``S == n``; its square is unbiased for the variance). This is the
# sampling of STDE (Shi et al., NeurIPS 2024) and of SDGD's dimension sampling,
# with the seeds kept one-hot: the Call says which coordinates (``Call.picks``,
# NOTE [picked seeds]), so an engine may read the first layer's weight columns at
# them instead of multiplying ``S x n`` seeds into it.
def _coordinate_draw(runner: "_Runner", api: str, samples: int, least: int = 1):
    """``draw(key, backend, x, sample)`` of ``samples`` coordinates of one sample
    (at least ``least`` where the sample has more than one), with the runner told
    its population."""
    runner.population = lambda sample, draws: _common.numel(sample)

    def draw(key, backend, x, sample):
        n = _common.numel(tuple(sample))
        if n > 1 and samples < least:
            raise ValueError(f"{api}: distribution='coordinates' needs samples >= {least} "
                             "to reach the mixed terms d^4 f / dx_i^2 dx_j^2.")
        return _picks(api, backend, key, samples, n, x, "coordinates")

    return draw


def _picks(api, backend, key, samples: int, n: int, x, what: str):
    if samples > n:
        raise ValueError(
            f"{api}: distribution='coordinates' draws samples={samples} distinct {what}, "
            f"but there are only {n}; pass samples <= {n} (samples == {n} is exact).")
    return backend.random_coordinates(key, samples, n, x, api)


@functools.lru_cache(maxsize=16)
def _pair_terms(samples: int, n: int) -> tuple:
    """The Bi-Laplacian coordinate estimator on ``samples`` drawn coordinates as
    pair directions (NOTE [pair interpolation]) in the drawn coordinates' space:
    ``(rows (M, samples), terms)``; the same term tuple for every call (layouts are
    cached by it)."""
    from .core._directions import fourth_order_pairs

    off = 0.0 if samples < 2 else n * (n - 1) / (samples * (samples - 1))
    c = np.full((samples, samples), off)
    np.fill_diagonal(c, n / samples)
    d = fourth_order_pairs(c)
    return d.rows, tuple((float(w), (m,) * 4) for m, w in enumerate(d.weights))


def _inputs(api, args, argnum, batch_axis, torch_compile: bool = False):
    """``(backend, args, x, sample shape)`` as for the exact operators, with the
    estimators' own hint for a missing argument (the key comes first)."""
    if argnum >= len(args):
        raise ValueError(f"{api}: argnum={argnum} but the estimator was called with "
                         f"{len(args)} argument(s) after the key; call it as "
                         "estimate(key, *args).")
    return operator_input(api, args, argnum, batch_axis, torch_compile)


class _Runner:
    """One estimator's machine (NOTE [collapsed estimators]): its Calls, the route
    over the samples, the mean and standard error."""

    def __init__(self, f, argnum, batch_axis, api, samples: int, order: int, scale: float,
                 with_stderr: bool, torch_compile: bool = False, batch_size: int | None = None):
        self.f, self.argnum, self.batch_axis, self.api = f, argnum, batch_axis, api
        self.batch_size = batch_size
        self.samples, self.order, self.with_stderr = samples, order, with_stderr
        self.whole_batch = False  # a diffusion's functions of x take the batch
        # coordinates: (sample shape, draws) -> the population drawn from without
        # replacement
        self.population: Callable | None = None
        check_torch_compile(api, torch_compile)
        self.torch_compile = torch_compile
        self.machine = Machine(f, argnum, batch_axis, api, torch_compile=torch_compile)
        self._per_sample: dict = {}  # (mapped, out axis) -> the per-sample Machine
        # the same term tuple every call: layouts and programs are cached by it
        weight = scale if with_stderr else scale / samples
        self.terms = tuple((weight, (s,) * order) for s in range(samples))

    def call(self, directions, diffusion: Call | None = None, picks=None,
             pick_scale: float = 1.0) -> Call:
        """The Call of one key's directions (a diffusion's drift and reaction are
        exact: in the same pass, or beside it with ``with_stderr``); ``picks``: the
        directions are ``pick_scale`` times these coordinates' unit seeds."""
        per_sample = diffusion is not None and diffusion.per_sample
        if self.with_stderr or diffusion is None:
            return Call(directions, self.terms, per_sample=per_sample, read=self.with_stderr,
                        picks=picks, pick_scale=pick_scale)
        return Call(directions, self.terms, per_sample=per_sample, drift=diffusion.drift,
                    value=diffusion.value)

    def per_sample(self, mapped: tuple, out_axis: int) -> Machine:
        """The machine of f per sample, for the route ``mapped`` (NOTE [per-sample
        route])."""
        key = (mapped, out_axis)
        if key not in self._per_sample:
            g = _batch.sample_function(self.f, mapped, self.batch_axis, out_axis)
            self._per_sample[key] = Machine(g, self.argnum, None, self.api,
                                            torch_compile=self.torch_compile)
        return self._per_sample[key]

    def estimator(self, draw: Callable, build: Callable) -> Callable:
        """``estimate(key, *args, **kwargs)``. ``draw(key, backend, x, sample)`` makes
        the key's random numbers, once per call; ``build(draws, backend, x, sample,
        batch_axis)`` makes the Call at ``x`` (one sample on a per-sample route, where
        a sigma that is a function of x is evaluated per sample) and, for a
        diffusion, the operator's own Call, whose drift and reaction a read pass
        leaves to :func:`_exact_terms`."""
        f, api, argnum, batch_axis = self.f, self.api, self.argnum, self.batch_axis

        def run(key, args, kwargs):
            backend, args, x, sample = _inputs(api, args, argnum, batch_axis,
                                               self.torch_compile)
            draws = draw(key, backend, x, sample)
            call, diffusion = build(draws, backend, x, sample, batch_axis)
            out = self._over_samples(backend, args, kwargs, x, sample, call, draws, build)
            if not call.read:
                return out
            mean, err = _mean(backend, out, self.samples)
            if self.population is not None:  # NOTE [coordinate sampling]
                n = self.population(tuple(sample), draws)
                factor = math.sqrt((n - self.samples) / n)
                err = backend.tree_map(lambda e: e * factor, err)
            exact = None if diffusion is None else _exact_terms(backend, f, args, kwargs,
                                                                argnum, diffusion)
            return (mean if exact is None else backend.tree_add(mean, exact)), err

        def estimate(key: Any, *args: Any, **kwargs: Any) -> Any:
            return backends.checked_call(f, args, api, lambda: run(key, args, kwargs))

        def explain(key: Any, *args: Any, **kwargs: Any):
            backend, args, x, sample = _inputs(api, args, argnum, batch_axis)
            draws = draw(key, backend, x, sample)
            call, _ = build(draws, backend, x, sample, batch_axis)
            what = "random directions" if self.population is None else (
                f"coordinates drawn without replacement from "
                f"{self.population(tuple(sample), draws)} (NOTE [coordinate sampling])")
            how = (": each direction's term read off on its own (with_stderr)" if call.read
                   else ": their mean summed as one top coefficient (NOTE [collapsed "
                   "estimators])")
            if len(call.terms) != self.samples:  # the Bi-Laplacian's pairs
                how = (f": {len(call.terms)} pair directions on them (NOTE [pair "
                       "interpolation]) summed as one top coefficient")
            notes = [f"{self.samples} {what} of order {self.order}" + how]
            if batch_axis is not None:
                notes.append("batch_axis: " + _probes.batch_verdict(
                    self.machine.spec, backend, args, kwargs).reason)
            return self.machine.explain(backend, args, kwargs, call, sample, notes)

        estimate = functools.wraps(f)(estimate)
        estimate.__derivs_estimator__ = api
        _report.attach(estimate, explain)
        return estimate

    def _over_samples(self, backend, args, kwargs, x, sample, call: Call, draws, build):
        """The Call over the batch: one pass when the batch axis is proven (and the
        framework runs operators that way), else the per-sample Call, vmapped."""
        b = self.batch_axis
        if b is None:
            return self.machine.run(backend, args, kwargs, call)
        verdict = _probes.batch_verdict(self.machine.spec, backend, args, kwargs)
        chunk = self.batch_size is not None and x.shape[b] > self.batch_size
        if chunk and self.whole_batch:
            raise ValueError(
                f"{self.api}: batch_size={self.batch_size} would run sigma, drift and "
                "reaction functions on slices of the batch; pass them as arrays, or "
                "batch_size=None.")
        if verdict.proven and not chunk and (not backend.vmap_operators or self.whole_batch):
            return self.machine.run(backend, args, kwargs, call)
        if self.whole_batch:  # sigma, drift, reaction functions take the batch
            raise ValueError(
                f"{self.api}: batch_axis={b}: sigma, drift and reaction functions take the "
                f"argument as passed, batch axis included, but {verdict.reason}: it would "
                "have to run one sample at a time. Pass them as arrays, or take "
                "batch_axis=None and map the estimator yourself.")
        mapped = _batch.sample_route(verdict, backend, self.f, args, kwargs, (self.argnum,), b)
        if mapped is None:
            if verdict.proven and not chunk:
                return self.machine.run(backend, args, kwargs, call)
            raise ValueError(f"{self.api}: " + _batch._cannot_split(b, chunk, verdict))
        inner = self.per_sample(mapped, verdict.out_axis)

        def one(*a):
            mine, _ = build(draws, backend, a[self.argnum], sample, None)
            return inner.run(backend, a, kwargs, mine)

        # read terms come first: each sample's results sit one axis further on
        # (a negative axis counts from the end, which the read axis does not move)
        axis = verdict.out_axis + (1 if call.read and verdict.out_axis >= 0 else 0)
        if chunk:  # the same draws in every slice: the estimate of each sample is unchanged
            def whole(*a):
                mine, _ = build(draws, backend, a[self.argnum], sample, b)
                return self.machine.run(backend, a, kwargs, mine)

            return _batch.chunked(backend, one, whole, args, b, x.shape[b], axis,
                                  self.batch_size, mapped)
        return _batch.vmapped(backend, one, args, b, x.shape[b], axis, mapped)


def _mean(backend, terms, samples: int):
    """The mean of the read terms (stacked first in every output) and its standard
    error, per output of f."""
    mean = backend.tree_map(lambda t: t.mean(0), terms)
    err = backend.tree_map(lambda t, m: (((t - m) ** 2).sum(0) / (samples - 1) / samples)
                           ** 0.5, terms, mean)
    return mean, err


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
