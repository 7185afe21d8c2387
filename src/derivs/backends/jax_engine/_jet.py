"""Lazy jets of JAX values, and the jet algebra that rules are written in.

The same normalization as the PyTorch engine (``derivs.core._jets``): a jet holds
the partial derivatives ``v[kappa]`` of one value for count vectors ``kappa`` over
the pass's coordinate groups, plus optionally collapsed operator coefficients
(``_jets.Collapsed``). Coefficients are computed on first request and memoized,
so only what the requested partials need is ever traced; ``None`` is a structural
zero and never becomes an array unless a rule needs one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ...core import _jets
from .. import _common

Key = _jets.Key


class Narrow:
    """A coefficient that is zero outside a few static flat positions of its value.

    A one-hot seed is one of these, and so is everything elementwise downstream of
    it: ``sin(x)[e_0]`` is ``cos(x_0)`` at position 0 and zero elsewhere. Products
    and sums with other coefficients stay narrow (full arrays are gathered at the
    positions), so the tangent work of a pure partial costs ``len(positions)``
    elements per coefficient instead of the whole array until a reduction or a
    matrix product mixes the positions. Rules that do not know narrow
    coefficients see dense arrays (``Jet.get``)."""

    __slots__ = ("values", "positions", "shape", "_dense", "column")

    def __init__(self, values, positions: np.ndarray, shape: tuple, column=None):
        self.values, self.positions, self.shape = values, positions, tuple(shape)
        self._dense = None
        # a 2-d value nonzero at one (possibly traced) column in every row: positions
        # are ``row * shape[1] + column`` (a picked seed over a batch, NOTE [picked
        # seeds]); products with other coefficients drop it
        self.column = column

    def dense(self):
        if self._dense is None:
            size = int(np.prod(self.shape, dtype=np.int64))
            flat = jnp.zeros(size, self.values.dtype).at[self.positions].set(
                self.values, unique_indices=True, indices_are_sorted=True)
            self._dense = flat.reshape(self.shape)
        return self._dense

    def _gather(self, other):
        """``other`` at this coefficient's positions, or None if shapes differ."""
        if isinstance(other, (int, float)) or np.ndim(other) == 0:
            return other
        if tuple(np.shape(other)) != self.shape:
            return None
        return jnp.reshape(other, (-1,))[self.positions]

    @property
    def static(self) -> bool:
        """Whether the positions are known at trace time (a family's unit seed has
        a traced position: its lane's)."""
        return isinstance(self.positions, np.ndarray)

    def _same(self, other) -> bool:
        if not (isinstance(other, Narrow) and other.shape == self.shape):
            return False
        if other.positions is self.positions:
            return True
        return self.static and other.static and np.array_equal(other.positions,
                                                               self.positions)

    def __mul__(self, other):
        if isinstance(other, Narrow):
            if self._same(other):
                return Narrow(self.values * other.values, self.positions, self.shape)
            return self.dense() * other.dense()
        g = self._gather(other)
        return self.dense() * other if g is None else Narrow(self.values * g, self.positions,
                                                             self.shape)

    __rmul__ = __mul__

    def __truediv__(self, other):
        g = None if isinstance(other, Narrow) else self._gather(other)
        if g is None:
            return self.dense() / densify(other)
        return Narrow(self.values / g, self.positions, self.shape)

    def __add__(self, other):
        if self._same(other):
            return Narrow(self.values + other.values, self.positions, self.shape)
        return self.dense() + densify(other)

    __radd__ = __add__

    def __neg__(self):
        return Narrow(-self.values, self.positions, self.shape)


def densify(v):
    return v.dense() if isinstance(v, Narrow) else v


class Jet:
    """Coefficients of one value. ``rule(key)`` computes a nonzero key; a jet
    without a rule is a constant (no derivative). ``expands`` rules do not know
    collapsed keys: those are then summed from their terms."""

    __slots__ = ("primal", "rule", "memo", "seeds", "expands", "top")

    def __init__(self, primal: Any, rule: Callable[[Key], Any] | None = None, *,
                 expands: bool = False):
        self.primal, self.rule, self.expands = primal, rule, expands
        self.memo: dict[Key, Any] = {}
        self.seeds: dict[int, int] | None = None  # group -> flat index, input jets only
        # NOTE [own top]: whether a collapsed coefficient of this value may hold more
        # than its terms (an input's own top coefficient, a drift, reached it)
        self.top = False

    @property
    def const(self) -> bool:
        return self.rule is None

    def get(self, key: Key) -> Any:
        """Coefficient ``key`` as an array, or None for a structural zero."""
        return densify(self.get_narrow(key))

    def get_narrow(self, key: Key) -> Any:
        """Coefficient ``key``, possibly :class:`Narrow` (for rules that know it)."""
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


def one_hot(x, flat: int, batch_axis: int | None):
    """The unit direction ``e_flat`` of one sample of ``x`` (broadcast over the
    batch axis): the seed of a coordinate group."""
    shape = _common.sample_shape(x.shape, batch_axis)
    t = jnp.zeros(_common.numel(shape), x.dtype).at[flat].set(1).reshape(shape)
    if batch_axis is None:
        return t
    return jnp.broadcast_to(jnp.expand_dims(t, batch_axis % x.ndim), x.shape)


# -- coefficient arithmetic with None as zero ---------------------------------------------
add, scale, total = _common.add, _common.scale, _common.total


