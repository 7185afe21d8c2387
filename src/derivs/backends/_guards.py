"""What a function reads besides its arguments, and guards that prove it has not
changed (PyTorch and JAX; PyTorch is imported only if the caller already has).

NOTE [state guards]: a captured graph bakes in everything ``f`` read while it was
traced, except the tensors it takes as inputs. ``walk(f)`` follows what ``f`` can
reach (closure cells, the globals its code names, default arguments, bound
methods, ``functools.partial``, ``nn.Module`` parameters, buffers, submodules and
attributes, attributes of other objects, methods of user classes, lists, tuples and
dicts) and returns a :class:`State`:

* ``tensors``: every tensor found, each with the places it is stored. The capture
  swaps them for graph inputs while it traces (as ``torch.func.functional_call``
  swaps parameters), so they are *lifted*: read live at each call, never baked in,
  and gradients flow to them.
* ``check()``: one generated Python function of identity and equality tests, true
  while every place still holds the same object (tensors, modules, functions),
  equal plain values (numbers, strings, dtypes, ``training`` flags), equal NumPy
  arrays and the same container lengths. A cached graph runs only while its check
  holds; otherwise ``f`` is traced again. The check costs tens of nanoseconds per
  place (a few microseconds for an MLP ``nn.Module``).

The walk also follows ``__slots__``, ``collections.deque``s (by position),
``array.array``s (by value), ``functools.lru_cache`` wrappers (the wrapped
function, and the cache's size, which ``cache_clear`` changes), attributes set on
functions, ``functools.partial`` keywords, ``ContextVar`` values, the attributes of
imported modules that ``f``'s code names (a user's module: walked like any object;
a library's: its plain values and mappings, e.g. ``os.environ``), and PyTorch's
global module hooks once ``f`` reaches an ``nn.Module``. What it cannot enumerate
raises :class:`Unguardable`, and nothing about ``f`` is cached (NOTE [unguardable]):
code that looks names up dynamically (``globals()``, ``eval``, ``exec``,
``__import__``). Files and sockets are out of reach of any guard. ``.item()`` and
Python control flow on a lifted tensor are seen: the trace raises on them, and the
transform runs on the general path.

NOTE [unguardable]: a guard that cannot see everything ``f`` reads must not let a
cached graph (or pattern, or verdict) stand in for ``f``: the transform then runs
without a cache (the general path, or a fresh capture per call) and ``explain``
names what could not be guarded.
"""

from __future__ import annotations

import array
import collections
import collections.abc
import contextvars
import dataclasses
import functools
import math
import sys
import types
import weakref
from typing import Any

import numpy as np

MAX_PLACES = 50_000  # beyond this, f reaches too much state to guard cheaply
_BASE_PLAIN = (int, float, bool, str, bytes, complex, type(None), np.generic)


class _NoType:
    """Stands for a PyTorch type when PyTorch is not imported (nothing is one)."""


def _torch():
    return sys.modules.get("torch")


def _types():
    """``(plain value types, tensor type, module type)`` for this process."""
    torch = _torch()
    if torch is None:
        return _BASE_PLAIN, _NoType, _NoType
    return (_BASE_PLAIN + (torch.dtype, torch.device, torch.Size), torch.Tensor,
            torch.nn.Module)
# nn.Module dicts that PyTorch creates once and never rebinds: their contents are
# guarded, not their identity (half the checks of a module).
_MODULE_DICTS = frozenset({
    "_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"})
