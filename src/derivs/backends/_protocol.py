"""The framework adapter protocol: what every framework module (``_jax.py``,
``_torch.py``) provides, and the only place the rest of derivs learns about a
framework. ``backends.backend_for(args, api)`` picks the module from the arguments.

Checked by mypy (``tests/test_types.py``): each adapter module is assigned to a
``Backend`` below, so a missing or mistyped member fails the test run.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from ..core._execute import ForwardMode


class Backend(ForwardMode, Protocol):
    """One framework: detection, validation, seeds, JVPs, signatures, dense
    fallbacks and the few array operations the operators need. Extends the
    executor's framework-free part (``core._execute.ForwardMode``: ``name``,
    ``one_hot``, ``jvp``)."""

    name: str  # "jax" or "torch": for messages and measured rules keyed by framework
    engine: ModuleType  # the traced-jet engine (``jax_engine`` / ``torch_engine``)
    accepts_torch_compile: bool  # whether ``torch_compile=True`` applies
    # NOTE [batch axis layout] (``_batch.py``): a proven batch axis runs the per-sample
    # operator vmapped (True) or every sample in one pass (False)
    vmap_operators: bool
    # NOTE [per-sample route] (``_batch.py``): whether the route that gives f bare
    # samples is tried before batches of one (both are taken only when they
    # reproduce f on the batch; the order decides speed only)
    bare_samples_first: bool
    # the engine has a stacked family program (one batched op per ATen op for all
    # directions) rather than a vmapped family
    stacked_family: bool

    def launch_bound(self, device_type: str | None) -> bool:
        """Whether one kernel per op and direction would dominate on this device (then
        every D takes the stacked family; NOTE [direction layout], [mixed-term layout])."""
        ...

    def sparsity(self) -> ModuleType:
        """The sparse-derivative side (``derivs._sparsity._jax`` / ``_torch``)."""
        ...

    # -- detection and validation ------------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether ``x`` is this framework's array."""
        ...

    def as_input(self, x: Any, argnum: int, api: str, batch_axis: int | None) -> Any:
        """``x`` as a floating array to differentiate; TypeError saying what to pass."""
        ...

    def check_output(self, out: Any, api: str) -> None:
        """TypeError unless ``out`` is (a pytree of) floating arrays."""
        ...

    # -- beyond nested forward mode (``core/_execute.py``: ``one_hot``, ``jvp``) ----------
    def first_order_reverse(self, fun: Callable, selected: tuple, requests: Any) -> list:
        """First-order partials (and the value) of a scalar output from one gradient."""
        ...

    # -- caching keys and the state f reads --------------------------------------------
    def signature(self, fun: Callable, args: tuple, kwargs: dict) -> Any:
        """A hashable key of the call's argument signature, or None."""
        ...

    def state_check(self, fun: Callable) -> Callable[[], bool] | None:
        """``() -> bool`` while what ``fun`` reads is unchanged, or None."""
        ...

    def output_shape(self, fun: Callable, args: tuple, kwargs: dict,
                     cache: Any = None) -> tuple[int, ...] | None:
        """The shape of ``fun``'s output, None if it is not one array."""
        ...

    # -- array operations of the operators (``_operators.py``, ``_collapsed.py``) -------
    unsqueeze: Callable[..., Any]
    stack: Callable[..., Any]
    concatenate: Callable[..., Any]
    grad: Callable[..., Any]
    vmap: Callable[..., Any]
    reduce_sum: Callable[..., Any]
    movedim: Callable[..., Any]
    tree_map: Callable[..., Any]

    def broadcast(self, v: Any, like: Any) -> Any:
        """``v`` broadcast to ``like``'s shape."""
        ...

    def jvp_tangent(self, g: Callable, x: Any, v: Any) -> Any:
        """The tangent of ``g`` at ``x`` along ``v``."""
        ...

    def over_units(self, g: Callable, n: int, sample: tuple, like: Any,
                   chunk_size: int | None) -> Any:
        """``g`` over the unit directions of one sample, stacked, chunk by chunk."""
        ...

    def tree_add(self, a: Any, b: Any) -> Any:
        """Leafwise ``a + b`` of two pytrees of one structure."""
        ...

    def as_array(self, v: Any, like: Any) -> Any:
        """``v`` as an array of ``like``'s dtype (and device)."""
        ...

    def tensordot(self, a: Any, b: Any) -> Any:
        """``a`` contracted with ``b`` over ``a``'s last and ``b``'s first axis."""
        ...

    def random_directions(self, key: Any, shape: tuple, like: Any, distribution: str,
                          api: str) -> Any:
        """Rademacher or Gaussian numbers; TypeError when ``key`` is not this
        framework's kind of random key."""
        ...

    def random_coordinates(self, key: Any, samples: int, n: int, like: Any,
                           api: str) -> Any:
        """``samples`` distinct integer indices below ``n``, uniformly without
        replacement, on ``like``'s device; TypeError for a wrong kind of key."""
        ...

    def coordinate_rows(self, indices: Any, n: int, like: Any) -> Any:
        """Rows ``e_{indices[k]}`` of the ``n x n`` identity, ``(len(indices), n)``,
        of ``like``'s dtype and device (no identity is made)."""
        ...

    # -- over the samples (``_batch.py``) -------------------------------------------------
    def vmap_over(self, fn: Callable, in_dims: tuple, out_axis: int) -> Callable:
        """``fn`` vmapped: argument ``i`` over axis ``in_dims[i]`` (None: broadcast)."""
        ...

    def unvmappable(self, error: BaseException) -> bool:
        """Whether ``error`` says the framework cannot vmap f (a Python branch or
        conversion on a value), as opposed to f failing."""
        ...

    def no_grad(self) -> Any:
        """A context in which evaluating f records nothing for autograd."""
        ...

    def to_numpy(self, a: Any) -> Any:
        """``a`` as a NumPy array; raises for traced values (under jit or a trace)."""
        ...

    def random_like(self, args: tuple, signed: bool = False) -> tuple:
        """``args`` with every floating array replaced by a concrete random one of
        the same shape, dtype (and device); other arguments as they are. Values in
        [0.25, 0.75] (inside every common domain: log, sqrt), or with ``signed``
        standard normal (both signs, magnitudes above 1)."""
        ...

    def concrete(self) -> Any:
        """A context in which operations on concrete arrays give concrete results
        even inside a trace."""
        ...

    def map_chunks(self, per_sample: Callable, batched: Callable, args: tuple, dims: list,
                   size: int, out_axis: int, batch_size: int) -> Any:
        """The samples ``batch_size`` at a time (JAX: ``lax.map`` of ``per_sample``;
        PyTorch: a loop of ``batched`` over slices)."""
        ...


if TYPE_CHECKING:  # the adapters implement the protocol (checked by mypy)
    from . import _jax, _torch

    _JAX: Backend = _jax
    _TORCH: Backend = _torch
