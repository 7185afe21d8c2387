"""The PyTorch trace-once engine (strategy ``"traced-jet"``).

``prepare`` returns the cached ``Compiled`` graph or a ``Fallback`` (with the
reason) for a call's signature; ``execute`` runs a ``Compiled`` graph.
"""

from __future__ import annotations

from ...core._spec import Spec
from ._engine import Compiled as Compiled
from ._engine import Fallback as Fallback
from ._capture import StateError, cache_key, guarded_get, shared_capture
from ._engine import build, tracing_active
from ._engine import lookup as lookup
from ._engine import run as execute


def prepare(spec: Spec, args: tuple, kwargs: dict) -> Compiled | Fallback:
    """The graph for this call, built on first use of the signature and again
    whenever its state guard fails; or the Fallback with the reason."""
    if tracing_active(args):
        return Fallback("called inside another trace (the general path composes there)")
    key = cache_key(args, kwargs)
    if key is None:
        return Fallback("a non-tensor argument is not hashable, so no graph can be cached")
    entry = guarded_get(spec.cache, key)
    if entry is None:
        entry = build(spec, args, kwargs)
        spec.cache.put(key, entry)
    return entry

