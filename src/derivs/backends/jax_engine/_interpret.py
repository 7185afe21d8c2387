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

from ...core import _jets, _regions
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
        exports = _fused_regions(jaxpr, env)  # NOTE [elementwise regions]
        for eqn in jaxpr.eqns:
            outs = self.eqn(eqn.primitive, eqn.params, [read(v) for v in eqn.invars])
            for v, j in zip(eqn.outvars, outs):
                region = exports.get(v)
                if region is not None:
                    j = self._fused(region, v, j, env)
                    j.top = j.top or any(env[u].top for u in (region.root,))
                env[v] = j
        return [read(v) for v in jaxpr.outvars]

    def _fused(self, region: "_Region", v, normal: Jet, env: dict) -> Jet:
        """The jet of a fused region's export ``v``: from the derivatives
        ``phi^(k)`` of the region at the root's value (JAX's own nested JVPs of the
        region, so custom_jvp rules apply). Orders <= 2 by Faa di Bruno with plain
        arrays; higher orders by the chain rule over the tower of jets
        ``phi^(k)(a)`` (each the chain rule of the next), never op by op."""
        if normal.const:
            return normal
        a = env[region.root]
        tower: dict[int, Jet] = {}

        def derivative_jet(k: int) -> Jet:  # the jet of phi^(k)(a)
            if k not in tower:
                tower[k] = _jet.chain([a], region.derivative(env, k)[v],
                                      lambda result, k=k: [derivative_jet(k + 1)])
            return tower[k]

        tower_jet = _jet.chain([a], normal.primal, lambda result: [derivative_jet(1)])

        def higher(key):
            # phi^(k) by k nested JVPs costs 2^k region evaluations: the tower serves
            # collapsed operators up to order 4 (Bi-Laplacians), whose lower keys
            # are few; pure and mixed partials keep the equations' own jets, whose
            # lower coefficients they need anyway
            if isinstance(key, _jets.Collapsed) and max(
                    sum(alpha) for _, alpha in key.terms) <= _TOWER_ORDER:
                return tower_jet.get_narrow(key)
            return normal.get_narrow(key)

        return _second_order_jet(a, normal.primal,
                                 lambda: (region.derivative(env, 1)[v],
                                          region.derivative(env, 2)[v]),
                                 higher)

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
        if any(j.top for j in jets):  # NOTE [own top]
            for j in outs:
                j.top = not j.const
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
        chain = self._chain_rule(prim, params, jets, primal)
        derivs: list = []

        def phi_derivatives():
            if not derivs:  # phi' and phi'' from JAX's JVP, run through the primal memo
                second = _second_jaxpr(prim, params, _avals(jets), i)
                consts = [_jet.const(j.primal) for j in jets]
                outs = self.run_closed(second, [*consts, _jet.const(jnp.ones_like(a.primal))])
                derivs.extend(o.primal for o in outs)
            return derivs

        return _second_order_jet(a, primal, phi_derivatives, chain.rule, into=chain)

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

        outs = [make(k) for k in range(len(primals))]
        tops = [i for i in diff if jets[i].top]
        if tops:  # NOTE [own top]
            for k, out in enumerate(outs):
                out.rule, out.expands = _with_own_top(self, prim, params, jets, tops, k,
                                                      out.rule), False
        return outs

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


def _second_order_jet(a: Jet, primal, phi_derivatives, higher, into: Jet | None = None) -> Jet:
    """``phi(a)`` for an elementwise ``phi`` of ``a``: keys of order <= 2 by Faa di
    Bruno with ``phi_derivatives() -> (phi', phi'')`` as plain arrays, higher keys
    by ``higher(key)``. ``into``: the jet to give this rule (its memo is then shared
    with the higher-order rule's own coefficients)."""
    def rule(key):
        pairs = _jets.second_order_pairs(key)
        if pairs is None:
            return higher(key)
        d1, d2 = phi_derivatives()
        get = _jet.narrow_getter(a, key)
        quad = _jet.family_sum(key, _jet.total(
            _jet.scale(get(t) * get(r), m) for t, r, m in pairs
            if get(t) is not None and get(r) is not None))
        first = get(key)
        return _jet.add(None if first is None else d1 * first,
                        None if quad is None else d2 * quad)

    jet = into if into is not None else Jet(primal, None)
    jet.rule = rule
    return jet


