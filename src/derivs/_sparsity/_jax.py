"""JAX side of sparse derivatives: detection entry points, compressed passes
(vmapped JVPs, VJPs or Hessian-vector products over the color seeds) and
native outputs. Everything after detection is traceable, so a prepared sparse
derivative runs under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import _jax_detect
from ..backends import _varying

name = "jax"


def _bind(fun, args, argnum, has_aux):
    """``x -> (f(..., x, ...), aux)`` for the selected argument."""
    def f_x(x):
        full = list(args)
        full[argnum] = x
        out = fun(*full)
        return out if has_aux else (out, None)
    return f_x


def detect(kind, fun, args, argnum, has_aux, unknown):
    if kind == "jacobian":
        target = (lambda *a: fun(*a)[0]) if has_aux else fun
    else:  # the Hessian pattern is the Jacobian pattern of the gradient
        grad = jax.grad(fun, argnums=argnum, has_aux=has_aux)
        target = (lambda *a: grad(*a)[0]) if has_aux else grad
    # The pattern reads the values f closes over (zeros of constant arrays): it holds
    # while the state guard of what f reads holds (JAX arrays cannot change in place,
    # so identities, Python values and NumPy contents cover it). Without a guard,
    # those values are not used, and the pattern holds whatever f later reads.
    guard = state_guard(fun)
    return (*_jax_detect.detect(target, args, argnum, unknown, guard is not None), guard)


def state_guard(fun):
    """``() -> bool`` while what ``fun`` reads is unchanged (NOTE [state guards]), or
    None when it reaches too much to guard."""
    from ..backends import _guards

    try:
        return _guards.walk(fun).check
    except _guards.Unguardable:
        return None


def compressed(mode, fun, args, argnum, has_aux, seeds):
    """The stack of compressed products, one row per seed, and ``aux``."""
    x = args[argnum]
    f_x = _bind(fun, args, argnum, has_aux)
    seeds = jnp.asarray(seeds, x.dtype)
    if mode == "row":  # seeds live in the output space
        out, vjp, aux = jax.vjp(f_x, x, has_aux=True)
        cot = _varying.stacked_like(seeds.reshape((-1,) + out.shape), out)
        (rows,) = jax.vmap(vjp)(cot)
        return rows.reshape(cot.shape[0], -1), aux
    seeds = _varying.stacked_like(seeds.reshape((-1,) + x.shape), x)  # NOTE [varying axes]
    # Column mode: JVPs of f; Hessian: JVPs of its gradient (forward over reverse).
    # linearize evaluates the primal once and vmaps only the linear map (measured
    # faster than vmapping jvp, whose batched trace keeps more of the primal work).
    g = f_x if mode == "column" else jax.grad(f_x, has_aux=True)
    _, lin, aux = jax.linearize(g, x, has_aux=True)
    out = jax.vmap(lin)(seeds)
    return out.reshape(seeds.shape[0], -1), aux


def seeds_from(colors, n_colors: int, dtype):
    """``(n_colors, len(colors))`` seeds built in the program from the coloring and
    an iota: row ``c`` is 1 where ``colors == c``. No ``n_colors x n`` constant is
    embedded (at n = 1e6 and 3 colors that was 24 MB in every compiled program)."""
    colors = jnp.asarray(colors)
    return (colors[None, :] == jnp.arange(n_colors, dtype=colors.dtype)[:, None]).astype(dtype)


class Evaluator:
    """``evaluate(args) -> (nonzero values, aux)`` for one prepared signature, in two
    layouts of the same values:

    * pattern order (``pattern``): the stack of compressed products read at the
      coloring's ``gather``, a global gather;
    * NOTE [read-position layout] (``by_read``): entry ``p`` is read from row
      ``q = gather[p] % L`` of the ``(n_colors, L)`` stack (the output row in
      forward mode and for Hessians, the input column in reverse mode). Grouping
      the entries by ``q`` into ``r`` slots per position (ELL-style, padded) makes
      the read a ``take_along_axis`` along the colors: local to whichever device
      holds position ``q``. A sharded input thus gets a sharded output with no
      exchange of the compressed matrix (``docs/scaling.md``); the padding slots hold
      out-of-bounds indices, which BCOO ignores.

    Called on concrete arrays, both run through ``jax.jit`` with the coloring's
    arrays as arguments (not constants): an eager call then costs what a jitted one
    does, and compiling embeds no pattern-sized constant. A compiled program keeps
    the values ``f`` closed over when it was traced, so it is used only while a state
    guard watches what ``f`` reads (the prepared derivative is then remade, and the
    program traced again, when that state changes). When ``f`` reaches too much to
    guard, every call runs uncompiled and reads ``f``'s state afresh."""

    def __init__(self, mode, fun, argnum, has_aux, coloring, shape):
        self.mode, self.fun, self.argnum, self.has_aux = mode, fun, argnum, has_aux
        self.guarded = state_guard(fun) is not None
        self.n_colors = coloring.n_colors
        gather = np.asarray(coloring.gather, np.int64)
        self.width = shape[1] if mode == "row" else shape[0]  # L: read positions
        read, color = gather % max(self.width, 1), gather // max(self.width, 1)
        order = np.argsort(read, kind="stable")
        counts = np.bincount(read, minlength=self.width)
        self.slots = int(counts.max()) if counts.size else 0
        start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        slot = np.empty_like(order)
        slot[order] = np.arange(order.size) - start[read[order]]
        table = np.zeros((self.width, self.slots), np.int32)
        table[read, slot] = color
        mask = np.zeros((self.width, self.slots), bool)
        mask[read, slot] = True
        # pattern entry of each read-layout slot, -1 for padding
        self.slot_entry = np.full(self.width * self.slots, -1, np.int64)
        self.slot_entry[read * self.slots + slot] = np.arange(gather.size)
        self._np = {"colors": np.asarray(coloring.colors, np.int32),
                    "gather": positions(gather, int(gather.max(initial=0))),
                    "table": table, "mask": mask}
        self._device = None
        self._jitted: dict = {}

    def _stack(self, args, consts):
        x = args[self.argnum]
        seeds = seeds_from(consts["colors"], self.n_colors, x.dtype)
        return compressed(self.mode, self.fun, args, self.argnum, self.has_aux, seeds)

    def _pattern(self, args, consts):
        stack, aux = self._stack(args, consts)
        # derivs built the indices: in bounds and unique, so XLA may skip the checks.
        # Under an explicit-sharding mesh the result's sharding must be stated: pattern
        # order is replicated (a global gather; the read-position layout avoids it).
        explicit = _varying.explicit_mesh(stack)
        extra = {"out_sharding": jax.sharding.PartitionSpec()} if explicit else {}
        flat = stack.reshape(-1, **extra) if explicit else stack.reshape(-1)
        return flat.at[consts["gather"]].get(mode="promise_in_bounds", unique_indices=True,
                                             **extra), aux

    def _by_read(self, args, consts):
        stack, aux = self._stack(args, consts)
        vals = jnp.take_along_axis(stack.T, consts["table"], axis=1)
        return jnp.where(consts["mask"], vals, 0).reshape(-1), aux

    def _consts(self, tracing: bool):
        if tracing:  # under the caller's transform: constants of its program
            return self._np
        if self._device is None:
            self._device = {k: jnp.asarray(v) for k, v in self._np.items()}
        return self._device

    def __call__(self, args, layout: str = "pattern"):
        impl = self._pattern if layout == "pattern" else self._by_read
        if is_tracing(args) or not self.guarded:
            return impl(args, self._consts(True))
        # Arrays are the compiled program's arguments; anything else (a Python int
        # that slices, a string) is static, part of the key, as jax.jit's
        # static_argnums would have it.
        dynamic = [i for i, a in enumerate(args) if isinstance(a, (jax.Array, np.ndarray))]
        static = tuple((i, a) for i, a in enumerate(args) if i not in dynamic)
        try:
            key = (layout, static, hash(static))
        except TypeError:  # an unhashable argument: run uncompiled
            return impl(args, self._consts(True))
        fn = self._jitted.get(key)
        if fn is None:
            def run(arrays, consts, _static=static, _n=len(args)):
                full = dict(_static)
                full.update(zip(dynamic, arrays))
                return impl(tuple(full[i] for i in range(_n)), consts)
            fn = self._jitted[key] = jax.jit(run)
        return fn(tuple(args[i] for i in dynamic), self._consts(False))


