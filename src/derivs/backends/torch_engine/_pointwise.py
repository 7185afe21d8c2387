"""Univariate series rules for pointwise ATen ops (``_registry.SERIES_RULES``).

NOTE [elementwise regions]: an activation reaches the captured graph as a few
pointwise ops (GELU: ``x * 0.5 * (1 + erf(x / sqrt 2))``; Softplus: ``where(x >
20, x, log1p(exp(x)))``; Mish, ELU, SiLU ...). Applied one by one to a collapsed
stack, each op costs one or more passes over every direction's rows, and a
product of two intermediates (``x * erf(..)``) a gathered product per Faa di
Bruno entry. But every such op is a function of one value, element by element:
a whole *region* of pointwise ops fed by one live value ``r`` (``core._regions``)
is one elementwise function ``phi(r)``. Its derivatives ``phi', ..., phi^(m)``
are value-sized (not direction-sized) and come from propagating the univariate
series ``[r, 1, 0, ..]`` (NOTE [univariate series] in ``core._univariate``)
through the region's ops with the rules here. The stacked rule then runs once
per region with them (NOTE [elementwise derivatives] in ``_family``), as for
``tanh``: a GELU network costs what a tanh network costs.

A rule is ``rule(args, kwargs, m) -> Series``: arguments from the region are
``Series`` (the value and ``m`` derivatives), anything else is a constant (a
tensor, a Python number, a dtype ...). Each rule computes the op's value exactly
as the op does (same ATen op), so the program's values are f's own.

Kinks follow the engine's conventions (``_rules``): ``abs`` has slope ``sgn``, a
``where`` / ``relu`` / ``clamp`` takes the slope of the branch it selects, and
``maximum`` / ``minimum`` share ties evenly, as PyTorch's own derivatives do.
"""

from __future__ import annotations

import math

import torch

from ...core import _formulas
from ...core import _univariate as U
from ...core._univariate import Series
from ._registry import defseries

aten = torch.ops.aten


def _lift(a, m: int) -> Series:
    return a if isinstance(a, Series) else Series(U.constant(a, m))


def _full(c: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, c)


def _defunary(target, derivatives) -> None:
    """``target``'s rule from ``derivatives(x, y, m, *rest) -> [phi'(x), ...,
    phi^(m)(x)]`` (``y`` the op's output, ``rest`` its other arguments), composed
    with the argument's series (Faa di Bruno)."""
    def rule(args, kwargs, m):
        u = args[0]
        y = target(u[0], *args[1:], **kwargs)
        return Series([y] + U.compose(derivatives(u[0], y, m, *args[1:]), u, m))
    defseries(target)(rule)


# -- elementary functions ------------------------------------------------------------------
def _by_output(name: str):
    first = _formulas.OUTPUT_POLYNOMIALS[name]
    return lambda x, y, m: U.poly_in_output(first, y, m, _full)


def _exp(x, y, m):
    return [y] * m


def _expm1(x, y, m):
    return [y + 1] * m


def _log_at(x, m, scale: float = 1.0):
    """``d^k/dx^k log(x) * scale``: ``(-1)^(k-1) (k-1)! x^-k``."""
    inv = 1 / x
    out, power = [], inv
    for k in range(1, m + 1):
        out.append(((-1) ** (k - 1) * math.factorial(k - 1) * scale) * power)
        power = power * inv
    return out


def _power_at(x, p: float, m: int):
    out, coef = [], 1.0
    for k in range(1, m + 1):
        coef *= p - k + 1
        out.append(None if coef == 0.0 else coef * torch.pow(x, p - k))
    return out


def cyclic(other, sign: float):
    """sin, cos (value ``y``): the derivatives repeat with period four, ``sign *
    other(x)``, ``-y``, ``-sign * other(x)``, ``y``. ``other`` is evaluated once, and
    only the negations the order needs are made (the family and series rules)."""
    def derivatives(x, y, m):
        d = other(x) if sign > 0 else -other(x)
        cycle = (d, -y if m > 1 else None, -d if m > 2 else None, y)
        return [cycle[k % 4] for k in range(m)]
    return derivatives


def _erf_at(x, m, sign: float = 1.0):
    """``erf^(k) = (-1)^(k-1) H_{k-1}(x) 2/sqrt(pi) exp(-x^2)``."""
    g = (sign * 2.0 / math.sqrt(math.pi)) * torch.exp(-x * x)
    out = []
    for k in range(1, m + 1):
        h = _formulas.horner(U.hermite(k - 1), x, constant=lambda c, like: c)
        out.append(g * h if (k - 1) % 2 == 0 else -(g * h))
    return out


def _from_first(first):
    """Derivatives from the series of ``phi'`` (``core._univariate``)."""
    return lambda x, y, m: U.derivatives_from_first(first, x, m)


