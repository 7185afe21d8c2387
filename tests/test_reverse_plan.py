"""The reverse plan (NOTE [reverse plans]): first-order request sets of a scalar
output are one gradient. Values against dense ``jax.jacfwd`` / ``torch.func.jacfwd``
(forward mode, independent of the gradient), the planner's choice and its limits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

from ._frameworks import FRAMEWORKS, array, to_numpy

W = np.random.default_rng(11).normal(size=(6, 4)) / 2
X = np.linspace(-0.7, 0.9, 6)


def _f(fw):
    if fw == "jax":
        M = jnp.asarray(W)
        return lambda x, y: jnp.sum(jnp.tanh(x @ M) ** 2) * jnp.exp(y[0] * x[1])
    M = torch.as_tensor(W)
    return lambda x, y: (torch.tanh(x @ M) ** 2).sum() * torch.exp(y[0] * x[1])


def _dense_gradient(fw, x, y):
    if fw == "jax":
        return [np.asarray(jax.jacfwd(_f(fw), argnums=a)(x, y)) for a in (0, 1)]
    return [to_numpy(g) for g in torch.func.jacfwd(_f(fw), argnums=(0, 1))(x, y)]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_many_first_order_partials_are_one_gradient(fw):
    x, y = array(fw, X), array(fw, [0.4, -1.0])
    requests = [(), *[((0, i),) for i in range(6)], ((1, 0),)]
    t = derivs.partials(_f(fw), requests, argnums=(0, 1))
    e = derivs.explain(t, x, y)
    assert e.strategy == "reverse" and e.estimated_cost == 3.0 and "one gradient" in str(e)
    got = t(x, y)
    gx, gy = _dense_gradient(fw, x, y)
    np.testing.assert_allclose([to_numpy(got[((0, i),)]) for i in range(6)], gx, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(got[((1, 0),)]), gy[0], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(got[()]), to_numpy(_f(fw)(x, y)), rtol=1e-14)


def test_jax_reverse_plan_under_jit_and_grad():
    f = lambda x: jnp.sum(jnp.sin(x) * x[::-1]) ** 2  # noqa: E731
    g = derivs.partials(f, [0, 1, 2, 3])
    x = jnp.asarray([0.1, 0.5, -0.3, 0.8])
    assert derivs.explain(g, x).strategy == "reverse"
    stacked = lambda z: jnp.stack([v for v in g(z).values()])  # noqa: E731
    np.testing.assert_allclose(jax.jit(stacked)(x), jax.jacfwd(f)(x), rtol=1e-12)
    # differentiable again: the Hessian, against forward over forward
    np.testing.assert_allclose(jax.jacrev(stacked)(x), jax.jacfwd(jax.jacfwd(f))(x),
                               rtol=1e-10)


def test_torch_reverse_plan_is_the_partial_and_trainable():
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    f = lambda x, y, w: torch.tanh(x @ w) * y.sum()  # noqa: E731
    y = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    x = 2 * y  # computed from y: the partial holds y fixed
    d = derivs.partials(f, [0, 1, 2])(x, y, w)
    assert derivs.explain(derivs.partials(f, [0, 1, 2]), x, y, w).strategy == "reverse"
    expected = (1 - torch.tanh(x @ w) ** 2) * w * y.sum()
    torch.testing.assert_close(torch.stack([d[i] for i in range(3)]), expected)
    assert w.grad is None and y.grad is None
    sum(v for v in d.values()).backward()  # gradients reach the parameters
    w2 = w.detach().clone().requires_grad_(True)
    ((1 - torch.tanh(x.detach() @ w2) ** 2) * w2 * y.sum().detach()).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_where_reverse_does_not_apply_jets_serve(fw):
    f = _f(fw)
    x, y = array(fw, X), array(fw, [0.4, -1.0])
    cases = {  # request list, kwargs -> why not reverse
        "one partial": ([(0,)], {}),
        "second order": ([(0,), (1,), (2,), (0, 1)], {}),
        "vector output": ([(0,), (1,), (2,)], {"vector": True}),
    }
    for name, (requests, opts) in cases.items():
        g = (lambda x, y: x * y[0]) if opts.get("vector") else f
        e = derivs.explain(derivs.partials(g, requests), x, y)
        assert e.strategy != "reverse", name
    xb = array(fw, np.stack([X, X + 1]))
    batched = derivs.partials(lambda x: (x ** 3).sum(-1), [(0,), (1,), (2,)], batch_axis=0)
    assert derivs.explain(batched, xb).strategy != "reverse"


def test_strategy_reverse_says_why_it_cannot_serve():
    f = lambda x: jnp.sin(x)  # noqa: E731
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="output has 3 elements"):
        derivs.partials(f, [0, 1], strategy="reverse")(x)
    with pytest.raises(ValueError, match="first-order partials"):
        derivs.partial(jnp.sum, (0, 1), strategy="reverse")(x)
    with pytest.raises(ValueError, match="batch_axis"):
        derivs.partial(jnp.sum, 0, strategy="reverse", batch_axis=0)(jnp.ones((2, 3)))
    assert float(derivs.partial(lambda x: jnp.sum(x ** 2), 1, strategy="reverse")(x)) == 2.0
