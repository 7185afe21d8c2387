"""Lazy jets of JAX values, and the jet algebra that rules are written in.

The same normalization as the PyTorch engine (``derivs.core._jets``): a jet holds
the partial derivatives ``v[kappa]`` of one value for count vectors ``kappa`` over
the pass's coordinate groups, plus optionally collapsed operator coefficients
(``_jets.Collapsed``). Coefficients are computed on first request and memoized,
so only what the requested partials need is ever traced; ``None`` is a structural
zero and never becomes an array unless a rule needs one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
from jax import lax

from ...core import _jets

Key = _jets.Key


class Jet:
    """Coefficients of one value. ``rule(key)`` computes a nonzero key; a jet
    without a rule is a constant (no derivative). ``expands`` rules do not know
    collapsed keys: those are then summed from their terms."""

    __slots__ = ("primal", "rule", "memo", "seeds", "expands")

    def __init__(self, primal: Any, rule: Callable[[Key], Any] | None = None, *,
                 expands: bool = False):
        self.primal, self.rule, self.expands = primal, rule, expands
        self.memo: dict[Key, Any] = {}
        self.seeds: dict[int, int] | None = None  # group -> flat index, input jets only

    @property
    def const(self) -> bool:
        return self.rule is None

    def get(self, key: Key) -> Any:
        if _jets.is_zero(key):
            return self.primal
        if self.rule is None:
            return None
        if key in self.memo:
            return self.memo[key]
        if self.expands and isinstance(key, _jets.Collapsed):
            v = family_sum(key, total(scale(self.get(alpha), c) for c, alpha in key.terms))
        else:
            v = self.rule(key)
        self.memo[key] = v
        return v

    def dense(self, key: Key) -> Any:
        """Coefficient ``key`` as an array (zeros for a structural zero)."""
        v = self.get(key)
        return jnp.zeros_like(self.primal) if v is None else v


def const(value: Any) -> Jet:
    return Jet(value)


# -- coefficient arithmetic with None as zero ---------------------------------------------
def add(x, y):
    if x is None:
        return y
    if y is None:
        return x
    return x + y


def scale(x, c: float):
    if x is None or c == 0:
        return None
    return x if c == 1 else x * c


def total(values: Iterable[Any]):
    out = None
    for v in values:
        out = add(out, v)
    return out


def sum_of_products(terms, product=lambda x, y: x * y):
    """``sum m * product(x, y)`` over ``(x, y, m)``, skipping structural zeros."""
    return total(scale(product(x, y), m) for x, y, m in terms
                 if x is not None and y is not None)


def family_sum(key: Key, value):
    """Sums per-direction terms of a collapsed key over its family of directions."""
    if value is None or not isinstance(key, _jets.Collapsed) or key.family is None:
        return value
    return lax.psum(value, key.family)


def collapsed_sum(key: Key, terms, x, y, product=lambda u, v: u * v):
    """``sum m * product(x[t], y[r])`` over ``terms`` of ``key``: terms that hold
    ``key`` itself are family-wide already; the others are summed over the family."""
    if not isinstance(key, _jets.Collapsed) or key.family is None:
        return sum_of_products(((x(t), y(r), m) for t, r, m in terms), product)
    own = [(t, r, m) for t, r, m in terms if t == key or r == key]
    rest = [(t, r, m) for t, r, m in terms if t != key and r != key]
    return add(sum_of_products(((x(t), y(r), m) for t, r, m in own), product),
               family_sum(key, sum_of_products(((x(t), y(r), m) for t, r, m in rest),
                                               product)))


# -- the algebra ------------------------------------------------------------------------
def linear(parts: list[Jet], fn: Callable[..., Any]) -> Jet:
    """``fn`` jointly linear in ``parts`` (add, concatenate, reshape, reduce_sum,
    select with a constant predicate ...), applied coefficient-wise; zero parts are
    materialized only when another part is not zero."""
    primal = fn(*[p.primal for p in parts])
    if all(p.const for p in parts):
        return const(primal)

    def rule(key):
        vals = [p.get(key) for p in parts]
        if all(v is None for v in vals):
            return None
        return fn(*[jnp.zeros_like(p.primal) if v is None else v for v, p in zip(vals, parts)])

    return Jet(primal, rule)


def bilinear(a: Jet, b: Jet, fn: Callable[[Any, Any], Any]) -> Jet:
    """``fn`` bilinear (mul, dot_general, conv): the Leibniz rule."""
    primal = fn(a.primal, b.primal)
    if a.const and b.const:
        return const(primal)

    def rule(key):
        return collapsed_sum(key, _jets.product_terms(key), a.get, b.get, fn)

    return Jet(primal, rule)


def chain(parts: list[Jet], primal: Any, psis: Callable[[Jet], list[Jet | None]]) -> Jet:
    """An elementwise ``phi(parts)`` given its primal and ``psis(result)``, the jets of
    ``d phi / d part_i`` (None for constant parts). The result is passed so that
    exp, tanh, ... can reuse their own coefficients."""
    if all(p.const for p in parts):
        return const(primal)
    holder: list[list[Jet | None]] = []
    result = Jet(primal, None)

    def rule(key):
        if not holder:
            holder.append(psis(result))
        out = None
        for p, d in zip(parts, holder[0]):
            if d is None or p.const:
                continue
            out = add(out, collapsed_sum(key, _jets.composition_terms(key), d.get, p.get))
        return out

    result.rule = rule
    return result


def shifted(a: Jet, g: int, groups: int) -> Jet:
    """The jet of ``d a / d x_g``: coefficient ``tau`` is ``a[tau + e_g]``."""
    e = _jets.unit(groups, g)
    if a.const:
        return const(jnp.zeros_like(a.primal))
    return Jet(a.dense(e), lambda t: a.get(tuple(x + y for x, y in zip(t, e))), expands=True)
