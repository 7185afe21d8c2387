"""Closed-form derivatives of the activations the capture decomposes
(``_registry.CLOSED_FORMS``).

NOTE [closed forms]: GELU, ELU (and SELU, which calls it), CELU, Softplus, Mish and
LogSigmoid reach the captured graph as their ATen decompositions, 3 to 9
pointwise ops each. The family program would propagate a univariate series
through every one of them (NOTE [elementwise regions] in ``_pointwise.py``): a few
dozen value-sized kernels per activation, 2-4x what the network's ``tanh``
costs. But each is a known function of one value with derivatives in closed form
(ELU's are its output plus a constant, Softplus's the sigmoid's polynomials), and
PyTorch's own backward kernels use the same forms.

So the capture tags every op a decomposition emits with the op, its parameters
and an instance number (``_capture.decompositions``; ``node.meta["custom"]``), and
the family program takes a tagged *block* whole when its shape is what the
decomposition makes: one input, one output that anything else reads, every other
op read only inside the block (``_family._blocks``). The block's value is the op's
own (``aten.gelu`` as f runs it eagerly), and its derivatives come from the rule
here, composed with the input's series. Anything else (an untagged graph, a block
a later rewrite split) keeps the op-by-op series, which is exact too: a tag only
chooses the cheaper of two exact ways.

A rule is ``rule(x, m, *params, **kwargs) -> (y, [phi'(x), ..., phi^(m)(x)])``.
Piecewise definitions keep the decomposition's branch conventions (ELU takes its
negative branch at 0, as ``x > 0`` selects; Softplus is linear above its
threshold) for every order, as the op-by-op series does. For the first derivative
these are PyTorch's own backward conventions; PyTorch's double backward takes the
other branch at exactly the kink (ELU's second derivative at 0 is 0 there, the
curved branch's 1 here). Each rule is
checked against the op-by-op series and against nested ``torch.func`` derivatives
in ``tests/torch_engine``.
"""

from __future__ import annotations

import math

import torch

from ...core import _formulas
from ...core import _univariate as U
from ._registry import Unsupported, defclosed

aten = torch.ops.aten


def _full(c: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, c)


def _branch(mask: torch.Tensor, linear: list, curved: list) -> list:
    """``where(mask, linear[k], curved[k])`` for each derivative (``linear`` holds
    Python floats: the slope, then zeros), as ``mask * linear + (1 - mask) *
    curved``: exact, since ``curved`` is finite everywhere (the rules evaluate it
    at a clamped point where the linear piece holds), and a CPU ``where`` costs
    10-15 multiplies."""
    on = mask.to(curved[0].dtype)
    off = 1 - on
    out = []
    for a, b in zip(linear, curved):
        v = off * b
        out.append(v if a == 0 else v + (on if a == 1 else on * a))
    return out


def _linear_piece(slope: float, m: int) -> list:
    return [float(slope)] + [0.0] * (m - 1)


def _sigmoid_series(s: torch.Tensor, m: int) -> list:
    """``[sigma, sigma', ..., sigma^(m)]`` at the point where ``sigma = s``."""
    if m == 0:
        return [s]
    return [s] + U.poly_in_output(_formulas.OUTPUT_POLYNOMIALS["sigmoid"], s, m, _full)


def _tanh_series_of(u: list, m: int) -> list:
    """The series of ``tanh(u)`` for the series ``u``."""
    t = torch.tanh(u[0])
    first = U.poly_in_output(_formulas.OUTPUT_POLYNOMIALS["tanh"], t, m, _full)
    return [t] + U.compose(first, u, m)


@defclosed(aten.elu.default)
def _elu(x, m, alpha=1.0, scale=1.0, input_scale=1.0):
    """``scale * x`` for ``x > 0``, else ``scale * alpha * (exp(input_scale x) - 1)``:
    the k-th derivative there is ``input_scale^k * scale * alpha * exp(input_scale x)``."""
    y = aten.elu.default(x, alpha, scale, input_scale)
    neg = torch.clamp_max(x, 0)  # finite on the linear piece too (NOTE in _branch)
    e = torch.exp(neg * input_scale if input_scale != 1 else neg)
    c = float(alpha) * float(scale)
    e = e if c == 1 else e * c
    curved = [e * float(input_scale) ** k if input_scale != 1 else e for k in range(1, m + 1)]
    return y, _branch(x > 0, _linear_piece(scale, m), curved)


