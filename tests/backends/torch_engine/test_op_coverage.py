"""Common neural-network functions through the engine, against torch.func's own
nested forward AD (float64, per sample). Functions that must run on the engine
are asserted to do so; the rest must fall back and still be right."""

from __future__ import annotations

import pytest
import torch

import derivs

F = torch.nn.functional
EYE = torch.eye(6, dtype=torch.float64)

ENGINE = {
    "closed_over_weight": lambda x: torch.tanh(F.linear(x, EYE * 0.5)).prod(-1),
    "softmax": lambda x: F.softmax(x, -1)[..., 0],
    "log_softmax": lambda x: F.log_softmax(x, -1)[..., 1],
    "logsumexp": lambda x: torch.logsumexp(x, -1),
    "gelu": lambda x: F.gelu(x).sum(-1),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh").sum(-1),
    "softplus": lambda x: F.softplus(x).sum(-1),
    "silu": lambda x: F.silu(x).sum(-1),
    "elu": lambda x: F.elu(x).sum(-1),
    "leaky_relu": lambda x: (F.leaky_relu(x) * x).sum(-1),
    "mish": lambda x: F.mish(x).sum(-1),
    "norm": lambda x: x.norm(dim=-1),
    "var": lambda x: x.var(-1),
    "std": lambda x: x.std(-1),
    "amax": lambda x: x.amax(-1) * x[..., 0],
    "einsum": lambda x: torch.einsum("...i,...i->...", x, x) ** 1.5,
    "linear": lambda x: torch.tanh(F.linear(x, torch.eye(6, dtype=x.dtype) * 0.5)).prod(-1),
    "abs_pow": lambda x: (x.abs() ** x).sum(-1),
    "atan_tan": lambda x: (torch.atan(x) * torch.tan(0.3 * x)).sum(-1),
    "rsqrt_log1p": lambda x: (torch.rsqrt(1 + x**2) * torch.log1p(x**2)).sum(-1),
    "where_clamp": lambda x: torch.where(x > 0, x**3, torch.sin(x)).sum(-1)
    * x.clamp(-0.5, 0.5).sum(-1),
    # no hand rule: PyTorch's decomposition or forward-mode formula (NOTE [generic rule])
    "max_dim": lambda x: x.max(-1).values * x[..., 0],
    "layer_norm": lambda x: (F.layer_norm(x, (6,))[..., :3] ** 2).sum(-1) * x[..., 0],
    "atan2": lambda x: torch.atan2(x[..., 0], x[..., 1] + 3),
    "erfc_lgamma": lambda x: (torch.erfc(x) * torch.lgamma(x + 3)).sum(-1),
    "cumprod": lambda x: torch.cumprod(x, -1)[..., -1] * x[..., 1],
}
FALLBACK = {  # a value read in Python: never baked into a cached graph
    "python_value": lambda x: x.prod(-1) * float(x.detach().abs().max() > -1),
}
# torch 2.13's own higher derivatives of layer_norm are wrong (forward over forward
# at order 2, both modes at order 3; checked against float64 finite differences):
# the oracle differentiates the same function written with elementary ops.
ORACLE_F = {"layer_norm": lambda x: (((x - x.mean(-1, keepdim=True)) / torch.sqrt(
    x.var(-1, unbiased=False, keepdim=True) + 1e-5))[..., :3] ** 2).sum(-1) * x[..., 0]}


def per_sample_dense(f, x, mi):
    """d^k f / dx_mi for each row, by nesting torch.func.jacfwd (forward AD)."""
    def one(v):
        d = lambda u: f(u[None])[0]
        for _ in mi:
            d = torch.func.jacfwd(d)
        return d(v)[mi]
    return torch.stack([one(v) for v in x])


X = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", sorted(ENGINE) + sorted(FALLBACK))
@pytest.mark.parametrize("mi", [(0, 1), (0, 0, 2)])
def test_function_matches_forward_ad(name, mi):
    f = ENGINE.get(name) or FALLBACK[name]
    d = derivs.partial(f, mi, batch_axis=0)
    expected_strategy = "traced-jet" if name in ENGINE else "nested-forward"
    assert derivs.explain(d, X).strategy == expected_strategy
    oracle = per_sample_dense(ORACLE_F.get(name, f), X, mi)
    torch.testing.assert_close(d(X), oracle, rtol=1e-9, atol=1e-10)