# -- NOTE [elementwise regions] ------------------------------------------------------------
# As in the PyTorch family program (``torch_engine/_pointwise.py``): a region of
# elementwise equations fed by one live value ``r`` (an activation: GELU's seven
# equations, ``jax.nn.softplus``'s custom_jvp ``logaddexp``, ELU's selects, or a
# whole ``jit``/``custom_jvp_call`` whose body is elementwise) is one function
# ``phi(r)`` element by element. Its exports (the members read outside it) get
# ``phi'`` and ``phi''`` from one nested ``jax.jvp`` of the region on values
# (XLA computes them once, whatever the number of directions), and the collapsed
# rule then runs once per region instead of once per equation. Orders above 2 keep
# the equation-by-equation jets, which are lazy and cost nothing unless read.
_POINTWISE = frozenset({
    "neg", "sign", "floor", "ceil", "round", "is_finite", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "sinh",
    "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow",
    "erf", "erfc", "erf_inv", "lgamma", "digamma", "abs", "add", "sub", "mul", "div",
    "rem", "max", "min", "atan2", "nextafter", "select_n", "clamp", "square",
    "convert_element_type", "copy", "copy_p", "eq", "ne", "lt", "le", "gt", "ge", "and",
    "or", "not", "xor", "reduce_precision", "add_any", "bessel_i0e", "bessel_i1e",
    "polygamma", "igamma", "igammac", "lgamma", "random_gamma_grad", "zeta"})
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call"})
# members that a linear rule takes alone (one live operand where it is linear)
_LINEAR = frozenset({"add", "sub", "neg", "copy", "copy_p", "convert_element_type",
                     "select_n", "reduce_precision", "add_any"})


def _body(eqn):
    body = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
    return body.jaxpr if isinstance(body, jcore.ClosedJaxpr) else body


def _pointwise(eqn, live_in: list[bool]) -> bool:
    """Whether ``eqn`` is elementwise in its live inputs (one output)."""
    if len(eqn.outvars) != 1:
        return False
    name = eqn.primitive.name
    if name in _POINTWISE:
        return True
    if name in _CALLS:
        body = _body(eqn)
        return body is not None and _pointwise_body(body, live_in)
    return False


def _pointwise_body(jaxpr, live_in: list[bool]) -> bool:
    """Every equation a live input reaches is elementwise, at one shape."""
    live = {v for v, flag in zip(jaxpr.invars, live_in) if flag}
    shapes = {tuple(v.aval.shape) for v in live}
    for eqn in jaxpr.eqns:
        flags = [isinstance(v, jcore.Var) and v in live for v in eqn.invars]
        if not any(flags):
            continue
        if not _pointwise(eqn, flags):
            return False
        live.update(eqn.outvars)
        shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
    return len(shapes) <= 1


def _nonlinear(eqn, live_in: list[bool]) -> bool:
    name = eqn.primitive.name
    if name in _LINEAR:
        return False
    if name == "mul":
        return sum(live_in) > 1
    if name == "div":
        return live_in[1]
    return True


_TOWER_ORDER = 4


class _Region:
    """A fused region: its root, member equations in order, and exports."""

    def __init__(self, root, eqns: list, exports: list):
        self.root, self.eqns, self.exports = root, eqns, exports
        self._derivatives: list[dict] = []  # k - 1 -> {export: phi^(k)}

    def derivative(self, env: dict, k: int) -> dict:
        """``export -> phi^(k)`` at the root's value, by ``k`` nested JVPs along 1
        (computed once for all exports and every order up to ``k``)."""
        while len(self._derivatives) < k:
            self._derivatives.append(self._nested(env, len(self._derivatives) + 1))
        return self._derivatives[k - 1]

    def _nested(self, env: dict, k: int) -> dict:
        def phi(r):
            vals = {self.root: r}
            for eqn in self.eqns:
                ins = [v.val if isinstance(v, jcore.Literal) else
                       vals[v] if v in vals else env[v].primal for v in eqn.invars]
                out = bind(eqn.primitive, eqn.params, *ins)
                vals[eqn.outvars[0]] = out[0] if eqn.primitive.multiple_results else out
            return [vals[v] for v in self.exports]

        r0 = env[self.root].primal
        one = jnp.ones_like(r0)
        g = phi
        for _ in range(k):
            g = (lambda h: lambda r: jax.jvp(h, (r,), (one,))[1])(g)
        return dict(zip(self.exports, g(r0)))


