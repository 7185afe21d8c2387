"""The PyTorch trace-once engine (strategy ``"traced-jet"``).

``prepare`` returns the cached ``Compiled`` graph or a ``Fallback`` (with the
reason) for a call's signature; ``execute`` runs a ``Compiled`` graph.

The capture (NOTE [capture] in ``_capture.py``) is shared with the sparsity
detector and the sparse evaluator (``derivs._sparsity._torch*``), which use it
only through the names re-exported here:

* ``capture(fun, args, kwargs, reads=, table=, pure=)``: f as a functional ATen
  graph with the tensors it reads lifted to inputs; ``Unliftable`` when what f
  reads cannot be lifted or guarded;
* ``BUILD_LOCK``, ``outside_functorch()``, ``clean_dispatch_state()``: what any
  ``make_fx`` trace must run under (one trace at a time; plain tensors inside
  torch.func transforms; PyTorch's dispatch state put back after a failure);
* ``inside_trace(args)`` / ``inside_functorch()``: whether a graph is being
  built around this call / a torch.func transform is active (build nothing then);
* ``cache_key(args, kwargs)``: the signature a captured graph is kept under.

The operators reach the stacked family program (``_family.py``) through
``family_program`` and its seeds (``Seeds``, ``unit_seeds``, ``shared_rows``).
"""

from __future__ import annotations

from ...core._spec import Spec
from ._engine import Compiled as Compiled
from ._engine import Fallback as Fallback
from ._capture import BUILD_LOCK as BUILD_LOCK
from ._capture import Unliftable as Unliftable
from ._capture import capture as capture
from ._capture import clean_dispatch_state as clean_dispatch_state
from ._capture import inside_functorch as inside_functorch
from ._capture import outside_functorch as outside_functorch
from ._capture import cache_key as cache_key
from ._capture import made_by_f as made_by_f
from ._capture import StateError, guarded_get, inside_trace, shared_capture
from ._math_forms import math_forms as math_forms
from ._engine import build
from ._family import Seeds as Seeds
from ._family import shared_rows as shared_rows
from ._family import unit_seeds as unit_seeds
from ._engine import lookup as lookup
from ._engine import run as execute


def prepare(spec: Spec, args: tuple, kwargs: dict) -> Compiled | Fallback:
    """The graph for this call, built on first use of the signature and again
    whenever its state guard fails; or the Fallback with the reason."""
    if inside_trace(args):
        return Fallback("called inside another trace (the general path composes there)")
    key = cache_key(args, kwargs)
    if key is None:
        return Fallback("a non-tensor argument is not hashable, so no graph can be cached")
    entry = guarded_get(spec.cache, key)
    if entry is None:
        entry = build(spec, args, kwargs)
        spec.cache.put(key, entry)
    return entry


def family_program(spec: Spec, args: tuple, kwargs: dict, programs,
                   torch_compile: bool = False):
    """The stacked family program of ``spec.fun`` in its one argument at these
    arguments (NOTE [stacked rules]), or the Fallback with the reason. Made once
    per signature and kept in ``programs`` while its state guard holds;
    ``torch_compile`` runs it under torch.compile."""
    from . import _family

    key = cache_key(args, kwargs)
    program = None if key is None else guarded_get(programs, ("family", key))
    if program is None:
        (argnum,) = spec.argnums
        program = _family.prepare(spec.fun, args, kwargs, argnum, spec.batch_axis, spec.cache)
        if torch_compile and not isinstance(program, Fallback):
            program = _family.compiled(program)
        if key is not None:
            programs.put(("family", key), program)
    return program