def read_layout_pays(ev: "Evaluator", nnz: int) -> bool:
    """The read-position layout pads every position to the busiest one's count; it is
    taken when that at most doubles the stored entries (stencils, bands, blocks),
    never for a pattern with a few dense rows."""
    return ev.width * ev.slots <= 2 * nnz + ev.width


def assemble_by_read(data, ev: "Evaluator", pattern, lay):
    """The BCOO of NOTE [read-position layout]: ``data`` in read-position slots, the
    indices laid out over the devices as ``data`` is; padding slots point out of
    bounds (``(m, n)``), which BCOO operations ignore."""
    from jax.experimental import sparse as jsparse

    m, n = pattern.shape
    sharding = getattr(data, "sharding", None)
    key = ("by read", sharding)
    if lay.get("by read key") != key:
        entry = ev.slot_entry
        idx = np.full((entry.size, 2), (m, n), positions(np.zeros(0), max(m, n)).dtype)
        idx[entry >= 0, 0] = pattern.rows[entry[entry >= 0]]
        idx[entry >= 0, 1] = pattern.cols[entry[entry >= 0]]
        if isinstance(sharding, jax.sharding.NamedSharding):
            spec = jax.sharding.PartitionSpec(*sharding.spec[:1], None)
            lay["by read"] = jax.device_put(idx, jax.sharding.NamedSharding(sharding.mesh, spec))
        else:
            lay["by read"] = jnp.asarray(idx)
        lay["by read key"] = key
    return jsparse.BCOO((data, lay["by read"]), shape=(m, n), indices_sorted=False,
                        unique_indices=False)