# nn.Module bookkeeping that forward does not read.
_MODULE_SKIP = frozenset({
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_non_persistent_buffers_set", "_compiled_call_impl"})
_LIBRARY_PREFIXES = ("torch", "numpy", "builtins", "functools", "collections", "typing",
                     "abc", "enum", "jax", "jaxlib", "derivs", "scipy")
_MISSING = object()
# Names through which code reads variables it does not name (NOTE [unguardable]).
_DYNAMIC_LOOKUPS = frozenset({"globals", "eval", "exec", "__import__"})
# PyTorch's process-wide hooks that every nn.Module call runs.
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                 "_global_forward_hooks_always_called", "_global_forward_hooks_with_kwargs")


class Unguardable(Exception):
    """f reads state that cannot be guarded."""


# -- places: where a value is stored ----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Place:
    """A mutable location: ``kind`` is "cell" (``holder.cell_contents``), "item"
    (``holder[key]`` of a dict or list) or "attr" (``getattr(holder, key)``)."""

    kind: str
    holder: Any
    key: Any = None

    def get(self) -> Any:
        if self.kind == "cell":
            return self.holder.cell_contents
        if self.kind == "item":
            return self.holder[self.key]
        return getattr(self.holder, self.key)

    def delete(self) -> None:
        if self.kind == "cell":
            del self.holder.cell_contents
        elif self.kind == "item":
            del self.holder[self.key]
        else:
            delattr(self.holder, self.key)

    def set(self, value: Any) -> None:
        if self.kind == "cell":
            self.holder.cell_contents = value
        elif self.kind == "item":
            self.holder[self.key] = value
        else:
            setattr(self.holder, self.key, value)


@dataclasses.dataclass(frozen=True)
class InTuple:
    """Position ``index`` of the tuple stored at ``parent``."""

    parent: Any  # Place | InTuple | None (None: the tuple cannot be replaced)
    index: int


@dataclasses.dataclass
class State:
    """What ``f`` reads: its tensors (with where each is stored) and the check that
    nothing it depends on has changed."""

    tensors: list[Any]
    places: list[list[Any]]  # per tensor: Place / InTuple entries
    check: Any  # () -> bool
    owners: dict[int, Any] = dataclasses.field(default_factory=dict)  # id(_buffers) -> module
    # the dicts and lists f's state lives in (object attributes, containers): a trace
    # puts them back as they were (NOTE [trace leaves no trace])
    containers: list[Any] = dataclasses.field(default_factory=list)
    # every place f's state was read from, with its value then (closure cells, globals,
    # attributes of slotted objects and classes too): put back the same way
    slots: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)

    def buffer_of(self, i: int) -> str | None:
        """``'running_mean' of BatchNorm1d`` when tensor ``i`` is a module buffer."""
        for place in self.places[i]:
            owner = self.owners.get(id(getattr(place, "holder", None)))
            if owner is not None:
                return f"'{place.key}' of {type(owner).__name__}"
        return None

    def preserved(self) -> "_Kept":
        """A context manager that puts f's state back as it was afterwards (NOTE
        [trace leaves no trace])."""
        return _Kept(self)


