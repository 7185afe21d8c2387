"""The acceptance numbers of docs/problems.md, in both frameworks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

import derivs

EXPECTED = [8.0, 63.0, 168.0, 323.0, 528.0, 783.0]
X = np.arange(1.0, 31.0).reshape(6, 5)


def test_problem2_jax_vmap_and_jit():
    d = derivs.partial(jnp.prod, (0, 2, 4))
    for dtype in (jnp.float32, jnp.float64):
        x = jnp.asarray(X, dtype)
        np.testing.assert_allclose(jax.vmap(d)(x), EXPECTED, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(jax.vmap(d))(x), EXPECTED, rtol=1e-6)


def test_problem2_torch_vmap_and_batch_axis():
    for dtype in (torch.float32, torch.float64):
        x = torch.as_tensor(X, dtype=dtype)
        vm = torch.func.vmap(derivs.partial(torch.prod, (0, 2, 4)))(x)
        ba = derivs.partial(lambda v: v.prod(-1), (0, 2, 4), batch_axis=0)(x)
        np.testing.assert_allclose(vm.numpy(), EXPECTED, rtol=1e-6)
        np.testing.assert_allclose(ba.numpy(), EXPECTED, rtol=1e-6)
        assert vm.dtype == ba.dtype == dtype


def test_problem2_large_n_matches_hand_written():
    """n = 500: no n^3 tensor is built; the result is the product of the other entries."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.9, 1.1, size=(4, 500))
    hand = np.prod(np.delete(x, [0, 2, 4], axis=1), axis=1)
    got = jax.jit(jax.vmap(derivs.partial(jnp.prod, (0, 2, 4))))(jnp.asarray(x))
    np.testing.assert_allclose(got, hand, rtol=1e-12)


def _seed_inputs(seed=0):
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(torch.nn.Linear(1, 100), torch.nn.Linear(100, 1),
                                 torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    ly = torch.nn.Linear(1, 1)
    t = torch.randn(3000, 1)
    x = layers(t)
    return layers, ly, x, ly(x)


def f1(x, y):
    return 100 + (x + 0.01 * y**2) ** 2


def test_problem1_partial_not_total_derivative():
    layers, ly, x, y = _seed_inputs()
    hand = 2 * (x + 0.01 * y**2)
    ours = derivs.partial(f1, 0, batch_axis=0)(x, y)
    assert (ours - hand).abs().max().item() <= 1e-6
    # what users write gets the total derivative df/dx + df/dy * dy/dx instead
    total = torch.autograd.grad(f1(x, y).sum(), [x], create_graph=True)[0]
    expected_gap = (2 * (x + 0.01 * y**2) * 0.02 * y * ly.weight).detach()
    np.testing.assert_allclose((total - hand).detach().numpy(), expected_gap.numpy(), atol=1e-6)
    assert (total - hand).abs().max().item() > 1e-5
    # the per-sample vmap spelling agrees
    vm = torch.func.vmap(derivs.partial(f1, 0))(x, y)
    assert (vm - hand).abs().max().item() <= 1e-6


def test_problem1_gradients_through_partial_equal_hand_written_and_no_grad_written():
    layers, ly, x, y = _seed_inputs()
    params = list(layers.parameters()) + list(ly.parameters())
    ours = derivs.partial(f1, 0, batch_axis=0)(x, y)
    assert all(p.grad is None for p in params)  # derivs itself writes nothing
    g_ours = torch.autograd.grad(ours.square().mean(), params, retain_graph=True)
    g_hand = torch.autograd.grad((2 * (x + 0.01 * y**2)).square().mean(), params)
    for a, b in zip(g_ours, g_hand):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_problem1_training_reaches_small_loss():
    """Adam on the seed model trains through derivs.partial as through the formula."""
    from derivs._seeds import problem1_model, problem1_train

    loss_ours = problem1_train(problem1_model("derivs"), 300)
    loss_hand = problem1_train(problem1_model("hand-written"), 300)
    assert loss_ours < 1e-4
    assert abs(loss_ours - loss_hand) <= 1e-6 + 1e-3 * loss_hand