def evaluator(mode, fun, argnum, has_aux, coloring, shape):
    """The prepared evaluator (:class:`Evaluator`); traceable: runs under ``jit``."""
    return Evaluator(mode, fun, argnum, has_aux, coloring, shape)


def sharded(x) -> bool:
    """Whether ``x`` is a concrete array laid out over more than one device (its
    sparse derivative then takes the read-position layout)."""
    sharding = getattr(x, "sharding", None)
    if isinstance(x, jax.core.Tracer) or sharding is None:
        return False
    return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def layout(pattern):
    """Index arrays of the output, built once per prepared derivative."""
    top = max(max(pattern.shape), int(pattern.nnz))
    return {"coo": positions(np.stack([pattern.rows, pattern.cols], 1), top),
            "cols": positions(pattern.cols, top), "indptr": positions(pattern.indptr, top)}


def positions(a: np.ndarray, top: int) -> np.ndarray:
    """Index array ``a`` (whose values reach ``top``) as int32 while that holds them,
    else int64: a gather position ``color * n + row`` of a large pattern passes
    2**31 and would wrap. JAX keeps int64 only with ``jax_enable_x64``."""
    if top < 2**31 - 1:
        return np.asarray(a).astype(np.int32)
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"derivs: this sparse derivative indexes positions up to {top}, past int32; "
            "JAX holds them only with 64-bit integers: jax.config.update("
            "'jax_enable_x64', True) before the call.")
    return np.asarray(a).astype(np.int64)


def _index(lay, name, data):
    """``lay[name]`` as a JAX array: a constant under a transform, else converted
    once and kept (an eager call must not copy the pattern to the device again)."""
    if isinstance(data, jax.core.Tracer):
        return jnp.asarray(lay[name])
    key = name + " on device"
    if key not in lay:
        lay[key] = jnp.asarray(lay[name])
    return lay[key]


def assemble(data, lay, pattern, fmt):
    m, n = pattern.shape
    if fmt in ("native", "coo"):
        from jax.experimental import sparse as jsparse

        return jsparse.BCOO((data, _index(lay, "coo", data)), shape=(m, n), indices_sorted=True,
                            unique_indices=True)
    if fmt == "csr":
        from jax.experimental import sparse as jsparse

        return jsparse.BCSR((data, _index(lay, "cols", data), _index(lay, "indptr", data)),
                            shape=(m, n))
    if fmt == "scipy":
        if isinstance(data, jax.core.Tracer):
            raise TypeError("format='scipy' gives a host (NumPy) matrix and cannot be used "
                            "under jax.jit; use format='native' (BCOO) inside jit.")
        return sp.csr_array((np.asarray(data), pattern.cols, pattern.indptr), shape=(m, n))
    dense = jnp.zeros((m, n), data.dtype).at[pattern.rows, pattern.cols].set(data)
    return dense.reshape(pattern.out_shape + pattern.in_shape)


def is_tracing(args) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in args)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


def like(x, values: np.ndarray):
    """``values`` as an array of ``x``'s dtype."""
    return jnp.asarray(values, dtype=x.dtype)


def dense(kind, fun, args, argnum, has_aux):
    if kind == "hessian":
        return jax.hessian(fun, argnums=argnum, has_aux=has_aux)(*args)
    out = jax.eval_shape(fun, *args)
    out = out[0] if has_aux else out
    # Forward mode when the input is no larger than the output, reverse otherwise;
    # the other mode when f's own rules forbid that one (a custom_vjp function has
    # no forward mode, a custom_linear_solve without transpose_solve no reverse).
    fwd = np.size(args[argnum]) <= int(np.prod(out.shape, dtype=np.int64))
    first, second = (jax.jacfwd, jax.jacrev) if fwd else (jax.jacrev, jax.jacfwd)
    try:
        return first(fun, argnums=argnum, has_aux=has_aux)(*args)
    except Exception as e:  # noqa: BLE001 - re-raised unless the other mode works
        try:
            return second(fun, argnums=argnum, has_aux=has_aux)(*args)
        except Exception:  # noqa: BLE001
            raise e from None


def refusal(mode, fun, args, argnum, has_aux, size) -> str | None:
    """Why f's own rules refuse ``mode`` ("column": forward, "row": reverse) for a
    Jacobian, or None: one compressed pass (``size``: its seed length), evaluated
    abstractly (nothing is computed)."""
    seed = np.ones((1, size))
    try:
        jax.eval_shape(lambda *a: compressed(mode, fun, a, argnum, has_aux, seed), *args)
    except Exception as e:  # noqa: BLE001 - the reason is reported, not raised
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def output_shape(fun, args, has_aux) -> tuple:
    out = jax.eval_shape(fun, *args)
    return tuple((out[0] if has_aux else out).shape)