class _Kept:
    """NOTE [trace leaves no trace]: while f is traced (its tensors stood in for by a
    thread-local mode, NOTE [stand-ins] in ``torch_engine/_capture.py``), or runs
    under torch.func transforms, what it stores in its own state is a tracing value
    (a lazily computed attribute, e.g. torch.distributions' ``lazy_property``, caches
    a FakeTensor or a functorch-wrapped tensor in the user's object, breaking every
    later use of it). The dicts, lists and deques of f's state are copied on entry;
    on exit every entry that now holds a tracing value is put back (an added key
    removed, a replaced value restored), and so is every tensor f reads that it
    rebound. What f stores that is real stays, as f would leave it (a counter it
    advances, a parameter it creates on first use).

    ``mutated`` says f changed the state it reads beyond adding new attributes or
    keys (it replaced a value, changed a list or rebound a tensor it reads): a
    graph traced once cannot stand for such an f."""

    def __init__(self, state: State):
        self.state = state
        self.copies: list[tuple[Any, Any]] = []
        self.mutated = False

    def __enter__(self):
        self.copies = [(c, dict(c) if isinstance(c, dict) else list(c))
                       for c in self.state.containers]
        return self

    def __exit__(self, *exc):
        for t, places in zip(self.state.tensors, self.state.places):
            for place in places:
                if not isinstance(place, Place):
                    continue  # inside a tuple: f cannot rebind it
                now = place.get() if _present(place) else _MISSING
                if now is not t:
                    self.mutated = True  # f rebound a tensor it reads
                    if now is _MISSING or _tracing_value(now):
                        place.set(t)
        for place, old in self.state.slots:  # cells, slotted and class attributes
            now = place.get() if _present(place) else _MISSING
            if now is old or not _tracing_value(now):
                continue  # unchanged, or changed for real (the state check sees it)
            if old is _MISSING:
                place.delete()
            else:
                place.set(old)
            if old is not None and old is not _MISSING:
                self.mutated = True  # f rebound a value it reads (None: a memo filled)
        for c, copy in self.copies:
            if isinstance(c, dict):
                for k in list(c):
                    old, now = copy.get(k, _MISSING), c[k]
                    if now is old:
                        continue
                    if old is not _MISSING:
                        self.mutated = True  # f replaced a value it reads
                    if _tracing_value(now):
                        if old is _MISSING:
                            del c[k]  # a cache f filled while traced
                        else:
                            c[k] = old
                for k in copy:
                    if k not in c:
                        self.mutated = True
            elif len(c) != len(copy) or any(a is not b for a, b in zip(c, copy)):
                self.mutated = True
                if any(_tracing_value(a) for a in c):
                    c.clear()
                    c.extend(copy)
        self.copies = []
        return False


def _guarded_meta(t) -> tuple:
    """What the "tensor meta" guard compares: requires_grad, shape, dtype, and for a
    strided tensor its strides and storage offset (a graph views a tensor as its
    strides were when traced; f may branch on ``is_contiguous()``). A tensor whose
    layout has no strides is refused by the capture (its stand-in would be dense)."""
    strided = t.layout is _torch().strided
    return (t.requires_grad, t.shape, t.dtype, t.stride() if strided else None,
            t.storage_offset() if strided else None)


def _present(place: Place) -> bool:
    try:
        place.get()
    except (AttributeError, KeyError, IndexError, ValueError):
        return False
    return True


def _check_initialized(module) -> None:
    """A lazy module (``nn.LazyLinear``) creates its parameters on its first call, in
    place: a trace would create them from stand-ins inside the user's module."""
    has = getattr(module, "has_uninitialized_params", None)
    if callable(has) and has():
        from .._errors import StateError

        raise StateError(
            f"derivs: f reads the lazy module {type(module).__name__}, whose parameters "
            "are not created yet (they are made in place on its first call). Call the "
            "model once on an example input before taking derivatives.")


def _tracing_value(v: Any) -> bool:
    """A value made while f was traced or transformed: a fake, functional or
    functorch-wrapped tensor (PyTorch), or a JAX tracer."""
    torch = _torch()
    if torch is not None and isinstance(v, torch.Tensor):
        from torch._subclasses.fake_tensor import is_fake

        return bool(is_fake(v) or torch._C._functorch.is_functorch_wrapped_tensor(v)
                    or torch._is_functional_tensor(v))
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(v, jax.core.Tracer)


# -- the walk --------------------------------------------------------------------------
def preserving(f: Any):
    """A context manager putting back the state ``f`` reads as it was (NOTE [trace
    leaves no trace]) around a trace of f that swaps nothing; for f that cannot be
    guarded too (what a best-effort walk reaches)."""
    w = _Walker(strict=False)
    w.contents(f, None)
    return _Kept(State([], [], None, {}, w.containers, w.slots))


def walk(f: Any) -> State:
    """The state ``f`` reads (NOTE [state guards]). Raises :class:`Unguardable`."""
    w = _Walker()
    w.contents(f, None)
    if _torch() is not None:
        w.checks.append(("default dtype", None, _torch().get_default_dtype()))
    return State(w.tensors, w.tensor_places, _compile(w.checks), w.owners, w.containers,
                 w.slots)