@defclosed(aten.celu.default)
def _celu(x, m, alpha=1.0):
    """``x`` for ``x > 0``, else ``alpha * (exp(x / alpha) - 1)``."""
    y = aten.celu.default(x, alpha)
    alpha = float(alpha)
    neg = torch.clamp_max(x, 0)
    e = torch.exp(neg / alpha if alpha != 1 else neg)
    curved = [e * alpha ** (1 - k) if alpha != 1 else e for k in range(1, m + 1)]
    return y, _branch(x > 0, _linear_piece(1.0, m), curved)


@defclosed(aten.softplus.default)
def _softplus(x, m, beta=1.0, threshold=20.0):
    """``log(1 + exp(beta x)) / beta``, linear above the threshold (as PyTorch's own
    value and backward): the k-th derivative is ``beta^(k-1) sigmoid^(k-1)(beta x)``."""
    y = aten.softplus.default(x, beta, threshold)
    beta = float(beta)
    bx = x * beta if beta != 1 else x
    sig = _sigmoid_series(torch.sigmoid(bx), m - 1)
    curved = [v * beta ** k if beta != 1 else v for k, v in enumerate(sig)]
    return y, _branch(bx > threshold, _linear_piece(1.0, m), curved)


def _gelu_erf(x, m):
    """``x Phi(x)``: Leibniz, with ``Phi^(j)(x) = 2^(-j/2) / 2 * erf^(j)(x / sqrt 2)``."""
    u = x * (1 / math.sqrt(2))
    g = (2.0 / math.sqrt(math.pi)) * torch.exp(-u * u)  # erf'(u)
    phi = [0.5 * (1 + torch.erf(u))]
    for j in range(1, m + 1):  # erf^(j)(u) = (-1)^(j-1) H_{j-1}(u) erf'(u)
        h = _formulas.horner(U.hermite(j - 1), u, constant=lambda c, like: c)
        h = g if isinstance(h, float) and h == 1.0 else g * h
        phi.append((-1) ** (j - 1) * 0.5 * 2.0 ** (-j / 2) * h)
    return U.leibniz(U.variable(x, m), phi, m)


def _gelu_tanh(x, m):
    """``x / 2 * (1 + tanh(c (x + a x^3)))``, ``c = sqrt(2 / pi)``, ``a = 0.044715``."""
    c, a = math.sqrt(2 / math.pi), 0.044715
    x2 = x * x
    inner = [c * (x + a * x2 * x), c * (1 + 3 * a * x2), (6 * a * c) * x] + [6 * a * c]
    inner = (inner + [None] * m)[:m + 1]
    t = _tanh_series_of(inner, m)
    half = [0.5 * (1 + t[0])] + [None if v is None else 0.5 * v for v in t[1:]]
    return U.leibniz(U.variable(x, m), half, m)


@defclosed(aten.gelu.default)
def _gelu(x, m, approximate="none"):
    y = aten.gelu.default(x, approximate=approximate)
    if approximate == "none":
        return y, _gelu_erf(x, m)
    if approximate == "tanh":
        return y, _gelu_tanh(x, m)
    raise Unsupported(f"gelu with approximate={approximate!r}")


@defclosed(aten.mish.default)
def _mish(x, m):
    """``x tanh(softplus(x))``, the value as the decomposition computes it (ATen's
    fused kernel costs more than the derivatives), the derivatives with the smooth
    softplus, as PyTorch's own backward."""
    softplus = [torch.nn.functional.softplus(x)] + _sigmoid_series(torch.sigmoid(x), m - 1)
    t = _tanh_series_of(softplus, m)
    return x * t[0], U.leibniz(U.variable(x, m), t, m)


@defclosed(aten.log_sigmoid_forward.default)
def _log_sigmoid(x, m):
    """``-softplus(-x)``, linear below -20 as the capture's decomposition (NOTE [smooth
    decompositions] in ``_capture.py``): the k-th derivative is ``(-1)^(k+1)
    sigmoid^(k-1)(-x)``."""
    y = aten.log_sigmoid_forward.default(x)[0]
    sig = _sigmoid_series(torch.sigmoid(-x), m - 1)
    curved = [v if k % 2 == 0 else -v for k, v in enumerate(sig)]
    return y, _branch(x < -20.0, _linear_piece(1.0, m), curved)