def _pow_series(u, p, m):
    return U.power(u, p, m, torch.pow)


def _poly(X, coeffs, m):
    """``sum_i coeffs[i] X^i`` for a series ``X`` (coefficients lowest first)."""
    out = U.constant(float(coeffs[0]), m)
    power = U.constant(1.0, m)
    for c in coeffs[1:]:
        power = [U.mul(X[0], power[0])] + U.leibniz(power, X, m)
        if c:
            out = [U.add(a, U.scale(b, c)) for a, b in zip(out, power)]
    return out


def _atan_first(X, m):  # 1 / (1 + x^2)
    return _pow_series(_poly(X, (1.0, 0.0, 1.0), m), -1.0, m)


def _asin_first(X, m):  # (1 - x^2)^(-1/2)
    return _pow_series(_poly(X, (1.0, 0.0, -1.0), m), -0.5, m)


def _acos_first(X, m):
    return [U.scale(v, -1.0) for v in _asin_first(X, m)]


def _atanh_first(X, m):  # 1 / (1 - x^2)
    return _pow_series(_poly(X, (1.0, 0.0, -1.0), m), -1.0, m)


def _asinh_first(X, m):  # (1 + x^2)^(-1/2)
    return _pow_series(_poly(X, (1.0, 0.0, 1.0), m), -0.5, m)


def _silu(x, y, m):
    """``x sigmoid(x)``: Leibniz of the variable and sigmoid's series."""
    s = torch.sigmoid(x)
    sig = [s] + U.poly_in_output(_formulas.OUTPUT_POLYNOMIALS["sigmoid"], s, m, _full)
    return U.leibniz(U.variable(x, m), sig, m)


_defunary(aten.exp.default, _exp)
_defunary(aten.expm1.default, _expm1)
_defunary(aten.log.default, lambda x, y, m: _log_at(x, m))
_defunary(aten.log2.default, lambda x, y, m: _log_at(x, m, 1 / math.log(2)))
_defunary(aten.log10.default, lambda x, y, m: _log_at(x, m, 1 / math.log(10)))
_defunary(aten.log1p.default, lambda x, y, m: _log_at(1 + x, m))
_defunary(aten.sqrt.default, lambda x, y, m: _power_at(x, 0.5, m))
_defunary(aten.rsqrt.default, lambda x, y, m: _power_at(x, -0.5, m))
_defunary(aten.reciprocal.default, lambda x, y, m: _power_at(x, -1.0, m))
_defunary(aten.tanh.default, _by_output("tanh"))
_defunary(aten.sigmoid.default, _by_output("sigmoid"))
_defunary(aten.tan.default, _by_output("tan"))
_defunary(aten.sin.default, cyclic(torch.cos, 1.0))
_defunary(aten.cos.default, cyclic(torch.sin, -1.0))
_defunary(aten.sinh.default, lambda x, y, m: [torch.cosh(x) if k % 2 == 0 else y
                                              for k in range(m)])
_defunary(aten.cosh.default, lambda x, y, m: [torch.sinh(x) if k % 2 == 0 else y
                                              for k in range(m)])
_defunary(aten.erf.default, lambda x, y, m: _erf_at(x, m))
_defunary(aten.erfc.default, lambda x, y, m: _erf_at(x, m, -1.0))
_defunary(aten.atan.default, _from_first(_atan_first))
_defunary(aten.asin.default, _from_first(_asin_first))
_defunary(aten.acos.default, _from_first(_acos_first))
_defunary(aten.atanh.default, _from_first(_atanh_first))
_defunary(aten.asinh.default, _from_first(_asinh_first))
_defunary(aten.silu.default, _silu)
_defunary(aten.pow.Tensor_Scalar, lambda x, y, m, p: _power_at(x, float(p), m))


@defseries(aten.pow.Scalar)
def _pow_scalar_base(args, kwargs, m):  # c ** u = exp(u log c), c > 0
    c, u = args
    y = torch.pow(c, u[0])
    log_c = math.log(c)
    return Series([y] + U.compose([y * log_c ** k for k in range(1, m + 1)], u, m))


# -- piecewise-linear functions: the slope of the selected piece, no curvature ---------------
def _sloped(u, y, slope, m) -> Series:
    return Series([y] + [U.mul(v, slope) for v in u[1:]])


def _as_float(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.dtype)


@defseries(aten.abs.default)
def _abs(args, kwargs, m):
    u = args[0]
    return _sloped(u, torch.abs(u[0]), torch.sgn(u[0]), m)


@defseries(aten.relu.default)
def _relu(args, kwargs, m):
    u = args[0]
    return _sloped(u, torch.relu(u[0]), _as_float(u[0] > 0, u[0]), m)


