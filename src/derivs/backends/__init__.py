"""Backends execute plans; one module per framework, chosen from the arguments.

A backend is a module implementing the written protocol ``_protocol.Backend``
(``_jax.py``, ``_torch.py``; mypy checks both against it). Frameworks are imported
only when the caller already uses them, so ``import derivs`` needs neither.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

_MODULES = {"jax": "derivs.backends._jax", "torch": "derivs.backends._torch"}


def _framework_of(x: Any) -> str | None:
    # Look only at frameworks that are already imported: an array of a framework
    # that was never imported cannot exist.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    return None


def engine_for_plain_call(args: tuple) -> ModuleType | None:
    """The traced engine when the first argument is a torch.Tensor: the cheap
    check in front of the engine's cache lookup on every call."""
    torch = sys.modules.get("torch")
    if torch is not None and args and isinstance(args[0], torch.Tensor):
        engine = _ENGINE.get("torch")
        if engine is None:  # imported once, not on every call (the hot path)
            engine = _ENGINE["torch"] = backend_named("torch").engine
        return engine
    return None


_ENGINE: dict[str, ModuleType] = {}


# The oldest framework versions derivs runs on (pyproject's extras; the floor job of
# ``.ci/run`` tests exactly these). jax and torch are optional dependencies, so pip
# accepts any installed version beside derivs: it is checked at first use.
MINIMUM = {"jax": (0, 9, 2), "torch": (2, 13)}
_CHECKED: set[str] = set()


def backend_named(name: str) -> ModuleType:
    if name not in _CHECKED:
        check_version(name)
        _CHECKED.add(name)
    return importlib.import_module(_MODULES[name])


def check_version(name: str, version: str | None = None) -> None:
    """An ImportError naming the version needed when the installed ``name`` is older
    than derivs supports (``version``: the installed one, read from the module)."""
    if version is None:
        version = getattr(sys.modules.get(name) or importlib.import_module(name),
                          "__version__", "0")
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    need = MINIMUM[name]
    if tuple(parts[:len(need)]) < need:
        want = ".".join(map(str, need))
        raise ImportError(
            f"derivs needs {name}>={want}, but {name} {version} is installed. Upgrade it: "
            f"pip install '{name}>={want}' (or pip install 'derivs[{name}]').")


def backend_for(args: tuple, api: str) -> ModuleType:
    """The backend of the arrays in ``args`` (top-level arguments and the leaves of
    plain lists, tuples and dicts)."""
    found = {fw for fw in map(_framework_of, _leaves(args)) if fw is not None}
    if len(found) > 1:
        raise TypeError(
            f"{api}: the arguments mix jax.Array and torch.Tensor; call the transformed "
            "function with arrays of one framework (the one f is written in)."
        )
    if not found:
        missing = [name for name in ("jax", "torch") if importlib.util.find_spec(name) is None]
        install = "".join(f" {name} is not installed: pip install 'derivs[{name}]'."
                          for name in missing)
        raise TypeError(
            f"{api}: cannot tell the framework from the arguments (no jax.Array or "
            "torch.Tensor among them). Pass jnp.asarray(x) for a JAX function or "
            "torch.as_tensor(x) for a PyTorch function." + install
        )
    return backend_named(found.pop())


def framework_mismatch(f: Any, args: tuple, api: str) -> str | None:
    """Why a failed call of ``f`` may be a framework mix-up: ``f`` reads only the
    other framework's module (or its functions) while ``args`` hold one framework's
    arrays; None otherwise. Asked only after a call failed (it walks ``f``'s
    globals and closure)."""
    from ._common import referenced_values

    found = {fw for fw in map(_framework_of, _leaves(args)) if fw is not None}
    if len(found) != 1:
        return None
    given = found.pop()
    used = set()
    for value in [f] + [v for _, v in referenced_values(f)]:
        module = value.__name__ if isinstance(value, ModuleType) else getattr(
            value, "__module__", None)
        root = (module or "").split(".")[0]
        if root in ("jax", "jaxlib", "torch"):
            used.add("torch" if root == "torch" else "jax")
    if used and given not in used:
        other = used.pop()
        convert = ("jnp.asarray(x)" if other == "jax" else "torch.as_tensor(x)")
        return (f"{api}: f is written with {other} (it calls {other}) but was called with "
                f"{'jax.Array' if given == 'jax' else 'torch.Tensor'} arguments; derivs "
                f"differentiates f in the framework of its inputs. Pass {convert}.")
    return None


