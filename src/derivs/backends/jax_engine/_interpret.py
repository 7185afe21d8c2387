"""A jaxpr interpreter that carries jets (``_jet.Jet``) instead of values.

Every equation whose inputs are all constant is simply evaluated. Otherwise the
primitive's rule from the engine's one registry (``_registry.py``, filled by
``_rules.py``: linear, bilinear, elementwise and dedicated rules) builds the output
jets. Anything else, including ``custom_jvp`` functions (whose custom rule is used,
never bypassed), runs the JVP recursion ``v[kappa] = jvp(phi)(a, d_g a)[kappa -
e_g]``, i.e. JAX's JVP of the primitive interpreted on jets one order lower. Exact,
and as cheap as the chain rule for elementwise functions.

NOTE [memo]: equations are memoized on (primitive, params, input jets), so the
``tan(x)`` inside the JVP of ``tan`` is the very jet being computed, and its lower
coefficients are reused instead of recomputed at every order.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from ...core import _jets
from .. import _varying
from . import _registry
from . import _jet
from ._jet import Jet
from ._registry import Unsupported as Unsupported  # raised by rules and the interpreter


def bind(prim, params: dict, *args):
    # As jax.core.eval_jaxpr does: call primitives turn params back into functions.
    return prim.bind(*_match_varying(params, args), **prim.get_bind_params(params))


def _match_varying(params: dict, args: tuple) -> tuple:
    """NOTE [varying axes] (``backends/_varying.py``): operands cast up to the varying
    manual axes of the others, so that the rules work inside ``jax.shard_map``.
    Higher-order primitives (calls, control flow) are left alone: their inner jaxprs
    fix their operands' types, and mixing is allowed there."""
    if len(args) < 2 or any(isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))
                            for v in params.values()):
        return args
    return _varying.match(args)


