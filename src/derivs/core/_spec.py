"""What an engine is given: the request, not the API object that made it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._plan import Plan


@dataclasses.dataclass(frozen=True)
class Spec:
    """A derivative request as the engines see it (``jax_engine.prepare``,
    ``torch_engine.prepare`` / ``lookup``): ``fun`` differentiated in the positional
    arguments ``argnums`` (``batch_axis``: their axis of independent samples), the
    coefficients ``plan`` reads, and where compiled graphs are kept (``cache``, a
    bounded LRU shared with the transform that owns the spec)."""

    fun: Callable
    argnums: tuple[int, ...]
    batch_axis: int | None
    plan: Plan
    has_aux: bool = False
    torch_compile: bool = False
    api: str = "derivs"  # the public name, for error messages
    cache: Any = dataclasses.field(default=None, compare=False, repr=False)
