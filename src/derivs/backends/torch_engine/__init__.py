"""The PyTorch trace-once engine (strategy ``"traced-jet"``).

``prepare`` returns the cached ``Compiled`` graph or a ``Fallback`` (with the
reason) for a call's signature; ``execute`` runs a ``Compiled`` graph.
"""

from __future__ import annotations

from ._engine import Compiled as Compiled
from ._engine import Fallback as Fallback
from ._engine import build, captured_values, signature, tracing_active
from ._engine import lookup as lookup
from ._engine import run as execute

STRATEGY = "traced-jet"


def prepare(transform, args: tuple, kwargs: dict) -> Compiled | Fallback:
    if tracing_active(args):
        return Fallback("called inside another trace (the general path composes there)")
    sig = signature(args, kwargs)
    if sig is None:
        return Fallback("a non-tensor argument is not hashable, so no graph can be cached")
    sig = (sig, captured_values(transform.fun))
    entry = transform.cache.get(sig)
    if entry is None:
        entry = build(transform, args, kwargs)
        transform.cache.put(sig, entry)
    return entry