def is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class Interpreter:
    """Jets for one pass over ``groups`` coordinate groups."""

    def __init__(self, groups: int, batch_axis: int | None = None):
        self.groups = groups
        self.batch_axis = batch_axis
        self._memo: dict[Any, tuple[list[Jet], list[Jet]]] = {}
        self._primal_memo: dict[Any, tuple[Any, tuple]] = {}

    def bind(self, prim, params: dict, *args):
        """``bind`` memoized on the operand arrays themselves: a primitive of the same
        primal reached through different jets (the value, the chain rule's ``phi'``
        jaxpr, the order-2 fast path) is emitted once, e.g. one ``cos(a)`` per ``a``
        instead of one per route (XLA's CSE merges most copies, but each copy costs
        trace and compile time first)."""
        pk = _params_key(params)
        if pk is None:
            return bind(prim, params, *args)
        key = (prim, pk, tuple(id(a) for a in args))
        hit = self._primal_memo.get(key)
        if hit is None:
            hit = self._primal_memo[key] = (bind(prim, params, *args), args)  # keep alive
        return hit[0]

    # -- jaxprs -----------------------------------------------------------------------
    def run(self, jaxpr: jcore.Jaxpr, consts: list[Jet], args: list[Jet]) -> list[Jet]:
        env: dict[Any, Jet] = {}

        def read(v):
            return _jet.const(v.val) if isinstance(v, jcore.Literal) else env[v]

        for v, j in zip(jaxpr.constvars, consts):
            env[v] = j
        for v, j in zip(jaxpr.invars, args):
            env[v] = j
        for eqn in jaxpr.eqns:
            outs = self.eqn(eqn.primitive, eqn.params, [read(v) for v in eqn.invars])
            for v, j in zip(eqn.outvars, outs):
                env[v] = j
        return [read(v) for v in jaxpr.outvars]

    def run_closed(self, closed: jcore.ClosedJaxpr, args: list[Jet]) -> list[Jet]:
        # NumPy constants of the jaxpr (a NumPy exponent in x ** p) become JAX arrays
        # here, once: arithmetic on coefficients must never mix the two array types.
        consts = [jnp.asarray(c) if isinstance(c, np.ndarray) else c for c in closed.consts]
        return self.run(closed.jaxpr, [_jet.const(c) for c in consts], args)

    # -- equations ----------------------------------------------------------------------
    def eqn(self, prim, params: dict, jets: list[Jet]) -> list[Jet]:
        if all(j.const for j in jets):
            out = self.bind(prim, params, *[j.primal for j in jets])
            return [_jet.const(o) for o in (out if prim.multiple_results else [out])]
        key = _memo_key(prim, params, jets)
        if key is not None and key in self._memo:
            return self._memo[key][0]
        outs = self._rule(prim, params, jets)
        # Integer and boolean results (comparisons, argmax, indices) carry no derivative.
        outs = [j if is_float(j.primal) else _jet.const(j.primal) for j in outs]
        if key is not None:
            self._memo[key] = (outs, jets)  # keeps the input jets (and their ids) alive
        return outs

    def _rule(self, prim, params: dict, jets: list[Jet]) -> list[Jet]:
        name = prim.name
        if name in _registry.UNSUPPORTED:
            raise Unsupported(f"{name}: {_registry.UNSUPPORTED[name]}")
        rule = _registry.RULES.get(name)
        if rule is not None:
            return rule(self, prim, params, jets)
        return self.jvp_recursion(prim, params, jets)

    # -- the rule kinds the registry's helpers name (``_registry.py``) ------------------
    def linear(self, prim, params: dict, jets: list[Jet]) -> list[Jet]:
        return _linear(prim, params, jets, [not is_float(j.primal) for j in jets])

    def bilinear(self, prim, params: dict, jets: list[Jet], product=None) -> list[Jet]:
        a, b = jets
        if product is None:
            return [_jet.bilinear(a, b, lambda x, y: bind(prim, params, x, y))]
        return [_jet.bilinear(a, b, product(prim, params), narrow=True)]

    def elementwise_rule(self, prim, params: dict, jets: list[Jet]) -> list[Jet]:
        if prim.multiple_results:
            return self.jvp_recursion(prim, params, jets)
        return [self.elementwise(prim, params, jets)]

    def elementwise(self, prim, params: dict, jets: list[Jet]) -> Jet:
        primal = self.bind(prim, params, *[j.primal for j in jets])
        live = [i for i, j in enumerate(jets) if not j.const]
        if len(live) == 1:
            return self._unary(prim, params, jets, live[0], primal)
        return self._chain_rule(prim, params, jets, primal)

    def _chain_rule(self, prim, params, jets, primal) -> Jet:

        def psis(result: Jet) -> list[Jet | None]:
            by_output = _registry.OUTPUT_DERIVATIVES.get(prim.name)
            if by_output is not None and sum(not j.const for j in jets) == 1:
                return [None if j.const else by_output(result) for j in jets]
            out = []
            for i, j in enumerate(jets):
                if j.const:
                    out.append(None)
                    continue
                one = _jet.const(jnp.ones_like(j.primal))
                lin = _jvp_jaxpr(prim, _params_key(params), params, _avals(jets), (i,))
                out.append(self.run_closed(lin, [*jets, one])[0])
            return out

        return _jet.chain(jets, primal, psis)

    def _unary(self, prim, params, jets, i, primal) -> Jet:
        """``phi(a)`` in one live input. Orders <= 2 (first and second derivatives,
        Laplacians, Hessian diagonals) use Faa di Bruno with ``phi'`` and ``phi''``
        as plain arrays: ``phi(a)[k] = phi' a[k] + phi'' a[t] a[k-t]``, so the
        per-direction work is one product instead of a jet of ``phi'``. Higher
        orders use the general chain rule."""
        a = jets[i]
        # One jet: higher orders run the general chain rule, whose lower
        # coefficients are then this jet's own (computed once, here).
        jet = self._chain_rule(prim, params, jets, primal)
        chain_rule = jet.rule
        derivs: list = []

        def phi_derivatives():
            if not derivs:  # phi' and phi'' from JAX's JVP, run through the primal memo
                second = _second_jaxpr(prim, params, _avals(jets), i)
                consts = [_jet.const(j.primal) for j in jets]
                outs = self.run_closed(second, [*consts, _jet.const(jnp.ones_like(a.primal))])
                derivs.extend(o.primal for o in outs)
            return derivs

        def rule(key):
            pairs = _jets.second_order_pairs(key)
            if pairs is None:
                return chain_rule(key)
            d1, d2 = phi_derivatives()
            get = _jet.narrow_getter(a, key)
            quad = _jet.family_sum(key, _jet.total(
                _jet.scale(get(t) * get(r), m) for t, r, m in pairs
                if get(t) is not None and get(r) is not None))
            first = get(key)
            return _jet.add(None if first is None else d1 * first,
                            None if quad is None else d2 * quad)

        jet.rule = rule
        return jet

    def jvp_recursion(self, prim, params: dict, jets: list[Jet]) -> list[Jet]:
        """``phi(a)[kappa] = jvp(phi)(a, d_g a)[kappa - e_g]`` with ``g`` the last
        group of ``kappa``: JAX's JVP of the primitive, interpreted one order lower."""
        primals = self.bind(prim, params, *[j.primal for j in jets])
        primals = primals if prim.multiple_results else [primals]
        diff = tuple(i for i, j in enumerate(jets) if not j.const and is_float(j.primal))
        tangents_of: dict[int, list[Jet]] = {}

        def tangent_jets(g: int) -> list[Jet]:
            if g not in tangents_of:
                lin = _jvp_jaxpr(prim, _params_key(params), params, _avals(jets), diff)
                shifted = [_jet.shifted(jets[i], g, self.groups) for i in diff]
                tangents_of[g] = self.run_closed(lin, [*jets, *shifted])
            return tangents_of[g]

        def make(k: int):
            def rule(kappa):
                g = max(i for i, c in enumerate(kappa) if c)
                reduced = tuple(c - (i == g) for i, c in enumerate(kappa))
                return tangent_jets(g)[k].get(reduced)
            return Jet(primals[k], rule, expands=True)

        return [make(k) for k in range(len(primals))]

    def rebuild(self, coeffs: dict) -> Jet:
        """A jet with exactly the given coefficients (a dense evaluation's input)."""
        zero = _jets.zero(self.groups)
        primal = coeffs[zero]
        if all(v is None for k, v in coeffs.items() if k != zero):
            return _jet.const(primal)
        jet = Jet(primal, lambda key: None)
        jet.memo.update({k: v for k, v in coeffs.items() if k != zero})
        return jet