def _clamp_rule(target):
    def rule(args, kwargs, m):
        u = args[0]
        x = u[0]
        y = target(x, *args[1:], **kwargs)
        if target == aten.clamp_max.default:
            lo, hi = None, args[1] if len(args) > 1 else kwargs.get("max")
        elif target == aten.clamp_min.default:
            lo, hi = args[1] if len(args) > 1 else kwargs.get("min"), None
        else:
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
        mask = None
        if lo is not None:
            mask = x >= lo
        if hi is not None:
            mask = x <= hi if mask is None else mask & (x <= hi)
        slope = 1.0 if mask is None else _as_float(mask, x)
        return _sloped(u, y, slope, m)
    return rule


for _t in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default):
    defseries(_t)(_clamp_rule(_t))


def _max_min_rule(target):
    """The argument the op selects, coefficient by coefficient; at ties the mean of
    both (PyTorch's own derivative shares them)."""
    def rule(args, kwargs, m):
        a, b = _lift(args[0], m), _lift(args[1], m)
        y = target(a[0], b[0])
        if target == aten.maximum.default:
            pick_a, pick_b = a[0] > b[0], b[0] > a[0]
        else:
            pick_a, pick_b = a[0] < b[0], b[0] < a[0]

        def coefficient(p, q):
            if p is None and q is None:
                return None
            mean = U.scale(U.add(p, q), 0.5)
            return _select(pick_a, p, _select(pick_b, q, mean, y), y)
        return Series([y] + [coefficient(p, q) for p, q in zip(a[1:], b[1:])])
    return rule


for _t in (aten.maximum.default, aten.minimum.default):
    defseries(_t)(_max_min_rule(_t))


# -- linear and bilinear maps ----------------------------------------------------------------
def _select(cond, p, q, like):
    """``where(cond, p, q)`` of two coefficients (None: zero)."""
    if p is None and q is None:
        return None
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(cond, zero if p is None else p, zero if q is None else q)


@defseries(aten.where.self)
def _where(args, kwargs, m):
    cond, a, b = args[0], _lift(args[1], m), _lift(args[2], m)
    y = torch.where(cond, a[0], b[0])
    return Series([y] + [_select(cond, p, q, y) for p, q in zip(a[1:], b[1:])])


def _sum(a: Series, b: Series, alpha: float) -> list:
    return [U.add(p, U.scale(q, alpha)) for p, q in zip(a[1:], b[1:])]


def _sum_rule(target, sign: float, swap: bool = False):
    """add / sub / rsub: ``a + sign * alpha * b`` (``swap``: rsub, ``b - alpha * a``)."""
    def rule(args, kwargs, m):
        a, b = _lift(args[0], m), _lift(args[1], m)
        alpha = kwargs.get("alpha", 1)
        first, second = (b, a) if swap else (a, b)
        return Series([target(args[0] if not isinstance(args[0], Series) else a[0],
                              args[1] if not isinstance(args[1], Series) else b[0], **kwargs)]
                      + _sum(first, second, sign * alpha))
    return rule


for _t, _sign, _swap in ((aten.add.Tensor, 1.0, False), (aten.add.Scalar, 1.0, False),
                         (aten.sub.Tensor, -1.0, False), (aten.sub.Scalar, -1.0, False),
                         (aten.rsub.Tensor, -1.0, True), (aten.rsub.Scalar, -1.0, True)):
    defseries(_t)(_sum_rule(_t, _sign, _swap))


@defseries(aten.neg.default)
def _neg(args, kwargs, m):
    a = args[0]
    return Series([-a[0]] + [U.scale(v, -1.0) for v in a[1:]])


@defseries(aten.clone.default, aten.alias.default)
def _identity(args, kwargs, m):
    return Series(args[0])


@defseries(aten.mul.Tensor, aten.mul.Scalar)
def _mul(args, kwargs, m):
    a, b = args
    if not isinstance(b, Series):
        return Series([a[0] * b] + [U.mul(v, b) for v in a[1:]])
    if not isinstance(a, Series):
        return Series([a * b[0]] + [U.mul(a, v) for v in b[1:]])
    return Series([a[0] * b[0]] + U.leibniz(a, b, m))


@defseries(aten.div.Tensor, aten.div.Scalar,
           accepts=lambda kwargs: kwargs.get("rounding_mode") is None)
def _div(args, kwargs, m):
    a, b = args
    if not isinstance(b, Series):
        return Series([a[0] / b] + [None if v is None else v / b for v in a[1:]])
    inv = _pow_series(b, -1.0, m)
    a = _lift(a, m)
    return Series([a[0] / b[0]] + U.leibniz(a, inv, m))
