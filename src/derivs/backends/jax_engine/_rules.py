"""The JAX engine's jet rules, registered in its one registry (``_registry.py``).

Each rule is ``rule(interpreter, primitive, params, input_jets) -> output jets``:

* primitives linear in their floating-point operands (reshape, slicing, sums,
  concatenation, select, gather/scatter, ...): coefficient-wise (``deflinear``);
* bilinear ones (mul, dot_general, conv): the Leibniz rule (``defbilinear``), with
  narrow coefficients kept narrow through ``mul`` and ``dot_general``;
* elementwise nonlinear ones (sin, tan, atan, pow, logistic, max, ...): the chain
  rule (``defelementwise``), tanh, logistic and tan with phi' from the output;
* dedicated rules below: calls, constants, division, products along axes, control
  flow.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from ...core import _formulas, _jets
from . import _jet
from ._interpret import Interpreter, bind, is_float
from ._jet import Jet
from ._registry import defbilinear, defelementwise, deflinear, defrule, defunsupported

deflinear(
    "neg", "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "rev", "reduce_sum", "copy", "copy_p", "convert_element_type", "cumsum",
    "reduce_precision", "pad", "concatenate", "add", "sub", "add_any", "select_n",
    "dynamic_slice", "dynamic_update_slice", "gather", "scatter-add", "scatter_add",
    "scatter", "sharding_constraint", "real", "imag", "complex", "conj", "split", "mesh_cast",
    "reshard", "pvary")
# Forward-mode derivatives through custom_vjp functions are undefined in JAX too.
defunsupported("custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin",
               reason="forward-mode derivatives of custom_vjp functions are not defined "
               "(give the function a custom_jvp rule)")


# -- calls: interpret the callee inline -------------------------------------------------
@defrule("pjit", "jit", "closed_call", "core_call")
def _call(it: Interpreter, prim, params, jets):
    return it.run_closed(params.get("jaxpr") or params["call_jaxpr"], jets)


@defrule("remat", "remat2", "checkpoint")
def _remat(it: Interpreter, prim, params, jets):
    # Rematerialization only changes what reverse mode stores; forward jets ignore it.
    return it.run(params["jaxpr"], [], jets)


@defrule("stop_gradient")
def _stop_gradient(it, prim, params, jets):
    return [_jet.const(jets[0].primal)]


@defrule("div")
def _div(it: Interpreter, prim, params, jets):
    a, b = jets
    if b.const:  # linear in the numerator
        return [_jet.linear([a], lambda x: lax.div(x, b.primal))]
    return [it.elementwise(prim, params, jets)]


# -- products along axes ----------------------------------------------------------------
@defrule("reduce_prod")
def _reduce_prod(it: Interpreter, prim, params, jets):
    (a,) = jets
    axes = tuple(sorted(params["axes"]))
    shape = a.primal.shape
    if a.seeds is not None and _seeded_axes(it, shape) == axes:
        return [_prod_of_seeds(a, axes)]
    # General case: a balanced tree of pairwise products (log depth, shared with
    # the PyTorch engine: ``_formulas.product_tree``), over the reduced axes moved
    # last and flattened.
    keep = [d for d in range(len(shape)) if d not in axes]
    perm = keep + list(axes)
    kept_shape = tuple(shape[d] for d in keep)
    n = 1
    for d in axes:
        n *= shape[d]
    flat_shape = kept_shape + (n,)  # bound now: coefficients are computed later
    x = _jet.linear([a], lambda v: jnp.reshape(jnp.transpose(v, perm), flat_shape))
    ones = _jet.const(jnp.ones(kept_shape + (1,), a.primal.dtype))
    x = _formulas.product_tree(
        x, n,
        pad=lambda u: _jet.linear([u, ones], lambda v, o: jnp.concatenate([v, o], axis=-1)),
        halves=lambda u, h, n: (_jet.linear([u], lambda v: v[..., :h]),
                                _jet.linear([u], lambda v: v[..., h:])),
        mul=lambda u, w: _jet.bilinear(u, w, lambda p, q: p * q))
    return [_jet.linear([x], lambda v: v[..., 0])]


def _seeded_axes(it: Interpreter, shape) -> tuple[int, ...] | None:
    """The axes of one sample of a seeded input."""
    if it.batch_axis is None:
        return tuple(range(len(shape)))
    b = it.batch_axis % len(shape)
    return tuple(d for d in range(len(shape)) if d != b)


def _prod_of_seeds(a: Jet, axes: tuple[int, ...]) -> Jet:
    """prod over the seeded entries: ``_formulas.multilinear_rule``."""
    seeds = a.seeds
    x = a.primal
    keep = [d for d in range(x.ndim) if d not in axes]
    flat = jnp.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim))).reshape(
        tuple(x.shape[d] for d in keep) + (-1,))

    rule = _formulas.multilinear_rule(
        seeds, lambda positions: jnp.prod(flat.at[..., jnp.array(positions)].set(1), axis=-1))
    return Jet(jnp.prod(flat, axis=-1), rule, expands=True)


# -- control flow ---------------------------------------------------------------------------
def _dense_rule(it: Interpreter, jets: list[Jet], primals: list, compute) -> list[Jet]:
    """Output jets whose coefficient ``key`` comes from one dense evaluation
    ``compute(key, coeffs)``, given every input coefficient in the lower set of
    ``key`` (``coeffs[i][t]``: array or None); it returns the outputs' ``key``
    coefficients. Control flow cannot be lazy inside, so each key reruns the
    construct with its lower set; orders are small, so this stays cheap."""
    cache: dict = {}

    def make(k):
        def rule(key):
            if key not in cache:
                keys = _jets.closure(key)
                cache[key] = compute(key, keys, [{t: j.get(t) for t in keys} for j in jets])
            return cache[key][k]
        return Jet(primals[k], rule)

    return [make(k) if is_float(p) else _jet.const(p) for k, p in enumerate(primals)]


def _pack(coeffs: dict, keys) -> tuple[list, list]:
    """Nonzero coefficients as a list, and the keys they belong to (static)."""
    present = [t for t in keys if coeffs[t] is not None]
    return [coeffs[t] for t in present], present


def _unpack(it: Interpreter, values, present, keys) -> Jet:
    d = {t: None for t in keys}
    d.update(zip(present, values))
    return it.rebuild(d)


@defrule("cond")
def _cond(it: Interpreter, prim, params, jets):
    index, *ops = jets
    branches = params["branches"]
    primals = bind(prim, params, *[j.primal for j in jets])

    def compute(key, keys, coeffs):
        packed = [_pack(c, keys) for c in coeffs[1:]]

        def branch_fn(br):
            def fn(*flat):
                inputs, pos = [], 0
                for vals, present in packed:
                    inputs.append(_unpack(it, flat[pos:pos + len(vals)], present, keys))
                    pos += len(vals)
                return [o.dense(key) for o in Interpreter(it.groups, it.batch_axis).run_closed(
                    br, inputs)]
            return fn

        flat = [v for vals, _ in packed for v in vals]
        return lax.switch(index.primal, [branch_fn(br) for br in branches], *flat)

    return _dense_rule(it, jets, primals, compute)


def _dense_carry(coeffs: dict, keys, like) -> list:
    return [jnp.zeros_like(like) if coeffs[t] is None else coeffs[t] for t in keys]


@defrule("scan")
def _scan(it: Interpreter, prim, params, jets):
    body = params["jaxpr"]
    nc, ncar = params["num_consts"], params["num_carry"]
    primals = bind(prim, params, *[j.primal for j in jets])

    def compute(key, keys, coeffs):
        consts = [it.rebuild(c) for c in coeffs[:nc]]
        carry0 = [_dense_carry(c, keys, j.primal) for c, j in zip(coeffs[nc:nc + ncar],
                                                                  jets[nc:nc + ncar])]
        xs_packed = [_pack(c, keys) for c in coeffs[nc + ncar:]]

        def step(carry, xs):
            inner = Interpreter(it.groups, it.batch_axis)
            cjets = [it.rebuild(dict(zip(keys, c))) for c in carry]
            xjets = [_unpack(it, x, present, keys) for x, (_, present) in zip(xs, xs_packed)]
            outs = inner.run_closed(body, [*consts, *cjets, *xjets])
            new = [[o.dense(t) for t in keys] for o in outs[:ncar]]
            new = [[v.astype(c.dtype) for v, c in zip(n, old)] for n, old in zip(new, carry)]
            return new, [o.dense(key) for o in outs[ncar:]]

        carry, ys = lax.scan(step, carry0, [vals for vals, _ in xs_packed],
                             length=params["length"], reverse=params["reverse"],
                             unroll=params.get("unroll", 1))
        return [c[keys.index(key)] for c in carry] + list(ys)

    return _dense_rule(it, jets, primals, compute)


@defrule("while")
def _while(it: Interpreter, prim, params, jets):
    cnc, bnc = params["cond_nconsts"], params["body_nconsts"]
    cond_jaxpr, body = params["cond_jaxpr"], params["body_jaxpr"]
    batched = bool(cond_jaxpr.out_avals[0].shape)  # JAX's while with a batched predicate
    primals = bind(prim, params, *[j.primal for j in jets])
    zero = _jets.zero(it.groups)

    def compute(key, keys, coeffs):
        cconsts = [j.primal for j in jets[:cnc]]
        bconsts = [it.rebuild(c) for c in coeffs[cnc:cnc + bnc]]
        init = [_dense_carry(c, keys, j.primal) for c, j in zip(coeffs[cnc + bnc:],
                                                                jets[cnc + bnc:])]

        def pred(carry):
            return jcore.jaxpr_as_fun(cond_jaxpr)(*cconsts,
                                       *[c[keys.index(zero)] for c in carry])[0]

        def body_fn(carry):
            inner = Interpreter(it.groups, it.batch_axis)
            cjets = [it.rebuild(dict(zip(keys, c))) for c in carry]
            outs = inner.run_closed(body, [*bconsts, *cjets])
            new = [[o.dense(t).astype(c.dtype) for t, c in zip(keys, old)]
                   for o, old in zip(outs, carry)]
            if not batched:
                return new
            # a batched predicate (a vmapped loop, e.g. jax.scipy.special.hyp1f1):
            # elements whose predicate held on the old carry take the new values
            p = pred(carry)
            return [[jnp.where(p.reshape(p.shape + (1,) * (n.ndim - p.ndim)), n, o)
                     for n, o in zip(new_c, old_c)] for new_c, old_c in zip(new, carry)]

        cond_fn = (lambda carry: jnp.any(pred(carry))) if batched else pred
        final = lax.while_loop(cond_fn, body_fn, init)
        return [c[keys.index(key)] for c in final]

    return _dense_rule(it, jets, primals, compute)


# -- products and elementwise functions -------------------------------------------------
def _square(v: Jet) -> Jet:
    return _jet.bilinear(v, v, lambda x, y: x * y)


def _from_output(poly: _formulas.Poly):
    """phi' as the jet of ``c0 + c1 y + c2 y^2`` in the output's jet ``y``.

    NOTE [derivatives from the output] (``core._formulas``): the chain rule at
    orders >= 3 propagates the jet of phi'. JAX's JVP rules write tanh' as
    (1 + y)(1 - y) and logistic' as y (1 - y): products of two different jets, a
    full Leibniz sum per order. With y^2 a square, whose Leibniz terms pair up
    (see ``_jet.bilinear``), there are fewer products (pure d^4 of the benchmark's
    tanh MLP: 56 multiplies and 23 additions in the optimized program, from 62 and
    30; nested jax.jvp compiles to 40 and 40)."""
    c0, c1, c2 = poly  # quadratic: a square and a linear part

    def weighted(c: float, v):
        return v if c == 1.0 else -v if c == -1.0 else c * v

    def phi_prime(y: Jet) -> Jet:
        if c1:
            lin = _jet.linear([y, _square(y)],
                              lambda a, b: weighted(c1, a) + weighted(c2, b))
        else:
            lin = _jet.linear([_square(y)], lambda b: weighted(c2, b))
        return Jet(c0 + lin.primal, lin.get) if c0 else lin
    return phi_prime


def _narrow_mul(prim, params):
    def mul(x, y):
        if isinstance(x, _jet.Narrow) or isinstance(y, _jet.Narrow):
            return x * y
        return bind(prim, params, x, y)
    return mul


def _narrow_dot(prim, params):
    """``dot_general`` where one factor may be a narrow vector contracted along its
    only axis (a seeded input entering a dense layer): only the rows of the other
    factor at the nonzero positions are read."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]

    def dot(x, y):
        nx, ny = isinstance(x, _jet.Narrow), isinstance(y, _jet.Narrow)
        if nx and not ny and not lb and len(x.shape) == 1 and tuple(lc) == (0,):
            return bind(prim, params, x.values, jnp.take(y, x.positions, axis=rc[0]))
        if (nx and not ny and not lb and x.column is not None and tuple(lc) == (1,)
                and len(rc) == 1):  # one column per row: every row reads one row of y
            row = jnp.take(y, x.column, axis=rc[0])
            dtype = params.get("preferred_element_type") or jnp.result_type(x.values, y)
            out = (x.values.astype(dtype).reshape((-1,) + (1,) * row.ndim)
                   * row.astype(dtype)[None])
            return out
        if ny and not nx and not rb and len(y.shape) == 1 and tuple(rc) == (0,):
            return bind(prim, params, jnp.take(x, y.positions, axis=lc[0]), y.values)
        return bind(prim, params, _jet.densify(x), _jet.densify(y))
    return dot


defbilinear("mul", product=_narrow_mul)  # elementwise: narrow coefficients stay narrow
defbilinear("dot_general", product=_narrow_dot)
defbilinear("conv_general_dilated")
defelementwise("tanh", by_output=_from_output(_formulas.OUTPUT_POLYNOMIALS["tanh"]))
defelementwise("logistic", by_output=_from_output(_formulas.OUTPUT_POLYNOMIALS["sigmoid"]))
defelementwise("tan", by_output=_from_output(_formulas.OUTPUT_POLYNOMIALS["tan"]))
defelementwise(
    "sin", "cos", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
    "atanh", "exp", "exp2", "log", "log1p", "expm1", "sqrt", "rsqrt", "cbrt",
    "integer_pow", "pow", "erf", "erfc", "erf_inv", "lgamma", "digamma", "abs", "sign",
    "max", "min", "atan2", "rem", "square", "floor", "ceil", "round", "clamp", "nextafter")
