"""The high-dimensional PDE example (examples/high_dimensional_pde.py): its closed-
form source equals the exact solution's residual by a dense ``jax.hessian``
Laplacian (the oracle), in both frameworks; a short training run lowers the loss
in both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "high_dimensional_pde", Path(__file__).parents[1] / "examples" / "high_dimensional_pde.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


@pytest.mark.parametrize("fw", ["jax", "torch"])
def test_closed_form_source_is_the_residual_of_the_exact_solution(fw):
    rng = np.random.default_rng(0)
    D = 7
    c, x = rng.normal(size=D - 1), example.ball(rng, 5, D)
    u = example.exact(jnp, jnp.asarray(c))
    lap = jax.vmap(lambda z: jnp.trace(jax.hessian(u)(z)))(jnp.asarray(x))
    want = np.asarray(lap + u(jnp.asarray(x)) - u(jnp.asarray(x)) ** 3)
    if fw == "jax":
        got = example.source(jnp, jnp.asarray(c))(jnp.asarray(x))
    else:
        got = example.source(torch, torch.as_tensor(c))(torch.as_tensor(x))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)


def test_points_lie_in_the_ball_and_on_the_sphere():
    rng = np.random.default_rng(1)
    inside, sphere = example.ball(rng, 200, 50), example.ball(rng, 200, 50, surface=True)
    assert np.all(np.linalg.norm(inside, axis=1) <= 1)
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1, rtol=1e-12)


@pytest.mark.parametrize("train", ["train_jax", "train_torch"])
def test_a_short_run_lowers_the_loss(train):
    losses, per_step, err = getattr(example, train)(200, 60)
    assert np.isfinite(losses).all() and np.isfinite(err)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
