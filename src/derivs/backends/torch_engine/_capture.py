"""One capture path for every PyTorch feature: ``f`` as a functional ATen graph,
with every tensor it reads lifted to a graph input and a guard for the rest.

NOTE [capture]: ``f`` is traced once per argument signature with ``make_fx`` in
fake mode (no real computation; data-dependent control flow raises instead of
being specialized), functionalized, with core ATen decompositions for ops that
have no jet rule. Before tracing, :func:`_guards.walk` finds the tensors ``f``
can reach (closures, globals, ``nn.Module`` parameters and buffers, containers):
while the trace runs, every torch function that receives one gets a graph input
instead (NOTE [stand-ins]; the user's objects are never touched), so the graph
reads them live at every call and autograd reaches them (a PINN loss built on a
derivative of an ``nn.Module`` trains it). The walk's check (NOTE [state guards]) must hold for a
cached graph to be reused; otherwise ``f`` is captured again.

Chosen over TorchDynamo by measurement (``python -m benchmarks capture``): Dynamo
lifts and guards more kinds of state, but its frame evaluation costs about 40 us
per call against a few for this check, and the hot path of a derivative must stay
within 20 us of the hand-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import itertools
import operator
import sys
import threading
from typing import Any

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

from ... import _errors
from ...core import _ledger
from .. import _guards
from ._math_forms import math_attention
from .._common import leaf_signature
from ._builder import is_mutating, is_random
from . import _closed_forms  # noqa: F401  (fills the closed-form registry)
from . import _rules  # noqa: F401  (fills the jet rule registry)
from ._registry import CLOSED_FORMS, JET_RULES, Unsupported

aten = torch.ops.aten
# Tracing uses process-wide dispatcher state (fake-tensor caches, torch.fx's node
# metadata): one capture at a time. Cached graphs run concurrently.
BUILD_LOCK = threading.RLock()


class Unliftable(Unsupported):
    """What f reads cannot be lifted or guarded (a tensor the walk cannot locate or
    swap, state f changes while it runs)."""


# f cannot be differentiated as it stands (e.g. BatchNorm in train mode): raised to
# the user, not a reason to fall back (public as derivs.StateError).
StateError = _errors.StateError


@dataclasses.dataclass
class Capture:
    """``graph`` takes the tensor leaves of ``(args, kwargs)`` (``is_tensor`` says
    which leaves are tensors), then ``state.tensors`` (the lifted ones), and
    returns the leaves of ``out_spec``."""

    graph: fx.GraphModule
    is_tensor: list[bool]
    out_spec: Any
    state: _guards.State

    @property
    def lifted(self) -> tuple:
        return tuple(self.state.tensors)

    def valid(self) -> bool:
        return self.state.check()


def _tensor_meta(leaf) -> tuple | None:
    return _layout(leaf) if isinstance(leaf, torch.Tensor) else None


def _layout(t: torch.Tensor) -> tuple:
    """A tensor's metadata as a capture depends on it: the memory layout too, since
    f may read storage (``as_strided``) or view it (a view of a non-contiguous
    tensor is another op than of a contiguous one)."""
    return (t.shape, t.dtype, t.device, t.stride(), t.storage_offset())


def complex_values(cap: "Capture") -> str | None:
    """NOTE [complex intermediates]: the engines' rules are written for real values
    (a product rule, Faa di Bruno, the stacked tables); a real f whose intermediates
    are complex (a power spectrum through ``torch.fft``, ``view_as_complex``,
    ``torch.polar``) would get silently wrong coefficients from them. Such an f runs
    nested forward mode, which PyTorch's own forward AD makes exact through complex
    values. Returns the first op with a complex value, or None."""
    for node in cap.graph.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else (val,)
        if any(isinstance(v, torch.Tensor) and v.is_complex() for v in vals):
            return str(node.target)
    return None


def cache_key(args: tuple, kwargs: dict) -> Any:
    """What a capture depends on besides the state ``f`` reads (which its guard
    checks): tensor metadata (layout included) and the values of non-tensor
    arguments (``_common.leaf_signature``), and the modes a trace depends on
    (:func:`_modes`). None if not hashable."""
    if not kwargs:  # the hot path's plain call: tensors only
        key: list = [_modes()]
        for a in args:
            if not isinstance(a, torch.Tensor):
                break
            key.append((a.shape, a.dtype, a.device, a.stride(), a.storage_offset()))
        else:
            return tuple(key)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    parts = leaf_signature(leaves, _tensor_meta)
    return None if parts is None else (str(spec), parts, _modes())


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "ipu", "mtia")
_MPS = torch.backends.mps.is_built()


def _modes() -> tuple:
    """The thread's and process's modes that f may branch on or that change what a
    trace records: grad mode (a module's fast path reads it), inference mode,
    deterministic algorithms, and autocast (its casts are recorded in the graph). A
    graph traced under one must not serve another. About 0.5 us."""
    amp = None
    if autocast_enabled():
        amp = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
                    for d in _AUTOCAST_DEVICES)
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            torch.are_deterministic_algorithms_enabled(), amp)


def autocast_enabled() -> bool:
    """Autocast is on for some device in this thread."""
    # (the "any" test does not cover MPS; asked only where MPS is built: 0.4 us)
    return torch._C._is_any_autocast_enabled() or (_MPS and torch.is_autocast_enabled("mps"))


def guarded_get(cache, key) -> Any:
    """The cached entry for ``key`` if its guard (``valid``, when it has one) still
    holds, else None."""
    entry = cache.get(key)
    if entry is None:
        return None
    valid = getattr(entry, "valid", None)
    return entry if valid is None or valid() else None


def shared_capture(cache, fun, args: tuple, kwargs: dict) -> Capture:
    """:func:`capture`, kept in ``cache`` (a transform's) under its guard, so that
    the output-shape probe, the engine and the Laplacian family share one trace."""
    key = cache_key(args, kwargs)
    if key is None or cache is None:
        return capture(fun, args, kwargs)
    key = ("capture", key)
    cap = guarded_get(cache, key)
    if cap is None:
        cap = capture(fun, args, kwargs)
        cache.put(key, cap)
    return cap


def capture(fun, args: tuple, kwargs: dict, *, reads=None, table: dict | None = None,
            pure: bool = True) -> Capture:
    """``fun`` captured for these arguments (NOTE [capture]). Raises Unsupported (or
    whatever tracing raises) when it cannot be; StateError for a user error.

    ``reads``: the function whose state ``fun`` reads, when ``fun`` wraps it (a
    ``torch.func.grad`` of it); ``table``: decompositions other than the engine's;
    ``pure=False`` keeps random draws and in-place updates (sparsity detection
    handles them) instead of refusing them."""
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]
    table = decompositions() if table is None else table
    if "torch._inductor.config" not in sys.modules:
        # make_fx imports torch._inductor (and with it TorchDynamo) on first use: about
        # 1 s once per process, shown apart so that the capture is not blamed for it
        with _ledger.phase("PyTorch's one-time import of torch._inductor by make_fx"):
            importlib.import_module("torch._inductor.config")
    for _ in range(_RACES):
        try:
            with _ledger.phase("capture"):  # NOTE [first-call ledger]
                return _walked_capture(fun, reads, leaves, in_spec, is_tensor, table, pure)
        except _Raced as raced:
            valid = raced.valid
    e = Unliftable(f"the state f reads changed while derivs traced f, {_RACES} times (f "
                   "writes it as it runs, or another thread does), so no graph can stand "
                   "for one state of it")
    e.valid = valid
    raise e


# NOTE [one state per capture]: a graph must be traced from the state its guard was
# built from. When that state changes while f is traced and f did not change it
# itself, another thread did: the capture is retried (a fallback would evaluate f
# several times per call, each evaluation reading whichever state is current).
_RACES = 3


class _Raced(Exception):
    """The state f reads changed during its trace, and not through what f writes
    where the capture can see it (``valid``: the check of the state traced)."""

    def __init__(self, valid):
        super().__init__()
        self.valid = valid


def _walked_capture(fun, reads, leaves, in_spec, is_tensor, table, pure) -> Capture:
    try:
        state = _guards.walk(fun if reads is None else reads)
    except _guards.Unguardable as e:
        raise Unliftable(str(e)) from e
    sharded = _fsdp_module(state.owners.values())
    if sharded is not None:
        raise StateError(
            f"derivs: f reads a module sharded by FSDP ({sharded}). derivs cannot "
            "differentiate through FSDP's parameter gathering yet (it frees the gathered "
            "parameters that a derivative graph keeps for backward). Wrap the model in "
            "DistributedDataParallel instead and differentiate ddp.module (README, "
            "'Beyond one device'), or differentiate an unsharded copy of the model.")
    for t in state.tensors:
        if t.layout is not torch.strided:  # its stand-in would be a dense tensor
            raise Unliftable(f"f reads a {t.layout} tensor besides its arguments; pass "
                             "it as an argument instead")
        if _is_transform_tensor(t):
            raise Unliftable("f reads a tensor that a torch.func transform is tracking "
                              "(e.g. inside functional_call under torch.func.grad)")
    try:
        return _capture(fun, leaves, in_spec, is_tensor, state, table, pure)
    except Unsupported as e:
        e.valid = state.check  # the reason holds for this state only
        raise


def _fsdp_module(modules) -> str | None:
    """The class name of the first module that FSDP (``fully_shard`` or
    ``FullyShardedDataParallel``) manages, or None. Read only when FSDP is loaded."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return None
    kinds = tuple(k for k in (getattr(fsdp, "FSDPModule", None),
                              getattr(fsdp, "FullyShardedDataParallel", None)) if k is not None)
    for m in modules:
        if kinds and isinstance(m, kinds):
            return type(m).__name__
    return None


def _capture(fun, leaves, in_spec, is_tensor, state, table, pure) -> Capture:
    n_args = sum(is_tensor)
    side: dict[str, Any] = {}

    def flat_fn(*tensors):
        it = iter(tensors[:n_args])
        full = [next(it) if t else leaf for t, leaf in zip(is_tensor, leaves)]
        a, kw = pytree.tree_unflatten(full, in_spec)
        stand_ins = _StandIns(state.tensors, tensors[n_args:])
        kept = state.preserved()
        with kept, stand_ins, math_attention():  # NOTE [attention]
            out = fun(*a, **kw)
        side["mutated"] = side.get("mutated", False) or kept.mutated
        out_leaves, side["spec"] = pytree.tree_flatten(out)
        out_leaves = [stand_ins.get(leaf) for leaf in out_leaves]  # f returned one as is
        for leaf in out_leaves:
            if not (isinstance(leaf, torch.Tensor) and leaf.is_floating_point()):
                raise Unsupported("f returned a non-floating or non-tensor output")
        return tuple(out_leaves)

    # Metadata is read here, where torch.func wrappers report per-sample shapes.
    # The examples have the arguments' memory layout (strides, storage offset): f
    # may read storage or view it, and the graph must mean what f means for them.
    examples = [_like(t) for t in [leaf for leaf, t in zip(leaves, is_tensor) if t]]
    examples += [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                 for t in state.tensors]  # f may view them as their strides allow
    with BUILD_LOCK, outside_functorch(), clean_dispatch_state():
        try:
            # functionalize: in-place updates of intermediates (common inside ATen
            # decompositions) become pure ops; an update of an input stays visible
            # as copy_ and is rejected below. Real tensors the walk missed become
            # constants (allow_non_fake_inputs) and are rejected below too.
            with _tagging():  # NOTE [closed forms] in _closed_forms.py
                traced = make_fx(torch.func.functionalize(flat_fn), table,
                                 tracing_mode="fake", _allow_non_fake_inputs=True)(*examples)
        finally:
            clear_fake_caches()
    if side.get("mutated"):
        raise Unliftable("f changes the state it reads while it runs (a Python value, "
                          "a module attribute or a container), so no graph can be reused")
    if not state.check():
        raise _Raced(state.check)  # NOTE [one state per capture]
    traced = functional(traced)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    lifted_nodes = dict(zip(placeholders[n_args:], range(len(state.tensors))))
    for node in traced.graph.nodes:
        if node.op == "call_function" and pure:
            _check_pure(node, lifted_nodes, state)
        elif node.op == "get_attr" and not made_by_f(node):
            # any other constant is a tensor the walk did not find: it may change
            raise Unliftable("f reads a tensor derivs cannot locate from f's closure, "
                              "globals or modules (e.g. through an imported module's "
                              "attribute); pass it as an argument instead")
    return Capture(traced, is_tensor, side["spec"], state)


class _StandIns(torch.overrides.TorchFunctionMode):
    """NOTE [stand-ins]: while f is traced, every torch function that receives one
    of the tensors f reads (a parameter, a buffer, a closed-over tensor) gets its
    graph input instead, so the graph reads them live at every call. The mode is
    thread-local and f's objects are never touched: another thread may run the same
    module eagerly while derivs captures it (swapping the tensors into the module
    for the trace, as ``functional_call`` does, broke such calls). A read that no
    torch function sees (``f`` handing a tensor to a C extension) leaves the real
    tensor in the graph as a constant, which the capture refuses (``made_by_f``)."""

    def __init__(self, real: list, stand_ins) -> None:
        super().__init__()
        self._real = real  # keeps the ids below alive and unique
        self._by_id = {id(t): s for t, s in zip(real, stand_ins)}

    def get(self, t):
        if isinstance(t, torch.Tensor):
            return self._by_id.get(id(t), t)
        if isinstance(t, slice):  # ``x[:, :n]``: a bound read through ``__index__``
            return slice(self.get(t.start), self.get(t.stop), self.get(t.step))
        return t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and id(args[0]) in self._by_id:  # a lifted tensor itself
            if getattr(func, "__name__", None) == "__get__":
                return self._property(func, args[0])
            if func in _NOT_ON_STAND_INS:
                raise Unsupported(f"f calls {func.__name__}() on a tensor it does not take "
                                  "as an argument, which a trace cannot follow")
        if self._by_id:
            args, kwargs = pytree.tree_map(self.get, (args, kwargs))
        if func in _TO_NUMPY and args and _guards._tracing_value(args[0]):
            # a fake tensor has no values: NumPy would read uninitialized memory
            raise Unsupported("f reads a tensor's values into NumPy (.numpy(), "
                              "np.asarray), which a trace cannot follow")
        return func(*args, **kwargs)

    def _property(self, getter, real):
        """NOTE [properties of stand-ins]: a stand-in has the shape, dtype, device and
        values of the tensor it stands for, not its autograd state. ``requires_grad``
        is read from the real tensor (f may branch on it, as ``nn.TransformerEncoderLayer``
        does; the state guard checks the flag, so a cached graph is never reused after
        it changes); the other autograd attributes (``.grad``, ``.grad_fn``,
        ``.is_leaf``, ``._version``, ...) would be the stand-in's, so a trace refuses
        them and the transform runs f eagerly on the general path (as do methods such
        as ``is_inference()``, ``_is_view()``, ``data_ptr()``). ``.data`` is a
        detached view of the stand-in, as eager ``.data`` is of the tensor (a live
        view let gradients through). The state guard checks each lifted tensor's
        requires_grad, shape, dtype, strides and offset, wherever it is held; not
        Python attributes set on a tensor (``W.scale``), which f should not read.
        Tensors f computes carry no autograd history in a trace, as under
        ``torch.func.jvp`` (the general path): f branching on an intermediate's
        ``requires_grad`` sees the same there."""
        name = getattr(getter.__self__, "__name__", "")
        if name == "requires_grad":
            return real.requires_grad
        if name == "data":
            return self._by_id[id(real)].detach()
        if name in _SAME_ON_STAND_INS:
            return getter(self._by_id[id(real)])
        raise Unsupported(f"f reads .{name} of a tensor it does not take as an argument "
                          "(a parameter, buffer or closed-over tensor), which a trace "
                          "cannot follow")


# Tensor properties a stand-in shares with the tensor it stands for (NOTE
# [properties of stand-ins]); the tensor-valued ones (.T, .mT, .real) are views of
# the stand-in, so the graph reads them live.
_SAME_ON_STAND_INS = frozenset({
    "shape", "dtype", "device", "ndim", "layout", "names", "itemsize", "nbytes",
    "is_cuda", "is_cpu", "is_sparse", "is_sparse_csr", "is_quantized", "is_meta",
    "is_mkldnn", "is_mps", "is_xpu", "is_mtia", "is_maia", "is_ipu", "is_xla", "is_vulkan",
    "is_nested", "T", "mT", "H", "mH", "real", "imag"})
# Methods whose answer for a stand-in is not the real tensor's.
_NOT_ON_STAND_INS = frozenset({
    torch.Tensor.is_inference, torch.Tensor.is_shared, torch.Tensor._is_view,
    torch.Tensor.is_pinned, torch.Tensor.data_ptr, torch.Tensor.untyped_storage,
    torch.Tensor.is_set_to, torch.is_inference})
_TO_NUMPY = (torch.Tensor.numpy, torch.Tensor.__array__)


def made_by_f(node: fx.Node) -> bool:
    """Whether graph constant ``node`` is a tensor f creates from Python data
    (``torch.tensor(2.0)``): traced as a constant copied by ``lift_fresh_copy``, part
    of f, safe to keep."""
    return all(u.target == aten.lift_fresh_copy.default for u in node.users)


@contextlib.contextmanager
def clean_dispatch_state():
    """Puts PyTorch's thread-local dispatch state back as it was after a trace
    (make_fx of a torch.func transform can leave dispatch keys excluded, which
    breaks every later forward-mode call in the process), and drops fake-tensor
    caches after a failure: a failure leaves nothing behind.

    A failed trace's traceback keeps C++ dispatch guards alive, and they rewrite
    the state when they die: the exception is replaced by a copy without its
    traceback before the state is restored."""
    keys = list(torch._C.DispatchKey.__members__.values())
    excluded = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in keys]
    included = [torch._C._dispatch_tls_is_dispatch_key_included(k) for k in keys]
    replacement = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised below, as a copy
        replacement = _copy_exception(e)
        e.__traceback__ = None
        del e
        gc.collect()
    finally:
        for k, ex, inc in zip(keys, excluded, included):
            if torch._C._dispatch_tls_is_dispatch_key_excluded(k) != ex:
                torch._C._dispatch_tls_set_dispatch_key_excluded(k, ex)
            if torch._C._dispatch_tls_is_dispatch_key_included(k) != inc:
                torch._C._dispatch_tls_set_dispatch_key_included(k, inc)
    if replacement is not None:
        clear_fake_caches()
        raise replacement


def _like(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor of ``t``'s shape, dtype, device, strides and storage offset."""
    if t.is_contiguous() and t.storage_offset() == 0:
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    try:
        stride, offset = t.stride(), t.storage_offset()
    except RuntimeError:  # a torch.func wrapper: its own layout is not the sample's
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    span = offset + 1 + sum((n - 1) * s for n, s in zip(t.shape, stride) if n > 0)
    buffer = torch.empty(max(span, 1), dtype=t.dtype, device=t.device)
    return buffer.as_strided(t.shape, stride, offset)


def trace_inputs(tensors) -> list:
    """Inputs for tracing a program of ``tensors``: a fresh tensor of each one's
    layout, without autograd. Fresh, because make_fx gives one object passed twice
    one placeholder, and a graph traced with ``x is y`` would read y for x on every
    later call; without autograd, because a trace on the real tensors would run the
    caller's saved-tensor hooks (activation checkpointing) on fake tensors."""
    return [_like(t) for t in tensors]


def user_modes() -> bool:
    """A TorchFunctionMode or TorchDispatchMode is active (``torch.device(...)``,
    a FlopCounterMode, a debugging mode): a trace made now would run through it."""
    return torch._C._len_torch_function_stack() > 0 or torch._C._len_torch_dispatch_stack() > 0


def _copy_exception(e: Exception) -> Exception:
    """The same exception type and message, with no traceback attached."""
    try:
        new = type(e)(*e.args)
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments
        new = RuntimeError(f"{type(e).__name__}: {e}")
    for name in ("valid",):
        if hasattr(e, name):
            setattr(new, name, getattr(e, name))
    return new


def _is_transform_tensor(t: torch.Tensor) -> bool:
    try:
        return torch._C._functorch.is_functorch_wrapped_tensor(t)
    except AttributeError:  # a private helper; assume a plain tensor without it
        return False


def clear_fake_caches() -> None:
    """Nothing of a failed trace may leak into the next one (fake-tensor caches are
    process-wide)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        FakeTensorMode.cache_clear()
    except (ImportError, AttributeError):
        pass


def inside_trace(args: tuple) -> bool:
    """A graph is being built around this call (make_fx's proxy mode, or fake
    tensors: derivs of derivs, torch.compile): build nothing here; the general
    path composes with the outer trace."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None or any(isinstance(a, FakeTensor) for a in args)


def inside_functorch() -> bool:
    """A torch.func transform (vmap, grad, jvp) is active at this call."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def outside_functorch():
    """Traces see plain tensors even when the call happens inside torch.func.vmap /
    grad: the graph depends on per-sample shapes only, and the transforms apply
    when the built graph runs."""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return contextlib.nullcontext()
    try:
        from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    except ImportError as e:  # a private helper; without it, use the general path
        raise Unsupported("called inside a torch.func transform") from e
    return temporarily_clear_interpreter_stack()


_DECOMPOSITIONS: dict | None = None
_EXTRA_DECOMPOSED = [
    aten._softmax.default, aten._log_softmax.default, aten.native_layer_norm.default,
    aten.gelu.default, aten.elu.default, aten.leaky_relu.default,
    aten.linalg_vector_norm.default, aten.mish.default, aten.hardtanh.default,
]


def _var_mean(x, dim=None, *, correction=None, keepdim=False):
    """``var_mean`` (layer norm's statistics) as its two single-output ops, which
    both interpreters have rules for (PyTorch's own decomposition keeps the pair)."""
    return (aten.var.correction(x, dim, correction=correction, keepdim=keepdim),
            aten.mean.dim(x, [] if dim is None else dim, keepdim))


# NOTE [smooth decompositions]: PyTorch decomposes some smooth functions through
# kinks that cancel (log_sigmoid: ``min(0, x) - log1p(exp(-|x|))``) or through a
# ``where`` at a point where the function stays smooth (``xlog1py(x, y)`` returns a
# constant 0 wherever x == 0). Their values are right, but a derivative rule sees a
# kink or a constant there: at exactly x = 0 the slopes of min and abs no longer
# cancel (d logsigmoid / dx came out 0, not 1/2), and ``x * log1p(y)``'s derivative
# in x vanished. These forms are smooth where the function is.
def _log_sigmoid_forward(x):
    out = aten.where.self(aten.lt.Scalar(x, -20.0), x,
                          aten.neg.default(aten.log1p.default(aten.exp.default(
                              aten.neg.default(x)))))
    return out, aten.new_empty.default(x, [0])


def _special_log(log):
    """``x * log(y)`` with 0 where x == 0 and the logarithm is infinite (and NaN for
    NaN y), as PyTorch defines xlogy / xlog1py, smooth wherever the product is."""
    def decomposition(x, y):
        if not isinstance(x, torch.Tensor):
            x = aten.scalar_tensor.default(x, dtype=y.dtype, device=y.device)
        if not isinstance(y, torch.Tensor):
            y = aten.scalar_tensor.default(y, dtype=x.dtype, device=x.device)
        logy = log(y)
        out = aten.mul.Tensor(x, logy)
        zero = aten.logical_and.default(aten.eq.Scalar(x, 0), aten.isinf.default(logy))
        out = aten.where.self(zero, aten.zeros_like.default(out), out)
        return aten.where.self(aten.isnan.default(y), y + x * 0, out)
    return decomposition


def decompositions() -> dict:
    """PyTorch's own decompositions for the ops that have no jet rule (softmax,
    layer_norm, gelu, softplus, ...): they become ops that do. Ops with a rule stay
    whole, since a dedicated rule (prod, addmm) beats its decomposition."""
    global _DECOMPOSITIONS
    if _DECOMPOSITIONS is None:
        from torch._decomp import core_aten_decompositions, decomposition_table

        # Core ATen decompositions, plus composite ops that core ATen keeps whole but
        # whose decompositions stay at the ATen level (others would go down to prims).
        table = dict(core_aten_decompositions())
        for op in _EXTRA_DECOMPOSED:
            if op in decomposition_table:
                table[op] = decomposition_table[op]
        table[aten.var_mean.correction] = _var_mean
        table[aten.log_sigmoid_forward.default] = _log_sigmoid_forward  # NOTE [smooth
        for op, log in ((aten.special_xlog1py, aten.log1p.default),     # decompositions]
                        (aten.xlogy, aten.log.default)):
            for overload in op.overloads():
                table[getattr(op, overload)] = _special_log(log)
        _DECOMPOSITIONS = {op: _tagged(op, fn) if op in CLOSED_FORMS else fn
                           for op, fn in table.items() if op not in JET_RULES}
    return _DECOMPOSITIONS


# NOTE [closed forms] (``_closed_forms.py``): the ops a decomposition of an activation
# emits carry ``node.meta["custom"][BLOCK_TAG]``, a stack (outermost first: Mish's
# decomposition calls Softplus's) of ``(op, instance, params, kwargs)``. Tags are
# written only while ``_tagging`` is on (a capture), through torch.fx's own node
# metadata; without it (or without the API) graphs are untagged and the family
# program differentiates the decomposed ops one by one, as exactly.
BLOCK_TAG = "derivs.closed_form"
_INSTANCES = itertools.count()


def _tagging():
    if not hasattr(fx_traceback, "annotate"):
        return contextlib.nullcontext()
    return fx_traceback.preserve_node_meta()


def _tagged(op, decomposition):
    if not hasattr(fx_traceback, "annotate"):
        return decomposition

    def tagged(*args, **kwargs):
        params = args[1:]
        if (not fx_traceback.has_preserved_node_meta()
                or any(isinstance(p, torch.Tensor) for p in (*params, *kwargs.values()))):
            return decomposition(*args, **kwargs)
        custom = fx_traceback.get_current_meta().get("custom") or {}
        outer = tuple(custom.get(BLOCK_TAG, ()))
        tag = outer + ((op, next(_INSTANCES), params, dict(kwargs)),)
        with fx_traceback.annotate({BLOCK_TAG: tag}):
            return decomposition(*args, **kwargs)
    return tagged


def block_tag(node: fx.Node) -> tuple | None:
    """The outermost closed-form tag of ``node``: ``(op, instance, params, kwargs)``."""
    custom = node.meta.get("custom")
    tags = custom.get(BLOCK_TAG) if isinstance(custom, dict) else None
    return tags[0] if tags else None


def _check_pure(node: fx.Node, lifted_nodes: dict, state: _guards.State) -> None:
    """Random draws and in-place updates run on the general path (a cached graph
    must mean exactly what f means, call after call)."""
    target = node.target
    if is_random(target):
        raise Unsupported(f"f draws random numbers ({target})")
    if not is_mutating(target):
        return
    dest = node.args[0] if node.args else None
    if dest in lifted_nodes:
        where = state.buffer_of(lifted_nodes[dest])
        if where is not None:
            raise StateError(
                f"derivs: f updates the buffer {where} in place while it runs (a BatchNorm in "
                "train mode updates its running statistics, and its batch statistics "
                "couple the samples). Call model.eval() before taking derivatives, or "
                "pass the statistics explicitly.")
        raise Unsupported(f"f updates a tensor it reads in place ({target})")
    raise Unsupported(f"f updates a tensor in place ({target})")


def out_of_place(graph: fx.Graph) -> None:
    """In-place ops on temporaries become their out-of-place twins."""
    _out_of_place_views(graph)
    _out_of_place_updates(graph)


def functional(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` without in-place updates of temporaries. Decompositions run below
    functionalization, so a decomposition that writes into a view of a fresh
    buffer (circular padding, QR, SVD formulas) leaves ``copy_`` into a slice: the
    simple rewrite handles fresh buffers, and a second functionalized trace of the
    graph handles the rest (updates of inputs stay visible as ``copy_``)."""
    out_of_place(gm.graph)
    if not any(n.op == "call_function" and is_mutating(n.target) for n in gm.graph.nodes):
        return gm
    examples = [torch.zeros(n.meta["val"].shape, dtype=n.meta["val"].dtype,
                            device=n.meta["val"].device)
                for n in gm.graph.nodes if n.op == "placeholder"]
    with clean_dispatch_state():
        again = make_fx(torch.func.functionalize(gm), tracing_mode="fake",
                        _allow_non_fake_inputs=True)(*examples)
    out_of_place(again.graph)
    return again


def _out_of_place_updates(graph: fx.Graph) -> None:
    """In-place updates of temporaries (left by ATen decompositions that run below
    functionalization: ``logical_not_``, ``copy_`` into a fresh buffer) become
    their functional twins, and later readers of the temporary read the result.
    Only where nothing else can see the update: the destination is an op's fresh
    result (not an input, not a view) and no view of it is taken."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function" or not is_mutating(node.target):
            continue
        twin = _functional_twin(node.target)
        dest = node.args[0] if node.args else None
        if twin is None or not isinstance(dest, fx.Node) or dest.op != "call_function":
            continue
        if _aliases(dest.target) or any(u is not node and _aliases(u.target)
                                        for u in dest.users):
            continue
        for user in list(dest.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(dest, node)
        node.target = twin


def _functional_twin(target):
    """``aten.foo.overload`` for ``aten.foo_.overload`` when only the first argument
    is written, else None."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return None
    written = [a for a in schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    if written != [schema.arguments[0]] or not schema.name.endswith("_"):
        return None
    packet = getattr(aten, schema.name.split("::")[-1][:-1], None)
    twin = getattr(packet, schema.overload_name or "default", None)
    if twin is None or getattr(twin, "_schema", None) is None or twin._schema.is_mutable:
        return None
    return twin


def _aliases(target) -> bool:
    """Whether the op's result may alias an input (views)."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return target is not operator.getitem
    return any(r.alias_info is not None for r in schema.returns)


# In-place view ops that ATen decompositions apply to fresh intermediates (matmul of
# a vector squeezes its result in place); functionalization leaves them.
_INPLACE_VIEWS = {
    aten.squeeze_.dim: aten.squeeze.dim, aten.squeeze_.dims: aten.squeeze.dims,
    aten.squeeze_.default: aten.squeeze.default,
    aten.unsqueeze_.default: aten.unsqueeze.default,
    aten.t_.default: aten.t.default, aten.transpose_.default: aten.transpose.int,
}


def _out_of_place_views(graph: fx.Graph) -> None:
    """Rewrites an in-place view op to its out-of-place twin when nothing else sees
    the tensor it changes (it has no other user and is not an input)."""
    for node in graph.nodes:
        twin = _INPLACE_VIEWS.get(node.target)
        if twin is None:
            continue
        src = node.args[0]
        if src.op != "placeholder" and len(src.users) == 1:
            node.target = twin
