"""What a transform learns about ``f`` by looking at it once per argument
signature: the shape of its output and whether ``batch_axis`` is right for it.

Both probes take the engines' request (``core/_spec.Spec``), so partials and
operators share them, and both keep their answer in the spec's cache for as long
as the state ``f`` reads is unchanged (a cached answer must prove it is still
valid: ``backend.state_check`` / the verdict's ``valid``).
"""

from __future__ import annotations

from collections.abc import Callable

from . import _batch
from .core import _ledger
from .core import _plan, _request
from .core._cache import LRUCache
from .core._spec import Spec


def operator_spec(fun: Callable, argnum: int, batch_axis: int | None, api: str) -> Spec:
    """The request an exact operator hands its engines: ``fun`` in the one
    argument ``argnum``. Its plan reads first-order coefficients only; the
    operators choose the orders and directions themselves (the engines' family
    entry points take them per call)."""
    request = _request.parse_index(0, (argnum,), False, api=api, allow_value=False)
    return Spec(fun, (argnum,), batch_axis, _plan.make_plan([request]), api=api,
                cache=LRUCache(maxsize=32))


def output_shape(spec: Spec, backend, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The shape of f's output (None for a container), probed once per argument
    signature (``backend.signature``) and state of what f reads
    (``backend.state_check``)."""
    key = ("output shape", backend.signature(spec.fun, args, kwargs))
    if key[1] is not None:
        hit = spec.cache.get(key)
        if hit is not None and hit[1]():
            return hit[0]
    check = backend.state_check(spec.fun)
    shape = backend.output_shape(spec.fun, args, kwargs, spec.cache)
    if key[1] is not None and check is not None:
        spec.cache.put(key, (shape, check))
    return shape


def batch_verdict(spec: Spec, backend, args: tuple, kwargs: dict) -> _batch.Verdict:
    """Whether ``spec.batch_axis`` is right for f at these arguments (NOTE [batch
    axis proof]), cached per signature while what f reads is unchanged; raises
    ValueError when it is wrong."""
    key = ("batch verdict", backend.signature(spec.fun, args, kwargs))
    hit = spec.cache.get(key) if key[1] is not None else None
    if hit is not None and (hit.valid is None or hit.valid()):
        return hit
    with _ledger.phase("batch proof"):  # NOTE [first-call ledger]
        if spec.has_aux:
            shape = backend.output_shape(lambda *a, **k: spec.fun(*a, **k)[0], args, kwargs)
        else:
            shape = output_shape(spec, backend, args, kwargs)
        verdict = _batch.verdict(spec.api, backend, spec.fun, args, kwargs, spec.argnums,
                                 spec.batch_axis, spec.has_aux, shape)
    if key[1] is not None:
        spec.cache.put(key, verdict)
    return verdict
