"""PyTorch backend: one forward-mode level is ``torch.func.jvp``.

``torch.func.jvp`` composes with ``torch.func.vmap``/``grad`` and keeps the
ordinary autograd graph to every tensor that ``f`` closes over, so a partial
can be trained through with ``loss.backward()``. Nothing is written to
``.grad``: forward mode never touches it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Any

import torch
import torch.utils._pytree as pytree

from . import _common
from . import torch_engine as engine  # noqa: F401  (the traced-jet strategy)

name = "torch"
accepts_torch_compile = True
stacked_family = True  # the stacked family program (torch_engine._family)
# NOTE [batch axis layout] (``_batch.py``): the family keeps one pass over every
# sample (its seeds are stride-0 views, multiplied once).
vmap_operators = False
bare_samples_first = False  # NOTE [per-sample route]: f gets what it is documented to


def launch_bound(device_type: str | None) -> bool:
    """Whether one kernel per op and direction would dominate: on an accelerator
    (eager PyTorch launches every op; an H200 ran the unrolled Bi-Laplacian at 1.06x
    nested AD), not on the CPU."""
    return device_type not in (None, "cpu")


def sparsity():
    """The sparse-derivative side of this framework (detection, compressed passes)."""
    return importlib.import_module("derivs._sparsity._torch")

# NOTE [thread safety]: PyTorch's forward-AD levels are process-wide, so nested
# torch.func.jvp calls from two threads corrupt each other ("Trying to access a
# forward AD level with an invalid index"). The nested-forward path runs under this
# re-entrant lock (derivs of derivs nest in one thread); cached traced-jet graphs
# are plain ops and run concurrently.
_LOCK = threading.RLock()


def serialized():
    return _LOCK


def owns(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def as_input(x: Any, argnum: int, api: str, batch_axis: int | None) -> torch.Tensor:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{api}: argument {argnum} is a {type(x).__name__}; derivs differentiates "
            "tensors. Pass a torch.Tensor (flatten containers first)."
        )
    if not x.is_floating_point():
        kind = ("complex" if x.is_complex()
                else "boolean" if x.dtype == torch.bool else "integer")
        raise TypeError(_common.bad_dtype_message(api, argnum, x.dtype, kind, "x.float()"))
    if batch_axis is not None:
        _common.check_axis_in_range(api, argnum, x.dim(), batch_axis)
    return x


def check_output(out: Any, api: str) -> None:
    if not pytree.tree_leaves(out):
        raise TypeError(_common.no_output_message(api, out))
    for leaf in pytree.tree_leaves(out):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{api}: f returned a {type(leaf).__name__}; derivs needs f to return "
                "tensors (wrap constants with torch.as_tensor), or pass has_aux=True and "
                "return other data as auxiliary output."
            )
        if not leaf.is_floating_point():
            raise TypeError(_common.bad_output_message(api, leaf.dtype))


def one_hot(x: torch.Tensor, flat: int, batch_axis: int | None) -> torch.Tensor:
    shape = _common.sample_shape(tuple(x.shape), batch_axis)
    t = torch.zeros(_common.numel(shape), dtype=x.dtype, device=x.device)
    t[flat] = 1
    t = t.reshape(shape)
    if batch_axis is None:
        return t
    return t.unsqueeze(batch_axis % x.dim()).expand(x.shape)


def jvp(fun, primal, tangent):
    def in_math_form(*a):  # torch_engine/_math_forms.py
        with engine.math_forms():
            return fun(*a)

    primal_out, tangent_out, aux = _common.jvp_passing_aux(
        lambda g, p, t: torch.func.jvp(g, (p,), (t,), has_aux=True),
        pytree.tree_flatten, owns, in_math_form, primal, tangent)
    # Both halves: a zero tangent of an inner level is a primal output here.
    return (pytree.tree_map(_materialize, primal_out),
            pytree.tree_map(_materialize, tangent_out), aux)


def _materialize(t: Any) -> Any:
    # torch.func.jvp answers a structurally zero derivative with a ZeroTensor, which
    # cannot be written to or converted to NumPy; users get an ordinary tensor.
    if isinstance(t, torch.Tensor) and t._is_zerotensor():
        return torch.zeros(t.shape, dtype=t.dtype, device=t.device)
    return t


def signature(fun, args: tuple, kwargs: dict):
    """What f's output shape can depend on besides the state f reads (see
    ``state_check``): tensor metadata and plain argument values. None when not
    hashable."""
    return engine.cache_key(args, kwargs)


def state_check(fun):
    """A check that the state ``fun`` reads is unchanged (NOTE [state guards]), or
    None when it cannot be guarded (then nothing about f may be cached)."""
    from . import _guards

    try:
        return _guards.walk(fun).check
    except _guards.Unguardable:
        return None


def output_shape(fun, args: tuple, kwargs: dict, cache=None) -> tuple[int, ...] | None:
    """The shape of f's output, None if not one tensor: read off f's capture (kept
    in ``cache`` for the engine), else from one evaluation without autograd. The
    capture runs nothing, so a module in train mode raises before its statistics
    change."""
    if not engine.inside_trace(args):
        try:
            cap = engine.shared_capture(cache, fun, args, kwargs)
        except engine.StateError:
            raise
        except Exception:  # not capturable: evaluate f
            cap = None
        if cap is not None:
            if not cap.out_spec.is_leaf():
                return None
            return tuple(cap.graph.graph.output_node().args[0][0].meta["val"].shape)
    with torch.no_grad():
        out = fun(*args, **kwargs)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def first_order_reverse(fun, selected: tuple, requests) -> list:
    """As ``_jax.first_order_reverse``, with ``torch.func.grad`` (functional: the
    result is differentiable again and nothing is written to ``.grad``)."""
    def scalar(*sel):
        out = fun(sel)
        return out.reshape(()), out

    grads, out = torch.func.grad(scalar, argnums=tuple(range(len(selected))),
                                 has_aux=True)(*selected)
    # one unbind per argument: n views in one op, not n indexing ops
    entries = [g.reshape(-1).unbind(0) for g in grads]
    shaped = (lambda v: v) if out.dim() == 0 else (lambda v: v.reshape(out.shape))
    return [out if not mi else shaped(entries[mi[0][0]][mi[0][1]]) for mi in requests]


# -- the array operations the operators need (``_operators.py``, ``_collapsed.py``) -------
unsqueeze = torch.unsqueeze
stack = torch.stack
concatenate = torch.cat
grad = torch.func.grad
vmap = torch.func.vmap
reduce_sum = torch.sum
movedim = torch.movedim
tree_map = pytree.tree_map


def broadcast(v, like):
    return v.expand(like.shape)


def jvp_tangent(g, x, v):
    """The tangent of ``g`` at ``x`` along ``v``."""
    return torch.func.jvp(g, (x,), (v,))[1]


def over_units(g, n: int, sample, like, chunk_size):
    """``g`` vmapped over the unit directions ``e_0 .. e_{n-1}`` shaped ``sample``,
    stacked, ``chunk_size`` at a time (a Python loop over chunks)."""
    step = chunk_size or n
    outs = []
    for lo in range(0, n, step):
        count = min(step, n - lo)
        rows = torch.zeros(count, n, dtype=like.dtype, device=like.device)
        rows[torch.arange(count), torch.arange(lo, lo + count)] = 1
        outs.append(torch.func.vmap(g)(rows.reshape((count,) + sample)))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def tree_add(a, b):
    flat_a, spec = pytree.tree_flatten(a)
    return pytree.tree_unflatten([u + v for u, v in zip(flat_a, pytree.tree_leaves(b))], spec)


def as_array(v, like):
    """``v`` as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(v).to(dtype=like.dtype, device=like.device)


