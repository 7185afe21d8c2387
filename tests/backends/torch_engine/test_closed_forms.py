"""Closed forms of decomposed activations (NOTE [closed forms] in
``torch_engine/_closed_forms.py``): each rule's value and derivatives against nested
float64 autograd of the activation written in elementary ops, conventions at the
kinks against PyTorch's own autograd, and the family program taking the blocks
(with operators checked against ``torch.func.hessian``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import derivs
from derivs.backends.torch_engine import _family
from derivs.backends.torch_engine._registry import CLOSED_FORMS

aten = torch.ops.aten
SQRT_2_PI = math.sqrt(2 / math.pi)

# (name, op, params, kwargs, eager value, elementary definition)
CASES = [
    ("elu", aten.elu.default, (), {}, F.elu,
     lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
    ("elu-params", aten.elu.default, (0.7, 1.3, 0.6), {},
     lambda x: aten.elu.default(x, 0.7, 1.3, 0.6),
     lambda x: torch.where(x > 0, 1.3 * x, 1.3 * 0.7 * (torch.exp(0.6 * x) - 1))),
    ("selu", aten.elu.default, (1.6732632423543772, 1.0507009873554805, 1.0), {}, F.selu,
     lambda x: torch.where(x > 0, 1.0507009873554805 * x,
                           1.0507009873554805 * 1.6732632423543772 * (torch.exp(x) - 1))),
    ("celu", aten.celu.default, (0.5,), {}, lambda x: F.celu(x, 0.5),
     lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x / 0.5) - 1))),
    ("softplus", aten.softplus.default, (), {}, F.softplus,
     lambda x: torch.where(x > 20, x, torch.log1p(torch.exp(x)))),
    ("softplus-params", aten.softplus.default, (2.5, 3.0), {},
     lambda x: F.softplus(x, 2.5, 3.0),
     lambda x: torch.where(2.5 * x > 3.0, x, torch.log1p(torch.exp(2.5 * x)) / 2.5)),
    ("gelu", aten.gelu.default, (), {}, F.gelu,
     lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu-tanh", aten.gelu.default, (), {"approximate": "tanh"},
     lambda x: F.gelu(x, approximate="tanh"),
     lambda x: 0.5 * x * (1 + torch.tanh(SQRT_2_PI * (x + 0.044715 * x ** 3)))),
    ("mish", aten.mish.default, (), {}, F.mish,
     lambda x: x * torch.tanh(torch.log1p(torch.exp(x)))),
    ("logsigmoid", aten.log_sigmoid_forward.default, (), {}, F.logsigmoid,
     lambda x: torch.where(x < -20, x, -torch.log1p(torch.exp(-x)))),
]
IDS = [c[0] for c in CASES]


def _points():
    """Both pieces of every piecewise rule, away from the kinks themselves, and
    past Softplus' thresholds (x > 20 and 2.5 x > 3)."""
    return torch.tensor([-25.0, -7.0, -2.3, -0.9, -0.05, 0.03, 0.4, 1.1, 1.7, 3.2, 21.0],
                        dtype=torch.float64)


def _nested(fn, x, m):
    """``[fn'(x), ..., fn^(m)(x)]`` elementwise, by nested float64 autograd."""
    out, g = [], x.clone().requires_grad_(True)
    y = fn(g)
    for _ in range(m):
        (y,) = torch.autograd.grad(y.sum(), g, create_graph=True)
        out.append(y.detach())
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("m", [1, 2, 4])
def test_rule_against_nested_autograd(case, m):
    _, op, params, kwargs, eager, elementary = case
    x = _points()
    y, d = CLOSED_FORMS[op](x, m, *params, **kwargs)
    torch.testing.assert_close(y, eager(x), rtol=1e-12, atol=1e-12)
    want = _nested(elementary, x, m)
    assert len(d) == m
    for k, (got, ref) in enumerate(zip(d, want), 1):
        got = torch.as_tensor(got, dtype=x.dtype).expand_as(x)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9,
                                   msg=lambda s, k=k: f"derivative {k}: {s}")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("elu", "elu-params", "selu",
                                                                "celu")],
                         ids=["elu", "elu-params", "selu", "celu"])