def _linear(prim, params, jets: list[Jet], fixed: list[bool]) -> list[Jet]:
    """A primitive jointly linear in its non-fixed operands: one bind per
    coefficient, shared by all of its outputs."""
    primals = bind(prim, params, *[j.primal for j in jets])
    cache: dict[Any, Any] = {}
    live = [j for j, f in zip(jets, fixed) if not f]

    def coefficient(key):
        if key not in cache and prim.name == "reduce_sum" and len(live) == 1:
            v = live[0].get_narrow(key)
            if isinstance(v, _jet.Narrow) and v.static:  # sum only the nonzero positions
                cache[key] = _narrow_reduce_sum(v, params["axes"], primals)
        if key not in cache:
            if all(j.get(key) is None for j, f in zip(jets, fixed) if not f):
                cache[key] = None
            else:
                args = [j.primal if f else j.dense(key) for j, f in zip(jets, fixed)]
                cache[key] = bind(prim, params, *args)
        return cache[key]

    if not prim.multiple_results:
        return [Jet(primals, coefficient)]

    def output(k):
        def rule(key):
            out = coefficient(key)
            return None if out is None else out[k]
        return Jet(primals[k], rule)

    return [output(k) for k in range(len(primals))]


def _narrow_reduce_sum(v, axes, out):
    """``reduce_sum`` of a narrow coefficient: a segment sum of its values into
    the output positions (a scalar sum when every axis is reduced)."""
    if len(axes) == len(v.shape):
        return v.values.sum().astype(out.dtype).reshape(out.shape)
    coords = np.unravel_index(v.positions, v.shape)
    kept = [c for i, c in enumerate(coords) if i not in set(axes)]
    target = np.ravel_multi_index(kept, out.shape) if kept else np.zeros_like(v.positions)
    flat = jnp.zeros(int(np.prod(out.shape, dtype=np.int64)), v.values.dtype).at[target].add(
        v.values)
    return flat.reshape(out.shape)