def _fused_regions(jaxpr, env: dict) -> dict:
    """``export var -> _Region`` for the fused regions of ``jaxpr`` given the jets
    of its inputs (NOTE [elementwise regions])."""
    live = {v for v, j in env.items() if not j.const}
    if not live:
        return {}
    items, flags = [], {}
    for eqn in jaxpr.eqns:
        live_in = [isinstance(v, jcore.Var) and v in live for v in eqn.invars]
        if not any(live_in):
            continue
        outs = [v for v in eqn.outvars if is_float(np.zeros((), v.aval.dtype))]
        live.update(outs)
        if len(eqn.outvars) == 1 and outs:
            ok = _pointwise(eqn, live_in)
            flags[outs[0]] = (eqn, live_in)
            items.append((outs[0], [v for v, f in zip(eqn.invars, live_in) if f], ok))
    if not items:
        return {}
    root_of = _regions.elementwise_regions(
        items, key=lambda v: (tuple(v.aval.shape), v.aval.dtype))
    groups = _regions.by_root(root_of)
    if not groups:
        return {}
    member_of = {}
    for root, members in groups.items():
        if any(_nonlinear(*flags[m]) for m in members):
            member_of.update((m, root) for m in members)
    outputs = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    read_outside: set = set()
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0] if len(eqn.outvars) == 1 else None
        for v in eqn.invars:
            if isinstance(v, jcore.Var) and v in member_of and (
                    out is None or member_of.get(out) is not member_of[v]):
                read_outside.add(v)
    regions = {}
    for root in {member_of[m] for m in member_of}:
        members = [m for m in groups[root]]
        exports = [m for m in members if m in read_outside or m in outputs]
        if exports:
            region = _Region(root, [flags[m][0] for m in members], exports)
            regions.update((v, region) for v in exports)
    return regions


# NOTE [own top]: a jet that knows count vectors only (``expands``: the JVP
# recursion) sums a collapsed key from its terms, ``L phi(a) = sum_alpha c_alpha
# phi(a)[alpha]``. That is the whole operator only when every input's collapsed
# coefficient is the sum of its terms. An input's own top coefficient (a drift
# ``b . grad f`` entering as the input's top, ``core._jets.Collapsed``) is not:
# ``a[K] = sum_alpha c_alpha a[alpha] + r`` with the residual ``r`` (the drift,
# carried forward through the rules), and ``L phi(a) = sum_alpha c_alpha
# phi(a)[alpha] + D phi(a)[r]``. Jets that such a residual reaches carry ``top``,
# and the JVP recursion adds ``D phi(a)[r]`` (one JVP of the primitive) for them.
def _with_own_top(it: "Interpreter", prim, params, jets: list[Jet], tops: list[int], k: int,
                  counts):
    def expanded(key, get):
        return _jet.family_sum(key, _jet.total(_jet.scale(get(alpha), c)
                                               for c, alpha in key.terms))

    def rule(key):
        if not isinstance(key, _jets.Collapsed):
            return counts(key)
        out = expanded(key, lambda alpha: _jet.densify(counts(alpha)))
        residuals = {}
        for i in tops:
            whole = jets[i].get(key)
            r = _jet.add(whole, None if whole is None else
                         _jet.scale(expanded(key, jets[i].get), -1.0))
            if r is not None:
                residuals[i] = r
        if not residuals:
            return out
        primals = [j.primal for j in jets]
        live = tuple(residuals)

        def g(*xs):
            full = list(primals)
            for i, x in zip(live, xs):
                full[i] = x
            return bind(prim, params, *full)

        _, tangent = jax.jvp(g, tuple(primals[i] for i in live),
                             tuple(residuals[i] for i in live))
        tangent = tangent[k] if prim.multiple_results else tangent
        return _jet.add(out, tangent)

    return rule