def test_kink_convention_is_pytorchs(case):
    """At exactly 0 the slope is PyTorch's own (its backward takes the negative
    branch there, as the decomposition's ``x > 0`` does)."""
    _, op, params, kwargs, eager, _ = case
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (own,) = torch.autograd.grad(eager(x).sum(), x)
    _, d = CLOSED_FORMS[op](x.detach(), 1, *params, **kwargs)
    torch.testing.assert_close(torch.as_tensor(d[0]).expand(3), own)


def test_float32_rules_stay_finite():
    """The linear pieces are selected by masks times finite values: no overflow
    of an exponential on the other piece leaks in as inf or NaN."""
    x = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0], dtype=torch.float32)
    for op, params in ((aten.elu.default, ()), (aten.celu.default, (0.3,)),
                       (aten.softplus.default, ()), (aten.log_sigmoid_forward.default, ())):
        y, d = CLOSED_FORMS[op](x, 3, *params)
        for v in (y, *d):
            assert torch.isfinite(torch.as_tensor(v)).all(), (op, v)


ACTIVATIONS = {
    "gelu": (F.gelu, "_gelu"), "gelu_tanh": (lambda h: F.gelu(h, approximate="tanh"), "_gelu"),
    "elu": (F.elu, "_elu"), "selu": (F.selu, "_elu"), "celu": (lambda h: F.celu(h, 0.7), "_celu"),
    "softplus": (lambda h: F.softplus(h, 1.5, 4.0), "_softplus"), "mish": (F.mish, "_mish"),
    "logsigmoid": (F.logsigmoid, "_log_sigmoid"),
}


def _program(f, x):
    program = _family.prepare(f, (x,), {}, 0, 0)
    assert isinstance(program, _family.FamilyProgram), program
    return program


def _hessians(f, x):
    return torch.vmap(torch.func.hessian(lambda z: f(z[None])[0]))(x)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_family_program_takes_the_block(name):
    act, rule = ACTIVATIONS[name]
    torch.manual_seed(0)
    w1, w2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def f(x):
        return act(x @ w1) @ w2

    x = torch.randn(4, 3, dtype=torch.float64)
    assert [r.__name__ for r, *_ in _program(f, x).blocks.values()] == [rule]
    H = _hessians(f, x)
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(derivs.hessian_diagonal(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1))


def test_blocks_compose():
    """An activation of an activation (the inner block's output is the outer
    block's input), an activation of the input itself, an activation whose input
    is read outside it too, and Mish (whose decomposition calls Softplus's: the
    outermost op is the block)."""
    torch.manual_seed(1)
    w = torch.randn(3, 4, dtype=torch.float64)

    def f(x):
        h = x @ w
        g = F.gelu(h)
        return (F.elu(g) * h + F.softplus(x).sum(-1, keepdim=True) + F.mish(h)).sum(-1)

    x = torch.randn(5, 3, dtype=torch.float64)
    names = sorted(r.__name__ for r, *_ in _program(f, x).blocks.values())
    assert names == ["_elu", "_gelu", "_mish", "_softplus"]
    H = _hessians(f, x)
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1).sum(-1))
    bi = torch.vmap(torch.func.hessian(
        lambda z: torch.func.hessian(lambda y: f(y[None])[0])(z).trace()))(x)
    torch.testing.assert_close(derivs.bilaplacian(f, batch_axis=0)(x),
                               bi.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_constant_activation_is_no_block():
    """An activation of a tensor that does not depend on x is a constant."""
    c = torch.linspace(-1, 1, 4, dtype=torch.float64)

    def f(x):
        return (torch.tanh(x) * F.gelu(c)).sum(-1)

    x = torch.randn(3, 4, dtype=torch.float64)
    assert _program(f, x).blocks == {}
    H = _hessians(f, x)
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1).sum(-1))