class _Walker:
    def __init__(self, strict: bool = True):
        # strict=False: a best-effort walk that goes past what it cannot guard (for
        # putting state back after a trace, never for a guard)
        self.strict = strict
        self.plain, self.tensor, self.module = _types()
        self.checks: list[tuple[str, Any, Any]] = []  # (kind, place, expected)
        self.seen: set[int] = set()
        self.keep: list[Any] = []  # keeps walked objects alive: ids stay unique
        self.tensors: list[Any] = []
        self.tensor_places: list[list[Any]] = []
        self.tensor_index: dict[int, int] = {}
        self.owners: dict[int, Any] = {}
        self.containers: list[Any] = []
        self.slots: list[tuple[Place, Any]] = []
        self.hooks_walked = False

    def refuse(self, why: str) -> None:
        if self.strict:
            raise Unguardable(why)

    def guard(self, kind: str, place, expected) -> None:
        if len(self.checks) >= MAX_PLACES:
            self.refuse(f"f reaches more than {MAX_PLACES} values to guard")
            return
        self.checks.append((kind, place, expected))

    def value(self, v: Any, place) -> None:
        """``v`` stored at ``place`` (a Place, an InTuple, or None inside an object
        whose identity is already guarded and which cannot change)."""
        if isinstance(place, Place):
            self.slots.append((place, v))  # NOTE [trace leaves no trace]
        if isinstance(v, self.tensor):
            if isinstance(place, Place):
                self.guard("same", place, v)  # its metadata: "tensor meta" below
            i = self.tensor_index.get(id(v))
            if i is None:
                # the tensor object itself, wherever it is held (a tuple, a default):
                # ``W.data = ...`` or ``W.t_()`` changes it in place, and f may branch on
                # its flag or view it by its strides (NOTE [properties of stand-ins])
                try:
                    meta = _guarded_meta(v)
                except Exception as e:  # noqa: BLE001 - nested tensors, odd subclasses
                    self.refuse(f"f reads a tensor whose shape and strides derivs cannot "
                                f"read ({type(v).__name__}: {e}); pass it as an argument")
                else:
                    self.guard("tensor meta", v, meta)
                i = self.tensor_index[id(v)] = len(self.tensors)
                self.tensors.append(v)
                self.tensor_places.append([])
                self.keep.append(v)
            self.tensor_places[i].append(place)
            return
        if isinstance(v, self.plain):
            if isinstance(place, Place):
                self.guard("equal", place, v)
            return
        if isinstance(v, np.ndarray):
            if isinstance(place, Place):
                self.guard("same", place, v)
            self.guard("array", v, v.copy())
            return
        if isinstance(place, Place):
            self.guard("same", place, v)
        self.contents(v, place)

    def contents(self, v: Any, place) -> None:
        """Walks what ``v`` holds, once per object."""
        if isinstance(v, type):  # _class keeps its own record of the classes walked
            self._class(v)
            return
        if id(v) in self.seen:
            return
        self.seen.add(id(v))
        self.keep.append(v)
        if isinstance(v, (types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType)):
            return  # code: fixed; a module's attributes are walked by name (_function)
        if isinstance(v, functools._lru_cache_wrapper):
            # the cache serves results without running the function: guard its size
            # (cache_clear changes it) and walk what the function reads
            self.guard("cache size", v, v.cache_info().currsize)
            self.value(v.__wrapped__, None)
            return
        if self._descriptor(v):
            return
        if isinstance(v, types.FunctionType):
            if not _is_library(v):  # library code: assumed fixed, like modules
                self._function(v)
            return
        if isinstance(v, types.MethodType):
            self.value(v.__self__, None)
            self.value(v.__func__, None)
            return
        if isinstance(v, functools.partial):
            self.value(v.func, None)
            for i, a in enumerate(v.args):
                self.value(a, InTuple(None, i))
            if v.keywords:  # a dict that can change in place
                self.contents(v.keywords, None)
            return
        if isinstance(v, contextvars.ContextVar):
            # its value lives in the calling context: guard what it is now
            self.guard("context", v, v.get(_MISSING))
            return
        if isinstance(v, tuple):
            for i, a in enumerate(v):
                self.value(a, InTuple(place, i))
            return
        if isinstance(v, list):
            self.containers.append(v)
            self.guard("len", v, len(v))
            for i, a in enumerate(v):
                self.value(a, Place("item", v, i))
            return
        if isinstance(v, dict):
            self.containers.append(v)
            self.guard("len", v, len(v))
            for k in list(v):
                self.value(v[k], Place("item", v, k))
            return
        if isinstance(v, (set, frozenset)):
            if any(isinstance(a, self.tensor) for a in v):
                self.refuse("f reads tensors from a set; pass them as arguments")
            if isinstance(v, set):
                self.guard("set", v, frozenset(v))
            return
        if isinstance(v, collections.deque):
            self.containers.append(v)
            self.guard("len", v, len(v))
            for i, a in enumerate(v):
                self.value(a, Place("item", v, i))
            return
        if isinstance(v, (array.array, bytearray)):
            self.guard("copy", v, v[:])
            return
        if isinstance(v, memoryview):
            self.guard("bytes", v, v.tobytes())
            return
        if isinstance(v, weakref.ref):  # also WeakMethod: what it refers to now
            target = v()
            self.guard("deref", v, target)
            if isinstance(target, self.tensor):
                self.refuse("f reads a tensor through a weakref (an RNN's flat weights, "
                            "weakref.ref(tensor)), which derivs cannot swap for tracing; "
                            "hold the tensor itself")
            if target is not None:
                self.value(target, None)
            return
        if isinstance(v, (weakref.ProxyType, weakref.CallableProxyType)):
            self.refuse("f reads through a weakref.proxy, whose target derivs cannot see; "
                        "use weakref.ref or the object itself")
        d = getattr(v, "__dict__", None)
        # A library's object (a torch.distributions.Normal) is walked like a user's:
        # its code is fixed, but its attributes (loc, scale) are f's state. Only its
        # class and slots are skipped (library internals, fixed).
        library = _is_library(type(v)) and not isinstance(v, self.module)
        if isinstance(d, dict):
            self.containers.append(d)
            module = isinstance(v, self.module)
            if module:
                _check_initialized(v)
                self.owners[id(d.get("_buffers"))] = v
                self._global_hooks()
            self.guard("len", d, len(d))
            for k in list(d):
                if module and k in _MODULE_SKIP:
                    continue
                if module and k in _MODULE_DICTS and isinstance(d[k], dict):
                    self.contents(d[k], None)
                else:
                    self.value(d[k], Place("item", d, k))
        if not library:
            if not isinstance(d, dict) and not self._slots(v) and not _library_type(type(v)):
                self.refuse(f"f reads a {type(v).__qualname__} object, whose state derivs "
                            "cannot see (no __dict__ or __slots__)")
        self._class(type(v))

    def _slots(self, v: Any) -> bool:
        """The ``__slots__`` of ``v``'s user classes (``@dataclass(slots=True)``);
        whether any class declared them."""
        found = False
        for klass in type(v).__mro__:
            if klass.__module__.split(".")[0] in _LIBRARY_PREFIXES:
                continue
            slots = klass.__dict__.get("__slots__", ())
            found = found or "__slots__" in klass.__dict__
            for name in (slots,) if isinstance(slots, str) else slots:
                if name in ("__dict__", "__weakref__"):
                    continue
                self.value(getattr(v, name, _MISSING), Place("attr", v, name))
        return found

    def _global_hooks(self) -> None:
        """PyTorch's global module hooks (``register_module_forward_hook``): every
        module call runs them."""
        if self.hooks_walked:
            return
        self.hooks_walked = True
        mod = sys.modules.get("torch.nn.modules.module")
        for name in _GLOBAL_HOOKS:
            hooks = getattr(mod, name, None)
            if isinstance(hooks, dict):
                self.contents(hooks, None)

    def _module(self, mod: types.ModuleType, names: tuple[str, ...]) -> None:
        """The attributes of an imported module that code naming ``names`` may read.
        A user's module is walked like any object; a library's code is fixed, but its
        plain values and mappings are guarded (``os.environ``, a NumPy print option)."""
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict) or id(d) in self.seen:
            return
        user = not _library_module(mod)
        for name in names:
            a = d.get(name, _MISSING)
            if a is _MISSING or isinstance(a, types.ModuleType):
                continue
            if user:
                self.value(a, Place("item", d, name))
            elif isinstance(a, self.plain):
                self.guard("equal", Place("item", d, name), a)
            elif isinstance(a, collections.abc.Mapping) and not isinstance(
                    a, types.MappingProxyType):
                self.guard("same", Place("item", d, name), a)
                self.guard("mapping", a, dict(a))

    def _function(self, fn: types.FunctionType) -> None:
        names = _names(fn.__code__)
        dynamic = _DYNAMIC_LOOKUPS.intersection(names)
        if dynamic:
            self.refuse(f"{fn.__qualname__} looks names up dynamically "
                        f"({', '.join(sorted(dynamic))}), so no guard can see what it reads")
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                continue
            self.value(contents, Place("cell", cell))
            if isinstance(contents, types.ModuleType):
                self._module(contents, names)
        glb = fn.__globals__
        for name in names:
            v = glb.get(name, _MISSING)
            if v is not _MISSING:
                self.value(v, Place("item", glb, name))
                if isinstance(v, types.ModuleType):
                    self._module(v, names)
        if fn.__dict__:  # attributes set on the function (``u.k = 3.0``)
            self.contents(fn.__dict__, None)
        if fn.__defaults__:
            self.value(fn.__defaults__, Place("attr", fn, "__defaults__"))
        if fn.__kwdefaults__:
            self.value(fn.__kwdefaults__, Place("attr", fn, "__kwdefaults__"))

    def _class(self, cls: type) -> None:
        """Methods and class attributes of user classes (not of libraries)."""
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] in _LIBRARY_PREFIXES or id(klass) in self.seen:
                continue
            self.seen.add(id(klass))
            attrs = vars(klass)
            for k, raw in list(attrs.items()):
                if k.startswith("__") and k != "__call__":
                    continue
                if isinstance(raw, (self.tensor, *self.plain)):  # read back by getattr
                    self.value(raw, Place("attr", klass, k))
                    continue
                self.value(raw, Place("item", attrs, k))

    def _descriptor(self, v: Any) -> bool:
        """Walks the functions behind static/class methods and properties."""
        if isinstance(v, (staticmethod, classmethod)):
            self.value(v.__func__, None)
            return True
        if isinstance(v, property):
            for acc in (v.fget, v.fset):
                if acc is not None:
                    self.value(acc, None)
            return True
        return False


