"""The PyTorch trace-once engine (strategy ``"traced-jet"``).

``prepare`` returns the cached ``Compiled`` graph or a ``Fallback`` (with the
reason) for a call's signature; ``execute`` runs a ``Compiled`` graph.
"""

from __future__ import annotations

from ._engine import Compiled as Compiled
from ._engine import Fallback as Fallback
from ._engine import build, cache_key, tracing_active
from ._engine import lookup as lookup
from ._engine import run as execute

def prepare(transform, args: tuple, kwargs: dict) -> Compiled | Fallback:
    if tracing_active(args):
        return Fallback("called inside another trace (the general path composes there)")
    key = cache_key(transform, args, kwargs)
    if key is None:
        return Fallback("a non-tensor argument is not hashable, so no graph can be cached")
    entry = transform.cache.get(key)
    if entry is None:
        entry = build(transform, args, kwargs)
        transform.cache.put(key, entry)
    return entry