def checked_call(f: Any, args: tuple, api: str, run):
    """``run()``; a failure that :func:`framework_mismatch` explains is raised as a
    TypeError saying so (the framework's own error chained)."""
    try:
        return run()
    except Exception as e:
        if _out_of_memory(e):
            raise MemoryError(
                f"{api}: ran out of memory ({type(e).__name__}: {str(e).splitlines()[0][:120]})."
                " Bound it with batch_size=b (with batch_axis: b samples at a time, on "
                "the partials and the exact operators) and, on the operators, chunk_size=c "
                "(c directions at a time).") from e
        mismatch = framework_mismatch(f, args, api)
        if mismatch is not None:
            raise TypeError(mismatch) from e
        known = _known_failure(e, api)
        if known is None:
            raise
        raise known from e


def _known_failure(e: BaseException, api: str) -> BaseException | None:
    """A framework error whose cause derivs can name, as a derivs error with the fix
    (None: re-raise the framework's own)."""
    from .._errors import StateError

    text = str(e)
    if "Pure callbacks do not support JVP" in text:
        return ValueError(
            f"{api}: f calls jax.pure_callback, a Python function JAX cannot "
            "differentiate. Give the callback a jax.custom_jvp rule (its derivative), or "
            "keep the callback out of the part of f being differentiated.")
    if "would mutate a captured Tensor" in text or "mutate a captured tensor" in text:
        return StateError(
            f"{api}: f updates a tensor it reads in place while it runs, which cannot be "
            "differentiated (each derivative pass would update it again). Return the new "
            "value instead of writing it; for a BatchNorm in train mode (it updates its "
            "running statistics, and its batch statistics couple the samples), call "
            "model.eval() before taking derivatives.")
    if "INTERNAL ASSERT FAILED" in text and "current_level" in text and "escaped" in text:
        return StateError(
            f"{api}: f keeps a tensor it computed in its own state (a closure variable, an "
            "attribute or a global it rebinds while it runs) and reads it on a later "
            "evaluation. derivs evaluates f several times per derivative, under "
            "torch.func transforms whose tensors must not outlive one evaluation. Keep "
            "such state outside f (update it after the derivative), or pass it in as an "
            "argument.")
    marker = "Trying to use forward AD with "
    if marker in text:
        op = text.split(marker, 1)[1].split(" that", 1)[0]
        return NotImplementedError(
            f"{api}: PyTorch has no forward-mode derivative of {op}, and the traced engine "
            "could not take f either (explain(...) says why), so the general path that "
            "nests forward mode cannot differentiate it. Rewrite that step with ops "
            "PyTorch differentiates forward, or, for a scalar f's first-order partials "
            "and operators, pass strategy='reverse'.")
    if type(e).__name__ == "UnexpectedTracerError":
        return ValueError(
            f"{api}: JAX could not differentiate f forward: a function f calls leaks a "
            "tracer out of the transformation (in JAX 0.10, jax.scipy.special.exp1 and "
            "expn do, and jax.jacfwd fails on them the same way). Write that step with "
            "differentiable ops, or report it to JAX.")
    if "Differentiation rule for 'custom_lin' not implemented" in text:
        return ValueError(
            f"{api}: f calls a jax.custom_vjp function, which defines reverse mode only, "
            "and this request needs forward mode through it. Give the function a "
            "jax.custom_jvp rule instead; for the Laplacian or Hessian diagonal of a "
            "scalar f, strategy='reverse' works through it.")
    return None


# Messages of the frameworks' out-of-memory errors: XLA (RESOURCE_EXHAUSTED; on CPU
# an allocation inside a YNNPACK kernel fails with a bare INTERNAL error), PyTorch.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                "YNNPACK operation failed", "CUDA out of memory",
                "can't allocate memory", "Failed to allocate", "failed to allocate")


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    if "Error dispatching computation" in text and "alloc" in text.lower():
        return True  # XLA:CPU's wrapper of a failed allocation
    return any(m in text for m in _OOM_MARKERS)


def _leaves(tree: Any):
    if isinstance(tree, (list, tuple)):
        for t in tree:
            yield from _leaves(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _leaves(t)
    else:
        yield tree