def _library_module(mod: types.ModuleType) -> bool:
    """A library's module: the packages above, the standard library, or anything
    installed (site-packages); a user's module is everything else."""
    top = (getattr(mod, "__name__", "") or "").split(".")[0]
    if top in _LIBRARY_PREFIXES or top in sys.stdlib_module_names:
        return True
    where = getattr(mod, "__file__", None) or ""
    return "site-packages" in where or "dist-packages" in where


def _library_type(cls: type) -> bool:
    """A type of a library's module (:func:`_library_module`): its objects without
    ``__dict__`` are immutable values (a dtype, a compiled pattern, an
    ``operator.attrgetter``) or out of any guard's reach by design (random
    generators: f drawing from one is not a function of its inputs)."""
    name = getattr(cls, "__module__", None) or ""
    return _library_module(sys.modules.get(name) or types.SimpleNamespace(__name__=name))


def _is_library(obj) -> bool:
    """Code or classes of PyTorch, NumPy, the standard library pieces above: their
    code and class attributes are fixed (not walked); their objects' attributes are."""
    return (getattr(obj, "__module__", None) or "").split(".")[0] in _LIBRARY_PREFIXES


@functools.lru_cache(maxsize=1024)
def _names(code: types.CodeType) -> tuple[str, ...]:
    """The names a code object (and the code nested in it) looks up."""
    out = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out.extend(_names(c))
    return tuple(dict.fromkeys(out))


