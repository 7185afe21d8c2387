"""torch.func and autograd composition of derivs transforms, with closed-form oracles."""

from __future__ import annotations

import pytest
import torch

import derivs


def f(x):
    return torch.sin(x[0]) * x[1] ** 3 * torch.exp(x[2])


def d01(x):
    return torch.cos(x[0]) * 3 * x[1] ** 2 * torch.exp(x[2])


X = torch.tensor([0.4, -1.3, 0.25], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_dtype(dtype):
    x = X.to(dtype)
    out = derivs.partial(f, (0, 1))(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, d01(x))


def test_func_vmap_and_func_grad():
    xs = torch.stack([X, 2 * X, -X])
    torch.testing.assert_close(torch.func.vmap(derivs.partial(f, (0, 1)))(xs),
                               torch.func.vmap(d01)(xs))
    torch.testing.assert_close(torch.func.grad(derivs.partial(f, (0, 1)))(X),
                               torch.func.grad(d01)(X))


def test_autograd_backward_and_double_backward():
    x = X.clone().requires_grad_(True)
    out = derivs.partial(f, (0, 1))(x)
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    xr = X.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(d01(xr), xr, create_graph=True)
    torch.testing.assert_close(g, g_ref)
    # differentiable to any order: a second backward through the first
    h = torch.autograd.grad(g[2], x)[0]
    h_ref = torch.autograd.grad(g_ref[2], xr)[0]
    torch.testing.assert_close(h, h_ref)
    assert x.grad is None  # nothing written to .grad by derivs


def test_module_training_step_through_partial():
    """A partial inside an nn.Module: backward() reaches the parameters with the
    same gradients as the closed form, and only the user's backward writes .grad."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3).double()
    op = derivs.partial(f, (0, 1))

    class M(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.lin, self.fn = lin, fn

        def forward(self, x):
            return torch.func.vmap(self.fn)(self.lin(x))

    xs = torch.randn(8, 3, dtype=torch.float64)
    ours = M(op)(xs).square().mean()
    assert lin.weight.grad is None
    ours.backward()
    g_ours = lin.weight.grad.clone()
    lin.zero_grad()
    M(d01)(xs).square().mean().backward()
    torch.testing.assert_close(g_ours, lin.weight.grad)


def test_partial_of_partial_and_has_aux():
    torch.testing.assert_close(derivs.partial(derivs.partial(f, 0), 1)(X), d01(X))
    g = lambda x: (f(x), {"n": None, "x": x})
    d, aux = derivs.partial(g, (0, 1), has_aux=True)(X)
    torch.testing.assert_close(d, d01(X))
    assert aux["n"] is None and torch.equal(aux["x"], X)


def test_two_arguments_and_pairs():
    g = lambda a, t: (a**2).sum() * torch.sin(t)
    t = torch.tensor(0.7, dtype=torch.float64)
    torch.testing.assert_close(derivs.partial(g, ((0, 2), (1, 0)), argnums=(0, 1))(X, t),
                               2 * X[2] * torch.cos(t))


def test_structural_zero_is_an_ordinary_tensor():
    out = derivs.partial(lambda x: x[0] * 2.0, 1)(X)
    assert not out._is_zerotensor()
    assert out.numpy() == 0.0
    out += 1  # writable


@pytest.mark.parametrize("strategy", [None, "nested-forward"])
def test_python_number_argument_is_differentiated(strategy):
    """A Python float in argnums is an input, not a constant, on every path."""
    f = lambda x, y: x * y * x
    out = derivs.partial(f, 0, strategy=strategy)(2.0, torch.tensor(3.0))
    torch.testing.assert_close(out, torch.tensor(12.0))
