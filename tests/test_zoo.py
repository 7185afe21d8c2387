"""The architecture zoo (``benchmarks/zoo_models.py``): every member's Laplacian,
Hessian diagonal and Bi-Laplacian, in both frameworks, against the framework's
own nested reverse-over-forward derivatives (an independent oracle), at float64.
PyTorch runs each with grad enabled and under ``torch.no_grad()``, at D = 5
(the stacked family program) and D = 3 (unrolled coordinate groups)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs
from benchmarks import zoo_models as Z

WIDTH, BATCH = 8, 3
# Tolerances relative to the largest entry: attention's softmax cancels (entries of
# 1e-3 beside 40 differ by 1e-8 between two exact methods at float64)
RTOL = {"transformer": 1e-7}


def _close(got, want, name, rtol=None):
    got, want = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t)
                 for t in (got, want))
    rtol = rtol or RTOL.get(name, 1e-9)
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=rtol * max(1.0, float(np.abs(want).max())))


class _ElementaryLayerNorm(torch.overrides.TorchFunctionMode):
    """PyTorch's forward-mode derivative of layer_norm is wrong when nested (order
    >= 2 through jacfwd): the oracle runs layer norm in elementary ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.layer_norm:
            x, shape = args[0], args[1]
            weight, bias = (list(args[2:4]) + [None, None])[:2]
            weight, bias = kwargs.get("weight", weight), kwargs.get("bias", bias)
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            dims = tuple(range(-len(shape), 0))
            centred = x - x.mean(dims, keepdim=True)
            out = centred / torch.sqrt((centred ** 2).mean(dims, keepdim=True) + eps)
            return out * weight + bias if weight is not None else out
        return func(*args, **kwargs)


@contextlib.contextmanager
def _math_attention():
    """The oracle's attention in its differentiable math form (the fused kernels
    have no forward-mode derivative), layer norm in elementary ops."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), _ElementaryLayerNorm():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _torch_oracle_model(name, D):
    """The member for the oracle: activations whose PyTorch derivatives are wrong or
    missing (CELU's float32 alpha; SiLU and Mish, whose nested AD raises) in
    elementary ops (``zoo_models.torch_member(elementary=True)``)."""
    return Z.torch_member(name, D, WIDTH, dtype=torch.float64, elementary=True)


def _x(D, seed=0):
    return np.random.default_rng(seed).normal(size=(BATCH, D))


def _torch_hessians(name, D):
    model = _torch_oracle_model(name, D)
    x = torch.as_tensor(_x(D))
    with _math_attention():
        return torch.func.vmap(torch.func.hessian(lambda z: model(z[None])[0]))(x)


def _jax_hessians(name, D):
    u = Z.jax_member(name, D, WIDTH, dtype=jnp.float64)
    return jax.jit(jax.vmap(jax.hessian(lambda z: u(z[None])[0])))(jnp.asarray(_x(D)))


def _cases(grads):
    """Every member at D = 5 (the stacked family); at D = 3 (unrolled coordinate
    groups) a spread of them by default and all under slow."""
    out = []
    for i, name in enumerate(Z.MEMBERS):
        for grad in grads:
            out.append(pytest.param(name, 5, grad))
            marks = () if i % 3 == 0 and grad is grads[0] else (pytest.mark.slow,)
            out.append(pytest.param(name, 3, grad, marks=marks))
    return out


@pytest.mark.parametrize("name, D, grad", _cases((True, False)))
def test_torch_laplacian_and_diagonal(name, D, grad):
    model = Z.torch_member(name, D, WIDTH, dtype=torch.float64)
    x = torch.as_tensor(_x(D))
    H = _torch_hessians(name, D)
    with torch.set_grad_enabled(grad):
        lap = derivs.laplacian(model, batch_axis=0)(x)
        diag = derivs.hessian_diagonal(model, batch_axis=0)(x)
    _close(lap.detach(), H.diagonal(dim1=-2, dim2=-1).sum(-1), name)
    _close(diag.detach(), H.diagonal(dim1=-2, dim2=-1), name)
    assert derivs.explain(derivs.laplacian(model, batch_axis=0), x).strategy == "traced-jet"


@pytest.mark.parametrize("name, D, grad", _cases((True,)))
def test_jax_laplacian_and_diagonal(name, D, grad):
    u = Z.jax_member(name, D, WIDTH, dtype=jnp.float64)
    x = jnp.asarray(_x(D))
    H = _jax_hessians(name, D)
    lap = jax.jit(derivs.laplacian(u, batch_axis=0))(x)
    diag = jax.jit(derivs.hessian_diagonal(u, batch_axis=0))(x)
    _close(lap, jnp.trace(H, axis1=-2, axis2=-1), name)
    _close(diag, jnp.diagonal(H, axis1=-2, axis2=-1), name)


BILAPLACIAN_D = 3
# fourth-order nested oracles are slow: a spread subset by default, all under slow
_DEFAULT_FOURTH = ("mlp-gelu", "mlp-softplus", "mlp-logsigmoid", "modified-mlp", "transformer")


def _fourth_order(frameworks_slow: tuple = ()):
    return [n if n in _DEFAULT_FOURTH and n not in frameworks_slow
            else pytest.param(n, marks=pytest.mark.slow) for n in Z.MEMBERS]


@pytest.mark.parametrize("name", _fourth_order())
def test_torch_bilaplacian(name):
    D = BILAPLACIAN_D
    model = Z.torch_member(name, D, WIDTH, dtype=torch.float64)
    oracle = _torch_oracle_model(name, D)
    x = torch.as_tensor(_x(D, 1))[:2]

    def lap(z):
        return torch.func.hessian(lambda v: oracle(v[None])[0])(z).diagonal().sum()

    with _math_attention():
        want = torch.func.vmap(lambda z: torch.func.hessian(lap)(z).diagonal().sum())(x)
    with torch.no_grad():
        got = derivs.bilaplacian(model, batch_axis=0)(x)
    _close(got, want, name, RTOL.get(name, 1e-8))


@pytest.mark.parametrize("name", _fourth_order(frameworks_slow=("transformer",)))
def test_jax_bilaplacian(name):
    D = BILAPLACIAN_D
    u = Z.jax_member(name, D, WIDTH, dtype=jnp.float64)
    x = jnp.asarray(_x(D, 1))[:2]

    def lap(z):
        return jnp.trace(jax.hessian(lambda v: u(v[None])[0])(z))

    want = jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(lap)(z))))(x)
    got = jax.jit(derivs.bilaplacian(u, batch_axis=0))(x)
    _close(got, want, name, RTOL.get(name, 1e-8))