def tensordot(a, b):
    """``a`` contracted with ``b`` over ``a``'s last and ``b``'s first axis."""
    return torch.tensordot(a, b, dims=1)


def _generator(key, like, api: str):
    if isinstance(key, int) and not isinstance(key, bool):
        key = torch.Generator(device=like.device).manual_seed(key)
    if not isinstance(key, torch.Generator):
        raise TypeError(f"{api}: with torch tensors, key must be an int seed or a "
                        f"torch.Generator, got {type(key).__name__}.")
    return key


def random_directions(key, shape: tuple, like, distribution: str, api: str):
    """``shape`` random numbers (Rademacher or Gaussian) of ``like``'s dtype and
    device; ``key`` an int seed or a ``torch.Generator``."""
    key = _generator(key, like, api)
    if distribution == "rademacher":
        bits = torch.randint(0, 2, shape, generator=key, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    return torch.randn(shape, generator=key, dtype=like.dtype, device=like.device)


def random_coordinates(key, samples: int, n: int, like, api: str):
    """``samples`` distinct indices below ``n``, uniformly without replacement."""
    key = _generator(key, like, api)
    # the top S of n random words (NOTE [drawing coordinates] in _jax.py): 0.6 ms at
    # n = 1e5 on CPU against 1.6 ms for randperm
    words = torch.randint(0, 2 ** 62, (n,), generator=key, device=like.device)
    return words.topk(samples, sorted=False).indices


def coordinate_rows(indices, n: int, like):
    rows = torch.zeros((indices.shape[0], n), dtype=like.dtype, device=like.device)
    return rows.scatter_(1, indices.reshape(-1, 1), 1)


def vmap_over(fn, in_dims: tuple, out_axis: int):
    return torch.func.vmap(fn, in_dims=in_dims, out_dims=out_axis)


def unvmappable(error: BaseException) -> bool:
    """torch.func.vmap refuses ``.item()`` and data-dependent control flow."""
    msg = str(error)
    return isinstance(error, RuntimeError) and (
        ".item()" in msg or "data-dependent" in msg.lower() or "Data dependent" in msg)


def no_grad():
    return torch.no_grad()


def to_numpy(a):
    return a.detach().cpu().numpy()


def random_like(args: tuple, signed: bool = False) -> tuple:
    from .torch_engine import outside_functorch

    gen = torch.Generator().manual_seed(1 if signed else 0)

    def draw(a):
        if signed:
            return torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device)
        return (0.25 + 0.5 * torch.rand(a.shape, generator=gen, dtype=a.dtype)).to(a.device)
    # plain stand-ins of the call's shapes, drawn outside any torch.func transform
    # (vmap refuses random draws: an operator vmapped by the user would raise)
    with outside_functorch():
        return tuple(draw(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)


def concrete():
    return contextlib.nullcontext()


def _chunk(piece: torch.Tensor) -> torch.Tensor:
    """A slice of the samples, copied where it starts inside its storage: a
    capture is keyed on the storage offset (f may read storage), so views at k
    offsets would capture k programs, and past the program cache's size every call
    would capture them all again (a batch of 80 in slices of 2: 40 captures per
    call). One slice's copy is what ``batch_size`` budgets anyway."""
    return piece.clone() if piece.storage_offset() else piece


def map_chunks(per_sample, batched, args: tuple, dims: list, size: int, out_axis: int,
               batch_size: int):
    """``batched`` over slices of ``batch_size`` samples, in a Python loop,
    concatenated. ``dims``: each argument's sample axis, or None."""
    parts = []
    for lo in range(0, size, batch_size):
        piece = [a if d is None else _chunk(a.narrow(d, lo, min(batch_size, size - lo)))
                 for a, d in zip(args, dims)]
        parts.append(batched(*piece))
    flat = [pytree.tree_flatten(p) for p in parts]
    leaves = [torch.cat([f[0][k] for f in flat], dim=out_axis) for k in range(len(flat[0][0]))]
    return pytree.tree_unflatten(leaves, flat[0][1])