def sum_of_products(terms, product=lambda x, y: x * y):
    """``sum m * product(x, y)`` over ``(x, y, m)``, skipping structural zeros."""
    return total(scale(product(x, y), m) for x, y, m in terms
                 if x is not None and y is not None)


def family_sum(key: Key, value, pairwise: bool = False):
    """Sums per-direction terms of a collapsed key over its family of directions.
    ``pairwise``: by halves where that measured faster (NOTE [pairwise family sums])."""
    if value is None or not isinstance(key, _jets.Collapsed) or key.family is None:
        return value
    value = densify(value)
    if pairwise and _pairwise_here():
        return pairwise_sum(lax.all_gather(value, key.family))
    return lax.psum(value, key.family)


# NOTE [pairwise family sums]: the family sum of a product of two varying values
# (the cross terms ``sum_d a_d b_d`` of ``bilinear`` and of a composition) is a
# ``reduce_sum`` over the family axis once vmapped. XLA's CPU backend (jaxlib 0.10)
# hands such reductions, with the elementwise ops and matrix products around them,
# to YNNPACK fusions (jax-ml/jax#37465); where a program has several of them (a
# gated MLP, attention) those fusions took most of the time. Summing the gathered
# lanes by halves keeps them out of YNNPACK: log2(D) slice-adds that XLA fuses
# itself. The squares of a unary rule (``phi'' * sum_d a_d**2``) keep the psum:
# there YNNPACK's fusion was as fast or faster. Measured by ``python -m benchmarks
# zoo`` (results/zoo.md); other backends keep the psum, as nothing measured there
# says otherwise. ``PAIRWISE_FAMILY_SUMS = False`` turns it off.
PAIRWISE_FAMILY_SUMS = True


def _pairwise_here() -> bool:
    return PAIRWISE_FAMILY_SUMS and jax.default_backend() == "cpu"


def pairwise_sum(stacked):
    """``stacked.sum(0)`` as a tree of slice-adds: halves are added until one row
    is left; an odd row out is set aside and added at the end."""
    rest = None
    while stacked.shape[0] > 1:
        n = stacked.shape[0]
        if n % 2:
            rest = stacked[-1] if rest is None else rest + stacked[-1]
            stacked, n = stacked[:-1], n - 1
        stacked = stacked[: n // 2] + stacked[n // 2:]
    return stacked[0] if rest is None else stacked[0] + rest


def narrow_getter(jet: "Jet", key: Key):
    """``jet.get_narrow`` for plain keys; collapsed keys (operators) stay dense."""
    return jet.get if isinstance(key, _jets.Collapsed) else jet.get_narrow


def collapsed_sum(key: Key, terms, x, y, product=lambda u, v: u * v):
    """``sum m * product(x[t], y[r])`` over ``terms`` of ``key``: terms that hold
    ``key`` itself are family-wide already; the others are summed over the family."""
    if not isinstance(key, _jets.Collapsed) or key.family is None:
        return sum_of_products(((x(t), y(r), m) for t, r, m in terms), product)
    own = [(t, r, m) for t, r, m in terms if t == key or r == key]
    rest = [(t, r, m) for t, r, m in terms if t != key and r != key]
    # A common multiplicity (the 2 of a cross term ``2 sum_d a_d b_d``) scales the
    # family sum, value-sized, rather than every direction's product: XLA's CPU
    # fusions otherwise materialize the constant at the stacked size.
    common = {m for _, _, m in rest}
    c = common.pop() if len(common) == 1 else 1
    return add(sum_of_products(((x(t), y(r), m) for t, r, m in own), product),
               scale(family_sum(key, sum_of_products(((x(t), y(r), m / c)
                                                      for t, r, m in rest), product),
                                pairwise=True), c))


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


def bilinear(a: Jet, b: Jet, fn: Callable[[Any, Any], Any], narrow: bool = False) -> Jet:
    """``fn`` bilinear (mul, dot_general, conv): the Leibniz rule. ``narrow``:
    ``fn`` accepts :class:`Narrow` coefficients (elementwise products)."""
    primal = fn(a.primal, b.primal)
    if a.const and b.const:
        return const(primal)

    def rule(key):
        terms = _jets.product_terms(key)
        if a is b:  # a square: (t, r) and (r, t) are the same product
            terms = _symmetric(terms)
        if narrow:
            return collapsed_sum(key, terms, narrow_getter(a, key), narrow_getter(b, key), fn)
        return collapsed_sum(key, terms, a.get, b.get, fn)

    return Jet(primal, rule)


def _symmetric(terms):
    """Leibniz terms ``(t, r, m)`` of a product of a value with itself, with each
    unordered pair once (multiplicities added)."""
    merged: dict = {}
    for t, r, m in terms:
        first_t, first_r, total = merged.get(frozenset((t, r)), (t, r, 0))
        merged[frozenset((t, r))] = (first_t, first_r, total + m)
    return list(merged.values())


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
            out = add(out, collapsed_sum(key, _jets.composition_terms(key),
                                         narrow_getter(d, key), narrow_getter(p, key)))
        return out

    result.rule = rule
    return result


def shifted(a: Jet, g: int, groups: int) -> Jet:
    """The jet of ``d a / d x_g``: coefficient ``tau`` is ``a[tau + e_g]``."""
    e = _jets.unit(groups, g)
    if a.const:
        return const(jnp.zeros_like(a.primal))
    return Jet(a.dense(e), lambda t: a.get(tuple(x + y for x, y in zip(t, e))), expands=True)
