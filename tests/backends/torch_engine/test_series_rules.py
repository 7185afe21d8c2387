"""Every univariate series rule of the PyTorch engine (``_registry.SERIES_RULES``,
NOTE [elementwise regions]) against PyTorch's own nested forward AD, in float64:
one line per registered op, iterating the registry, so a new rule is checked
the moment it is registered."""

from __future__ import annotations

import pytest
import torch

from derivs.backends.torch_engine import _pointwise  # noqa: F401  (fills the registry)
from derivs.backends.torch_engine._registry import SERIES_RULES
from derivs.core._univariate import Series

aten = torch.ops.aten
M = 4
# x away from kinks and poles; each op at values where it is smooth
X = torch.linspace(0.15, 0.85, 7, dtype=torch.float64)
C = torch.linspace(-0.4, 1.3, 7, dtype=torch.float64)  # a constant operand
CASES = {  # target -> (args as functions of the live x, kwargs)
    aten.pow.Tensor_Scalar: (lambda x: (x, 2.5), {}),
    aten.pow.Scalar: (lambda x: (1.7, x), {}),
    aten.add.Tensor: (lambda x: (x, torch.sin(x) * C), {"alpha": 0.5}),
    aten.add.Scalar: (lambda x: (x, 2.0), {}),
    aten.sub.Tensor: (lambda x: (torch.exp(x), x * x), {"alpha": 2}),
    aten.sub.Scalar: (lambda x: (x, 2.0), {}),
    aten.rsub.Tensor: (lambda x: (torch.cos(x), C), {}),
    aten.rsub.Scalar: (lambda x: (x * x, 3.0), {}),
    aten.mul.Tensor: (lambda x: (torch.sin(x), torch.exp(x)), {}),
    aten.mul.Scalar: (lambda x: (x * x, -1.5), {}),
    aten.div.Tensor: (lambda x: (torch.sin(x), 1 + x * x), {}),
    aten.div.Scalar: (lambda x: (x * x, 4.0), {}),
    aten.where.self: (lambda x: (C > 0, x * x, torch.sin(x)), {}),
    aten.maximum.default: (lambda x: (x * x, torch.sin(x) * 0.3), {}),
    aten.minimum.default: (lambda x: (x * x, C), {}),
    aten.clamp.default: (lambda x: (x * 3 - 1, -0.5, 0.9), {}),
    aten.clamp_min.default: (lambda x: (x * 3 - 1, 0.0), {}),
    aten.clamp_max.default: (lambda x: (x * 3 - 1, 0.7), {}),
    aten.abs.default: (lambda x: (x - 0.5,), {}),
    aten.relu.default: (lambda x: (x - 0.5,), {}),
}


def _args(target, x):
    case = CASES.get(target)
    if case is None:
        return (x,), {}  # a unary function of x
    fn, kwargs = case
    return fn(x), kwargs


def _series_of(value_fn, x, m):
    """``[v, v', ..., v^(m)]`` of ``x -> value_fn(x)`` along 1, by nested jvp."""
    out, g = [], value_fn
    for _ in range(m + 1):
        out.append(g(x))
        g = (lambda h: lambda v: torch.func.jvp(h, (v,), (torch.ones_like(v),))[1])(g)
    return out


@pytest.mark.parametrize("target", sorted(SERIES_RULES, key=str), ids=str)
def test_series_rule_matches_nested_forward_ad(target):
    args, kwargs = _args(target, X)
    live = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)
            and a.dtype == torch.float64 and a is not C]

    def as_fn(i):  # argument i as a function of x
        return lambda x: _args(target, x)[0][i]

    series_args = [Series(_series_of(as_fn(i), X, M)) if i in live else a
                   for i, a in enumerate(args)]
    got = SERIES_RULES[target].rule(series_args, kwargs, M)
    want = _series_of(lambda x: target(*_args(target, x)[0], **kwargs), X, M)
    assert len(got) == M + 1
    for k, (g, w) in enumerate(zip(got, want)):
        g = torch.zeros_like(w) if g is None else torch.as_tensor(g, dtype=w.dtype).expand_as(w)
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"{target}, order {k}")