# -- the generated check ---------------------------------------------------------------
def _compile(checks) -> Any:
    """One Python function evaluating every check (chunked ``and`` chains): the
    fastest way CPython offers to run thousands of identity tests."""
    torch = _torch()
    env: dict[str, Any] = {"_MISSING": _MISSING, "_array_equal": np.array_equal,
                           "_copysign": math.copysign,
                           "_default_dtype": torch.get_default_dtype if torch else None}
    terms: list[str] = []

    def const(v) -> str:
        name = f"c{len(env)}"
        env[name] = v
        return name

    for kind, place, expected in checks:
        e = const(expected)
        if kind == "len":
            terms.append(f"not {const(place)}" if expected == 0
                         else f"len({const(place)}) == {e}")
            continue
        if kind == "array":
            terms.append(f"_array_equal({const(place)}, {e})")
            continue
        if kind == "deref":
            terms.append(f"{const(place)}() is {e}")
            continue
        if kind == "bytes":
            terms.append(f"{const(place)}.tobytes() == {e}")
            continue
        if kind in ("set", "copy", "mapping"):
            terms.append(f"{const(place)} == {e}")
            continue
        if kind == "cache size":
            terms.append(f"{const(place)}.cache_info().currsize == {e}")
            continue
        if kind == "context":
            terms.append(f"((v := {const(place)}.get(_MISSING)) is {e} or (type(v) is "
                         f"{const(type(expected))} and v == {e}))")
            continue
        if kind == "tensor meta":  # about 0.9 us per tensor (a Parameter's attributes
            rg, shape, dtype, stride, offset = expected  # cost 130-250 ns each)
            term = (f"(v := {const(place)}).requires_grad is {rg} and v.shape == "
                    f"{const(shape)} and v.dtype is {const(dtype)}")
            if stride is not None:
                term += f" and v.stride() == {const(stride)} and v.storage_offset() == {offset}"
            terms.append(term)
            continue
        if kind == "default dtype":
            terms.append(f"_default_dtype() is {e}")
            continue
        h = const(place.holder)
        loc = {"cell": f"{h}.cell_contents",
               "item": f"{h}[{const(place.key)}]" if isinstance(place.holder,
                                                                (list, collections.deque))
               else f"{h}.get({const(place.key)}, _MISSING)",
               "attr": f"getattr({h}, {const(place.key)}, _MISSING)"}[place.kind]
        if kind == "same":
            terms.append(f"{loc} is {e}")
        else:  # equal: the same type and an equal value
            same = f"v == {e}"
            if isinstance(expected, (float, np.floating)):
                # -0.0 == 0.0, but f may tell them apart (atan2, copysign, 1 / x); a
                # NaN equals nothing, itself included
                same = ("v != v" if expected != expected else
                        f"v == {e} and _copysign(1.0, v) == {math.copysign(1.0, expected)}")
            elif isinstance(expected, (complex, np.complexfloating)):
                same = f"repr(v) == {const(repr(expected))}"
            terms.append(f"(v := {loc}) is {e} or (type(v) is {const(type(expected))} "
                         f"and ({same}))")
    lines = ["def check():"]
    for i in range(0, len(terms), 64):
        chunk = " and ".join(f"({t})" for t in terms[i:i + 64])
        lines.append(f"    if not ({chunk}): return False")
    lines.append("    return True")
    exec(compile("\n".join(lines), "<derivs guard>", "exec"), env)
    return env["check"]
