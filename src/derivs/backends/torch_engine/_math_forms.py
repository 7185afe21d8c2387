"""Ops in their math form while derivs traces f or nests forward AD through it.

Two kinds of ops need it: those whose fused kernels have no forward-mode
derivative (attention: NOTE [attention]), and those whose forward-mode derivative
PyTorch gets wrong at higher orders (NOTE [wrong forward AD]).

NOTE [attention]: ``F.scaled_dot_product_attention`` dispatches to fused kernels
(flash and memory-efficient attention on CPU and GPU, cuDNN), and in eval mode
``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` take a fused fast path
(``_native_multi_head_attention``, ``_transformer_encoder_layer_fwd``). None of
these has a forward-mode derivative, so nested forward AD raises and a captured
graph would hold ops no rule knows. The math kernel (matmuls and a softmax) has
the same values and every derivative.

PyTorch chooses kernels by process-wide flags (``sdpa_kernel``,
``torch.backends.mha``), and a ``TorchFunctionMode`` cannot reach the kernel
choice inside ``F.multi_head_attention_forward`` (a mode is inactive inside its
own handler). So :func:`math_attention` sets the flags for as long as a capture
or a general-path call runs (both already serialized by their locks), counted so
that overlapping entries from the two locks restore them exactly once. Meanwhile
attention in other threads also runs the math kernel: the same values up to
rounding, more slowly; nothing else changes.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

_LOCK = threading.Lock()
_DEPTH = 0
_SAVED: tuple | None = None


def _flags() -> tuple:
    return (torch.backends.mha.get_fastpath_enabled(),
            torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled(),
            _cudnn_enabled())


def _cudnn_enabled() -> bool:
    fn = getattr(torch.backends.cuda, "cudnn_sdp_enabled", None)
    return bool(fn()) if fn is not None else False


def _set(fastpath: bool, flash: bool, efficient: bool, math: bool, cudnn: bool) -> None:
    torch.backends.mha.set_fastpath_enabled(fastpath)
    torch.backends.cuda.enable_flash_sdp(flash)
    torch.backends.cuda.enable_mem_efficient_sdp(efficient)
    torch.backends.cuda.enable_math_sdp(math)
    enable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
    if enable is not None:
        enable(cudnn)


@contextlib.contextmanager
def math_attention():
    """Attention runs its math kernel inside (NOTE [attention]): for captures."""
    global _DEPTH, _SAVED
    with _LOCK:
        if _DEPTH == 0:
            _SAVED = _flags()
            _set(False, False, False, True, False)
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _SAVED is not None:
                _set(*_SAVED)
                _SAVED = None


# NOTE [wrong forward AD]: PyTorch's forward-mode formula of ``native_layer_norm``
# gives wrong derivatives at order 2 and above when nested (torch 2.13, checked
# against the same function in elementary ops and against float64 finite
# differences: forward over forward differs by ~20% at an ordinary point). A
# captured graph never meets it (layer norm is decomposed before any rule runs),
# but the general path nests ``torch.func.jvp`` through f itself. There
# :func:`math_forms` sends ``F.layer_norm`` to its elementary form with a
# ``TorchFunctionMode`` (thread-local; ``nn.LayerNorm`` and the transformer
# layers call ``F.layer_norm``).
def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dims, keepdim=True)
    dev = input - mean
    out = dev * torch.rsqrt((dev * dev).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


_FORMS = {torch.nn.functional.layer_norm: _layer_norm}


class _MathForms(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        own = _FORMS.get(func)
        return (own or func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def math_forms():
    """Both kinds of math form (NOTE [attention], NOTE [wrong forward AD]): for the
    general path's nested forward AD."""
    with math_attention(), _MathForms():
        yield
