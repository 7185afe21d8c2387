"""derivs against naive dense nested Jacobians at small sizes (the n^k tensor the
library exists to avoid, affordable here), including array-valued outputs,
2-d inputs, float32 and float64."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

from ._frameworks import FRAMEWORKS, array, to_numpy


def f_jax(x):  # (2, 3) -> (2,)
    return jnp.stack([jnp.sum(jnp.sin(x) * x**2) * jnp.exp(jnp.mean(x)),
                      jnp.prod(jnp.tanh(x) + 2.0)])


def f_torch(x):
    return torch.stack([torch.sum(torch.sin(x) * x**2) * torch.exp(torch.mean(x)),
                        torch.prod(torch.tanh(x) + 2.0)])


def dense_oracle(order: int, x64: np.ndarray) -> np.ndarray:
    """out_shape + (n,) * order, by nesting jax.jacfwd in float64."""
    d = lambda v: f_jax(v.reshape(2, 3))
    for _ in range(order):
        d = jax.jacfwd(d)
    return np.asarray(d(jnp.asarray(x64.reshape(-1))))


X = np.array([[0.3, -0.7, 1.1], [0.5, 0.2, -0.4]])
REQUESTS = [mi for k in (1, 2, 3) for mi in itertools.combinations_with_replacement(range(6), k)]


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_all_partials_to_order_three(fw, dtype, tol):
    f = f_jax if fw == "jax" else f_torch
    out = derivs.partials(f, REQUESTS)(array(fw, X, dtype))
    dense = {k: dense_oracle(k, X) for k in (1, 2, 3)}
    for mi in REQUESTS:
        got = to_numpy(out[mi])
        assert got.shape == (2,) and str(got.dtype) == dtype
        expected = dense[len(mi)][(slice(None),) + mi]
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_axis_equals_vmap_of_unbatched(fw):
    """batch_axis seeds every sample at once; for independent samples this equals
    vmapping the unbatched partial (and the dense per-sample oracle)."""
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(5, 2, 3))
    g = (lambda v: jax.vmap(f_jax)(v)) if fw == "jax" else (lambda v: torch.func.vmap(f_torch)(v))
    for mi in [(1,), (0, 4), (2, 2, 5)]:
        batched = to_numpy(derivs.partial(g, mi, batch_axis=0)(array(fw, xb)))
        per_sample = [dense_oracle(len(mi), s)[(slice(None),) + mi] for s in xb]
        np.testing.assert_allclose(batched, np.stack(per_sample), rtol=1e-12, atol=1e-12)
