"""Per-framework helpers for tests: array construction and math namespaces."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import torch

FRAMEWORKS = ("jax", "torch")


def array(fw: str, values, dtype: str = "float64"):
    values = np.asarray(values, dtype=dtype)
    if fw == "jax":
        return jnp.asarray(values)
    return torch.as_tensor(values)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def math_ns(fw: str, dtype: str = "float64") -> types.SimpleNamespace:
    if fw == "jax":
        return types.SimpleNamespace(
            sin=jnp.sin, cos=jnp.cos, exp=jnp.exp, tanh=jnp.tanh, log=jnp.log, sqrt=jnp.sqrt,
            atan=jnp.arctan, const=lambda c: jnp.asarray(c, dtype), prod=jnp.prod,
            sum=jnp.sum)
    tdt = getattr(torch, dtype)
    return types.SimpleNamespace(
        sin=torch.sin, cos=torch.cos, exp=torch.exp, tanh=torch.tanh, log=torch.log,
        sqrt=torch.sqrt, atan=torch.atan, const=lambda c: torch.tensor(c, dtype=tdt),
        prod=torch.prod, sum=torch.sum)


def vmap(fw: str, f):
    return jax.vmap(f) if fw == "jax" else torch.func.vmap(f)


def grad(fw: str, f):
    return jax.grad(f) if fw == "jax" else torch.func.grad(f)