# -- JVP jaxprs of single primitives, cached by abstract signature -----------------------------
def _avals(jets: list[Jet]) -> tuple:
    out = []
    for j in jets:
        a = jax.typeof(j.primal) if hasattr(jax, "typeof") else jcore.get_aval(j.primal)
        out.append(jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False)))
    return tuple(out)


def _jvp_jaxpr(prim, params_key, params: dict, avals: tuple, diff: tuple[int, ...]):
    if params_key is None:
        return _make_jvp_jaxpr(prim, params, avals, diff)
    return _cached_jvp_jaxpr(prim, params_key, avals, diff, _varying.abstract_mesh(),
                             _Box(params))


class _Box:
    """Carries unhashable params past lru_cache; equality is not used for lookup."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return True


# The abstract mesh is part of these caches' keys: a jaxpr traced inside
# ``shard_map`` (manual axes) holds that mesh in its types and must not be reused
# outside it, nor the other way round.
@functools.lru_cache(maxsize=1024)
def _cached_jvp_jaxpr(prim, params_key, avals, diff, mesh, box):
    return _make_jvp_jaxpr(prim, box.value, avals, diff)


def _make_jvp_jaxpr(prim, params, avals, diff):
    n = len(avals)

    def lin(*args):
        primals, tangents = list(args[:n]), args[n:]

        def g(*dx):
            full = list(primals)
            for i, v in zip(diff, dx):
                full[i] = v
            return bind(prim, params, *full)

        _, out = jax.jvp(g, tuple(primals[i] for i in diff), tuple(tangents))
        return out if prim.multiple_results else [out]

    return jax.make_jaxpr(lin)(*avals, *[avals[i] for i in diff])


def _second_jaxpr(prim, params: dict, avals: tuple, i: int):
    """``(primals..., one) -> (phi', phi'')`` along input ``i``, as a jaxpr."""
    params_key = _params_key(params)
    if params_key is None:
        return _make_second_jaxpr(prim, params, avals, i)
    return _cached_second_jaxpr(prim, params_key, avals, i, _varying.abstract_mesh(),
                                _Box(params))


@functools.lru_cache(maxsize=512)
def _cached_second_jaxpr(prim, params_key, avals, i, mesh, box):
    return _make_second_jaxpr(prim, box.value, avals, i)


def _make_second_jaxpr(prim, params: dict, avals: tuple, i: int):
    n = len(avals)

    def both(*args):
        primals, one = list(args[:n]), args[n]

        def phi(z):
            full = list(primals)
            full[i] = z
            return bind(prim, params, *full)

        d1 = lambda z: jax.jvp(phi, (z,), (one,))[1]  # noqa: E731
        return list(jax.jvp(d1, (primals[i],), (one,)))

    return jax.make_jaxpr(both)(*avals, avals[i])


def _params_key(params: dict):
    try:
        key = tuple(sorted(params.items()))
        hash(key)
        return key
    except TypeError:
        return None


def _memo_key(prim, params, jets):
    pk = _params_key(params)
    if pk is None:
        return None
    return (prim, pk, tuple(id(j) for j in jets))
