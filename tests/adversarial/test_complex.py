"""Real f with complex intermediates (NOTE [complex intermediates]): power spectra,
complex views, polar forms. The engines' rules are real; such f must run a path
that is exact through complex values (nested forward mode), never the real rules
on complex values (which returned 0, or a complex number, for a real Laplacian)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

X = np.linspace(0.1, 0.9, 6)

TORCH = {
    "fft power": lambda v: (torch.fft.fft(v).abs() ** 2).sum(-1) * v[..., 0],
    "rfft power": lambda v: (torch.fft.rfft(v * v).abs() ** 2)[..., 1],
    "view_as_complex": lambda v: (torch.view_as_complex(
        v.reshape(v.shape[:-1] + (3, 2))) ** 2).real.sum(-1) * v[..., 1],
    "complex abs2": lambda v: (torch.complex(v, v ** 2).abs() ** 2).sum(-1),
    "polar": lambda v: torch.polar(v, v).real.sum(-1),
}
JAX = {
    "fft power": lambda v: jnp.sum(jnp.abs(jnp.fft.fft(v)) ** 2, -1) * v[..., 0],
    "rfft power": lambda v: (jnp.abs(jnp.fft.rfft(v * v)) ** 2)[..., 1],
    "complex abs": lambda v: jnp.sum(jnp.abs(jax.lax.complex(v, v ** 2)), -1),
    "complex exp": lambda v: jnp.sum(jnp.real(jnp.exp(1j * v)) * v, -1),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_torch(name):
    f = TORCH[name]
    x = torch.as_tensor(X)
    H = torch.func.hessian(f)(x)
    torch.testing.assert_close(derivs.partial(f, (0, 1))(x), H[0, 1])
    torch.testing.assert_close(derivs.laplacian(f)(x), H.trace())
    torch.testing.assert_close(derivs.hessian_diagonal(f)(x), H.diagonal())
    xb = torch.stack([x, x.flip(0)])
    want = torch.stack([torch.func.hessian(f)(r).trace() for r in xb])
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(xb), want)


@pytest.mark.parametrize("name", sorted(JAX))
def test_jax(name):
    f = JAX[name]
    x = jnp.asarray(X)
    H = jax.jit(jax.hessian(f))(x)
    np.testing.assert_allclose(derivs.partial(f, (0, 1))(x), H[0, 1], rtol=1e-10)
    np.testing.assert_allclose(jax.jit(derivs.laplacian(f))(x), jnp.trace(H), rtol=1e-10)
    np.testing.assert_allclose(jax.jit(derivs.hessian_diagonal(f))(x), jnp.diagonal(H),
                               rtol=1e-10)
    if name == "complex exp":  # fourth order: one function is enough
        bi = jax.jit(jax.hessian(lambda v: jnp.trace(jax.hessian(f)(v))))(x)
        np.testing.assert_allclose(jax.jit(derivs.bilaplacian(f))(x), jnp.trace(bi),
                                   rtol=1e-9, atol=1e-9)
