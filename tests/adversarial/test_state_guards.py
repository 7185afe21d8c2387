"""Attacks on derivs' caches: change what f reads between two calls, through every
kind of place a user stores state (NOTE [state guards], NOTE [unguardable]), and
check the second call against the closed-form derivative of the new state. A
stale graph, pattern or compiled program would return the first state's value.

PyTorch caches captured graphs (``partial``, ``laplacian``); JAX caches sparse
patterns and compiled sparse programs. f is ``s * x**3`` (per coordinate) for a
scale ``s`` read from the place under attack: ``d^2 f / dx_0^2 = 6 s x_0``."""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
import importlib
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

X = np.array([0.5, -1.25, 2.0])


class _Slots:
    __slots__ = ("scale",)

    def __init__(self, scale):
        self.scale = scale


@dataclasses.dataclass(slots=True)
class _SlotsData:
    scale: float


def _places(tmp_path):
    """``name -> (read() -> scale, write(scale))`` for each kind of place."""
    slots, data = _Slots(2.0), _SlotsData(2.0)
    queue, arr = collections.deque([2.0]), array.array("d", [2.0])
    module_file = tmp_path / "derivs_user_config.py"
    module_file.write_text("scale = 2.0\n")
    sys.path.insert(0, str(tmp_path))
    cfg = importlib.import_module("derivs_user_config")
    sys.path.remove(str(tmp_path))
    os.environ["DERIVS_TEST_SCALE"] = "2.0"
    config = {"k": 2.0}

    @functools.lru_cache(maxsize=None)
    def cached():
        return config["k"]

    def write_cached(v):
        config["k"] = v
        cached.cache_clear()

    globals()["_DYNAMIC_SCALE"] = 2.0
    return {
        "slots": (lambda: slots.scale, lambda v: setattr(slots, "scale", v)),
        "dataclass_slots": (lambda: data.scale, lambda v: setattr(data, "scale", v)),
        "deque": (lambda: queue[0], lambda v: queue.__setitem__(0, v)),
        "array": (lambda: arr[0], lambda v: arr.__setitem__(0, v)),
        "user_module": (lambda: cfg.scale, lambda v: setattr(cfg, "scale", v)),
        "environ": (lambda: float(os.environ["DERIVS_TEST_SCALE"]),
                    lambda v: os.environ.__setitem__("DERIVS_TEST_SCALE", str(v))),
        "lru_cache": (cached, write_cached),
        "globals_lookup": (lambda: globals()["_DYNAMIC_SCALE"],
                           lambda v: globals().__setitem__("_DYNAMIC_SCALE", v)),
    }


PLACES = ["slots", "dataclass_slots", "deque", "array", "user_module", "environ",
          "lru_cache", "globals_lookup"]


@pytest.mark.parametrize("place", PLACES)
def test_torch_graph_follows_the_state(place, tmp_path):
    read, write = _places(tmp_path)[place]
    f = lambda x: read() * x ** 3  # noqa: E731
    d2 = derivs.partial(f, (0, 0))
    lap = derivs.laplacian(lambda x: f(x).sum())
    x = torch.as_tensor(X)
    for scale in (2.0, 3.0, 5.0):
        write(scale)
        want = 6 * scale * x
        torch.testing.assert_close(d2(x), torch.stack([want[0], 0 * x[1], 0 * x[2]]))
        torch.testing.assert_close(lap(x), want.sum())


@pytest.mark.parametrize("place", PLACES)
def test_jax_sparse_follows_the_state(place, tmp_path):
    read, write = _places(tmp_path)[place]
    f = lambda v: read() * v ** 3  # noqa: E731
    jac = derivs.jacobian(f, sparse=True)
    hess = derivs.hessian(lambda v: jnp.sum(f(v)), sparse=True)
    x = jnp.asarray(X)
    for scale in (2.0, 3.0, 5.0):
        write(scale)
        np.testing.assert_allclose(jac(x).todense(), np.diag(3 * scale * X ** 2))
        np.testing.assert_allclose(hess(x).todense(), np.diag(6 * scale * X))


def test_torch_global_forward_hook():
    """A hook registered on every module after the first call changes f."""
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    f = lambda x: model(x).squeeze(-1) ** 3  # noqa: E731
    x = torch.as_tensor(X)
    lap = derivs.laplacian(f)
    before = lap(x)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: out * 2.0)
    try:
        want = torch.func.hessian(f)(x).trace()
        got = lap(x)
    finally:
        handle.remove()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(want, 8 * before)  # the hook really changed f
    torch.testing.assert_close(lap(x), before)  # and its removal is seen too


def test_torch_sparse_follows_tensor_state():
    """Sparse PyTorch results after ``.data`` rebinding of a closed-over tensor and a
    module weight, an in-place change and a rebinding inside a library object
    (torch.distributions), and a NumPy non-differentiated argument's value."""
    x = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    W = torch.tensor(2.0, dtype=torch.float64)
    f = lambda v: W * v ** 2  # noqa: E731
    J = derivs.jacobian(f, sparse=True, format="dense")
    torch.testing.assert_close(J(x).diagonal(), 4 * x)
    W.data = torch.tensor(3.0, dtype=torch.float64)
    torch.testing.assert_close(J(x).diagonal(), 6 * x)

    lin = torch.nn.Linear(6, 6).double()
    g = lambda v: torch.tanh(lin(v))  # noqa: E731
    Jg = derivs.jacobian(g, sparse=True, format="dense")
    Jg(x)
    with torch.no_grad():
        lin.weight.data = torch.randn(6, 6, dtype=torch.float64)
    torch.testing.assert_close(Jg(x).detach(), torch.func.jacfwd(g)(x).detach())

    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                        torch.tensor(1.0, dtype=torch.float64))
    h = lambda v: normal.log_prob(v)  # noqa: E731
    Jh = derivs.jacobian(h, sparse=True, format="dense")
    Jh(x)
    normal.scale.fill_(2.0)
    torch.testing.assert_close(Jh(x), torch.func.jacfwd(h)(x))
    normal.loc = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(Jh(x), torch.func.jacfwd(h)(x))

    k = lambda v, c: v ** 2 * torch.as_tensor(c)  # noqa: E731
    Jk = derivs.jacobian(k, sparse=True, format="dense")
    torch.testing.assert_close(Jk(x, np.array(2.0)).diagonal(), 4 * x)
    torch.testing.assert_close(Jk(x, np.array(5.0)).diagonal(), 10 * x)


@pytest.mark.parametrize("api", ["laplacian", "sparse_jacobian"])
def test_torch_library_object_state(api):
    """Tensors inside a library's object (a torch.distributions.Normal without
    argument validation, so the whole call captures): an in-place change and a
    rebinding of its attributes are seen. The sparse evaluator once froze them into
    its graph (the walk skipped library objects)."""
    x = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                        torch.tensor(1.0, dtype=torch.float64),
                                        validate_args=False)
    h = lambda v: normal.log_prob(v)  # noqa: E731
    if api == "laplacian":
        op = derivs.laplacian(lambda v: h(v).sum())
        want = lambda: torch.func.hessian(lambda v: h(v).sum())(x).trace()  # noqa: E731
    else:
        op = derivs.jacobian(h, sparse=True, format="dense")
        want = lambda: torch.func.jacfwd(h)(x)  # noqa: E731
    torch.testing.assert_close(op(x), want())
    normal.scale.fill_(2.0)
    torch.testing.assert_close(op(x), want())
    normal.scale = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(op(x), want())
    # and the oracle itself moved: d2/dv2 log N(v; 0, 0.5) = -1 / 0.25 per coordinate
    if api == "laplacian":
        torch.testing.assert_close(op(x), torch.tensor(-6 / 0.25, dtype=torch.float64))
    else:
        torch.testing.assert_close(op(x).diagonal(), -x / 0.25)


@pytest.mark.parametrize("api", ["sparse_hessian", "sparse_jacobian", "laplacian",
                                 "hessian_diagonal"])
def test_lazy_attributes_keep_real_tensors(api):
    """torch.distributions computes ``precision_matrix`` lazily and stores it on the
    object: a trace (fake tensors) or a torch.func transform (wrapped tensors) of f
    stored its tracing values in the user's object, and every later use of it
    failed or returned a FakeTensor (NOTE [trace leaves no trace])."""
    C = torch.eye(4, dtype=torch.float64) * 2 + 0.1
    x = torch.linspace(0.1, 0.9, 4, dtype=torch.float64)
    P = torch.linalg.inv(C)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64),
                                                 covariance_matrix=C, validate_args=False)
    g = lambda v: -0.5 * (v * (mvn.precision_matrix @ v)).sum()  # noqa: E731
    op, want = {
        "sparse_hessian": (derivs.hessian(g, sparse=True, format="dense"), -P),
        "sparse_jacobian": (derivs.jacobian(lambda v: -(mvn.precision_matrix @ v),
                                            sparse=True, format="dense"), -P),
        "laplacian": (derivs.laplacian(g), -P.trace()),
        "hessian_diagonal": (derivs.hessian_diagonal(g), -P.diagonal())}[api]
    for _ in range(2):
        got = op(x)
        assert type(got) is torch.Tensor
        torch.testing.assert_close(got, want)
    stored = mvn.__dict__.get("precision_matrix")
    assert stored is None or type(stored) is torch.Tensor
    torch.testing.assert_close(torch.func.hessian(g)(x), -P)  # the object still works


def test_f_that_changes_its_state_is_not_frozen():
    """f increments a counter it reads: a trace puts f's state back afterwards (NOTE
    [trace leaves no trace]), which must not hide the change and let one graph
    stand for every call (each call's result grows with the counter)."""
    st = types.SimpleNamespace(n=0)

    def f(v):
        st.n += 1
        return (v ** 2).sum() * st.n

    L = derivs.laplacian(f)
    x = torch.ones(3, dtype=torch.float64)
    got = [float(L(x)) for _ in range(3)]
    assert got[0] < got[1] < got[2], got
    assert "changes the state it reads" in str(derivs.explain(L, x))


def test_traces_leave_the_users_state_usable():
    """What f does to its own state while derivs traces or transforms it (NOTE
    [trace leaves no trace]): tracing values never stay in a deque f appends to,
    real changes do (a counter advances on the eager sparse path), containers keep
    their own objects (a dict subclass with a deep ``copy``), and an uninitialized
    lazy module is a clear error that leaves the module usable."""
    import collections
    import copy

    x = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    log = collections.deque()

    def h(v):
        log.append(v.sum())
        return (v ** 2).sum()

    torch.testing.assert_close(derivs.laplacian(h)(x), torch.tensor(8.0, dtype=torch.float64))
    assert all(type(t) is torch.Tensor for t in log), [type(t) for t in log]

    st = types.SimpleNamespace(n=0)

    def g(v):
        st.n += 1
        return (v ** 3).sum()

    H = derivs.hessian(g, sparse=True, format="dense")
    torch.testing.assert_close(H(x), torch.diag(6 * x))
    before = st.n
    H(x)
    assert st.n > before  # f's own side effect is f's

    class Config(dict):
        def copy(self):
            return Config(copy.deepcopy(dict(self)))

    net = torch.nn.Linear(4, 4).double()
    cfg = Config(net=net)
    f = lambda v: torch.tanh(cfg["net"](v)).sum()  # noqa: E731
    derivs.hessian(f, sparse=True, format="dense")(x)
    assert cfg["net"] is net

    lazy = torch.nn.LazyLinear(3).double()
    with pytest.raises(derivs.StateError, match="Call the model once"):
        derivs.hessian(lambda v: torch.tanh(lazy(v)).sum(), sparse=True, format="dense")(x)
    assert lazy(x).shape == (3,)  # still usable, and now initialized
    torch.testing.assert_close(derivs.laplacian(lambda v: torch.tanh(lazy(v)).sum())(x),
                               torch.func.hessian(lambda v: torch.tanh(lazy(v)).sum())(x).trace())


def test_named_tuple_of_tensors_is_captured_and_followed():
    """A NamedTuple holding a tensor stays a NamedTuple while its tensor is swapped
    for tracing (it was rebuilt as a plain tuple, and f fell back to the general
    path); a rebinding of the global is followed."""
    import typing

    class Params(typing.NamedTuple):
        W: torch.Tensor
        s: float

    box = {"p": Params(torch.eye(3, dtype=torch.float64) * 2, 3.0)}
    f = lambda v: ((box["p"].W @ v) ** 3).sum() * box["p"].s  # noqa: E731
    x = torch.linspace(0.1, 0.5, 3, dtype=torch.float64)
    L = derivs.laplacian(f)
    torch.testing.assert_close(L(x), torch.func.hessian(f)(x).trace())
    assert "not used" not in str(derivs.explain(L, x))
    box["p"] = Params(torch.eye(3, dtype=torch.float64), 1.0)
    torch.testing.assert_close(L(x), torch.func.hessian(f)(x).trace())


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_state_read_through_a_weakref(framework):
    """f reads its matrix through ``weakref.ref``: the walk follows the referent
    (the JAX sparse pattern once kept the first matrix's zeros as structural)."""
    import weakref

    class Box:
        pass

    xp = torch if framework == "torch" else jnp
    box = Box()
    box.W = xp.eye(4, dtype=xp.float64) if framework == "torch" else jnp.eye(4)
    ref = weakref.ref(box)
    f = lambda v: ref().W @ v  # noqa: E731
    x = torch.ones(4, dtype=torch.float64) if framework == "torch" else jnp.ones(4)
    J = derivs.jacobian(f, sparse=True, format="dense")
    np.testing.assert_allclose(np.asarray(J(x)), np.eye(4))
    new = np.eye(4) + np.diag([5.0, 6.0, 7.0], 1)
    box.W = torch.as_tensor(new) if framework == "torch" else jnp.asarray(new)
    np.testing.assert_allclose(np.asarray(J(x)), new)


M_UNSEEN = np.eye(4)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_sparse_pattern_of_state_no_guard_sees(framework):
    """f reads a matrix through ``globals()``, which no guard can follow: the
    pattern must not take that matrix's zeros as structural (a later entry was once
    missed, and its value added to another entry)."""
    global M_UNSEEN
    xp = torch if framework == "torch" else jnp
    M_UNSEEN = np.eye(4)

    def f(v):
        m = globals()["M_UNSEEN"]
        return xp.asarray(m, dtype=v.dtype) @ v if framework == "jax" else \
            torch.as_tensor(m, dtype=v.dtype) @ v

    x = xp.ones(4, dtype=xp.float64) if framework == "torch" else jnp.ones(4)
    J = derivs.jacobian(f, sparse=True, format="dense")
    np.testing.assert_allclose(np.asarray(J(x)), np.eye(4))
    M_UNSEEN = np.eye(4) + np.diag([5.0, 6.0, 7.0], 1)
    np.testing.assert_allclose(np.asarray(J(x)), M_UNSEEN)


def test_function_attributes_partial_keywords_and_context_variables():
    import contextvars

    x = torch.as_tensor(X)

    def u(z):
        return torch.sin(u.k * z).sum()
    u.k = 1.0
    lap = derivs.laplacian(u)
    lap(x)
    u.k = 3.0
    torch.testing.assert_close(lap(x), torch.func.hessian(u)(x).trace())

    def g(z, *, k):
        return torch.sin(k["a"] * z).sum()
    kw = {"a": 1.0}
    pg = functools.partial(g, k=kw)
    lg = derivs.laplacian(pg)
    lg(x)
    kw["a"] = 2.0
    torch.testing.assert_close(lg(x), torch.func.hessian(pg)(x).trace())

    cv = contextvars.ContextVar("derivs_scale", default=1.0)
    h = lambda z: torch.sin(cv.get() * z).sum()  # noqa: E731
    lh = derivs.laplacian(h)
    lh(x)
    token = cv.set(3.0)
    try:
        torch.testing.assert_close(lh(x), torch.func.hessian(h)(x).trace())
    finally:
        cv.reset(token)

    def r(v):
        return v[r.idx] ** 2
    r.idx = jnp.array([0, 1])
    J = derivs.jacobian(r, sparse=True)
    xj = jnp.asarray(X)
    J(xj)
    r.idx = jnp.array([2, 0])
    np.testing.assert_allclose(J(xj).todense(), jax.jacfwd(r)(xj))


def test_f_that_rebinds_a_computed_tensor_in_its_closure():
    """f rebinds a closure variable to a tensor it computes on every evaluation.
    The capture sees it and refuses (a graph cannot advance the state); the
    general path's nested transforms then meet a tensor left by an earlier
    evaluation, and PyTorch's internal assertion becomes a derivs error."""
    s = torch.tensor(1.0, dtype=torch.float64)

    def f(z):
        nonlocal s
        s = s + 1
        return (s * z**3).sum(-1)

    with pytest.raises(derivs.StateError, match="keeps a tensor it computed in its own state"):
        derivs.laplacian(f, batch_axis=0)(torch.tensor([[0.5, -1.0]], dtype=torch.float64))


def test_state_tensor_as_a_slice_bound():
    """NOTE [stand-ins]: ``x[:, :n]`` reads ``n`` through ``__index__`` inside a
    slice; the stand-in must reach it there, or the bound is baked into the graph
    and an in-place change of ``n`` is ignored."""
    torch.manual_seed(0)
    W = torch.randn(4, 6, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    n = torch.tensor(5)

    def f(z):
        return torch.tanh(z @ W)[:, :n] @ v[:n]

    x = torch.randn(3, 4, dtype=torch.float64)
    lap = derivs.laplacian(f, batch_axis=0)
    for bound in (5, 3, 6):
        n.fill_(bound)
        H = torch.vmap(torch.func.hessian(lambda z: f(z[None])[0]))(x)
        torch.testing.assert_close(lap(x), H.diagonal(dim1=-2, dim2=-1).sum(-1))


class _Scaled:
    s = 1.0


def test_class_attribute_read_through_the_class():
    """A class attribute read as ``Klass.s`` (not through an instance): the guard
    must see it (the walk skipped classes reached directly, and a stale graph
    answered with the old value)."""
    _Scaled.s = 1.0

    def f(z):
        return (_Scaled.s * z**3).sum(-1)

    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    lap = derivs.laplacian(f, batch_axis=0)
    torch.testing.assert_close(lap(x), (6 * x).sum(-1))
    _Scaled.s = 3.0
    torch.testing.assert_close(lap(x), (18 * x).sum(-1))


class _Memo:
    cache = None


_MEMO = None


@pytest.mark.parametrize("where", ["cell", "global", "class"])
def test_memo_filled_while_traced_is_put_back(where):
    """f memoizes a tensor derived from a weight on first use. A trace must not
    leave its stand-in there (every later eager call of f returned a fake tensor)."""
    global _MEMO
    torch.manual_seed(0)
    W = torch.randn(3, 5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    _MEMO, _Memo.cache = None, None
    memo = None

    def basis():
        nonlocal memo
        global _MEMO
        if where == "cell":
            if memo is None:
                memo = torch.exp(W * 0.1)
            return memo
        if where == "global":
            if _MEMO is None:
                _MEMO = torch.exp(W * 0.1)
            return _MEMO
        if _Memo.cache is None:
            _Memo.cache = torch.exp(W * 0.1)
        return _Memo.cache

    def f(z):
        return torch.tanh(z @ basis()) @ v

    x = torch.randn(4, 3, dtype=torch.float64)
    H = torch.vmap(torch.func.hessian(lambda z: torch.tanh(z @ torch.exp(W * 0.1)) @ v))(x)
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1).sum(-1))
    left = {"cell": lambda: memo, "global": lambda: _MEMO, "class": lambda: _Memo.cache}[where]()
    assert left is None or type(left) is torch.Tensor and not left.is_meta
    torch.testing.assert_close(f(x), torch.tanh(x @ torch.exp(W * 0.1)) @ v)


def test_non_contiguous_state_tensor():
    """A transposed weight f reshapes: its stand-in has the weight's strides, so the
    graph takes the copy that eager PyTorch takes (a contiguous stand-in gave a view,
    and the call failed with a raw 'view size is not compatible')."""
    torch.manual_seed(0)
    A = torch.randn(8, 4, dtype=torch.float64)
    Wt = A.t()
    v = torch.randn(8, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ Wt.reshape(-1).reshape(4, 8)) @ v

    x = torch.randn(3, 4, dtype=torch.float64)
    H = torch.vmap(torch.func.hessian(lambda z: f(z[None])[0]))(x)
    torch.testing.assert_close(derivs.laplacian(f, batch_axis=0)(x),
                               H.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_values_read_into_numpy_are_never_made_up():
    """``.numpy()`` of a tensor f reads or of its argument, while traced, would read
    memory a fake tensor does not have (zeros, garbage, once a crash): a clear error
    or the right value, never a made-up one."""
    torch.manual_seed(0)
    W = torch.randn(3, 5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    s = torch.tensor(2.0, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ W * torch.from_numpy(s.numpy())) @ v

    x = torch.randn(4, 3, dtype=torch.float64)
    want = torch.vmap(torch.func.hessian(lambda z: torch.tanh(z @ W * 2.0) @ v))(x)
    want = want.diagonal(dim1=-2, dim2=-1).sum(-1)
    try:
        got = derivs.laplacian(f, batch_axis=0)(x)
    except (RuntimeError, ValueError, NotImplementedError):
        return  # refused: acceptable
    torch.testing.assert_close(got, want)


def _laplacian_by_hessian(f, x):
    return torch.func.hessian(f)(x).diagonal().sum()


@pytest.mark.parametrize("api", ["laplacian", "partial"])
def test_autograd_attributes_of_state_tensors(api):
    """f branching on a parameter's ``requires_grad``, or reading its ``.grad``,
    ``.is_leaf`` or ``._version``: a stand-in has none of the real tensor's autograd
    state (its ``requires_grad`` was False and ``.grad`` None, so f took the wrong
    branch, silently, and the cached graph never noticed the change; NOTE
    [properties of stand-ins]). Each call is checked against the Hessian of f as
    it then stands."""
    W = torch.nn.Parameter(torch.tensor([2.0, 3.0], dtype=torch.float64))

    def flag(x):
        return (W * x**2).sum() if W.requires_grad else (x**3).sum()

    def grad(x):
        return (x**2).sum() if W.grad is None else (W.grad * x**2).sum()

    def leaf(x):
        return (W * x**2).sum() if W.is_leaf else (x**3).sum()

    def version(x):
        return (x**2).sum() * (1.0 + W._version)

    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    make = {"laplacian": derivs.laplacian,
            "partial": lambda f: derivs.partial(f, (0, 0))}[api]
    want = {"laplacian": _laplacian_by_hessian,
            "partial": lambda f, z: torch.func.hessian(f)(z)[0, 0]}[api]

    def check(fn, changes):
        op = make(fn)
        for change in changes:
            change()
            with torch.no_grad():
                got = op(x)
                expected = want(fn, x.clone())
            torch.testing.assert_close(got.detach(), expected)

    check(flag, [lambda: None, lambda: W.requires_grad_(False),
                 lambda: W.requires_grad_(True)])
    check(grad, [lambda: None,
                 lambda: setattr(W, "grad", torch.tensor([5.0, 7.0], dtype=torch.float64)),
                 lambda: setattr(W, "grad", None)])
    check(leaf, [lambda: None])
    with torch.no_grad():
        check(version, [lambda: None, lambda: W.mul_(1.0)])


def test_a_module_that_checks_its_parameters_requires_grad():
    """A module reading ``p.requires_grad`` of its own parameters (as
    ``nn.TransformerEncoderLayer``'s fast-path test does) keeps the captured,
    cached route: the flag is the real one and the guard follows it."""
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1).double()

        def forward(self, z):
            frozen = not any(p.requires_grad for p in self.parameters())
            return torch.tanh(self.lin(z)).sum(-1) * (2.0 if frozen else 1.0)

    m = Gate()
    x = torch.randn(4, 3, dtype=torch.float64)
    lap = derivs.laplacian(m, batch_axis=0)

    def want():
        H = torch.vmap(torch.func.hessian(lambda z: m(z[None])[0]))(x)
        return H.diagonal(dim1=-2, dim2=-1).sum(-1)

    for frozen in (False, True, False):
        m.requires_grad_(not frozen)
        with torch.no_grad():
            torch.testing.assert_close(lap(x), want())
    assert "not used" not in str(lap.explain(x))


@pytest.mark.parametrize("api", ["laplacian", "partial"])
def test_grad_mode_f_branches_on(api):
    """f branching on ``torch.is_grad_enabled()``: a graph traced under
    ``torch.no_grad()`` was reused with grad enabled (and the reverse), returning the
    other branch's derivative. Grad mode is part of the cache key; each call equals
    a fresh transform's in the same mode, which evaluates f as eager code would."""
    def f(x):
        return (x**2).sum() if torch.is_grad_enabled() else (x**3).sum()

    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    make = {"laplacian": derivs.laplacian,
            "partial": lambda g: derivs.partial(g, (0, 0))}[api]
    truth = {("laplacian", True): 4.0, ("laplacian", False): 18.0,
             ("partial", True): 2.0, ("partial", False): 6.0}
    op = make(f)
    for enabled in (False, True, False, True):
        with torch.set_grad_enabled(enabled):
            assert float(op(x)) == truth[api, enabled]


def test_modes_a_trace_depends_on():
    """Inference mode and deterministic algorithms (f may branch on them) and
    autocast (its casts are recorded in the graph) are part of the cache key: a graph
    traced under one was reused under another (autocast: bfloat16 rounding, -278528
    against -179514.7, on later calls with autocast off)."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def inference(z):
        return (z**2).sum() if torch.is_inference_mode_enabled() else (z**3).sum()

    lap = derivs.laplacian(inference)
    with torch.inference_mode():
        assert float(lap(x)) == 4.0
    with torch.no_grad():
        assert float(lap(x)) == 18.0

    def deterministic(z):
        return (z**2).sum() if torch.are_deterministic_algorithms_enabled() else (z**3).sum()

    lap = derivs.laplacian(deterministic)
    assert float(lap(x)) == 18.0
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert float(lap(x)) == 4.0
    finally:
        torch.use_deterministic_algorithms(before)

    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[373.0, -517.0]])
        lin.bias[:] = 0.123
    xs = torch.tensor([0.3, -0.7])

    def f(z):
        return torch.sin(lin(z)).sum()

    a, b = 373.0, -517.0
    truth = -(a * a + b * b) * np.sin(a * 0.3 + b * -0.7 + np.float64(np.float32(0.123)))
    lap = derivs.laplacian(f)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lap(xs)
        np.testing.assert_allclose(float(lap(xs)), truth, rtol=1e-3)


def test_tensor_metadata_wherever_it_is_held():
    """A tensor held in a tuple or a default argument, whose ``.data`` is replaced
    (new shape), or transposed in place (new strides: f branching on
    ``is_contiguous()``, a reshape the graph recorded as a view): each is checked by
    the guard (the cached graph returned the old state's derivative, or a raw view
    error)."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    W = torch.tensor([2.0, 4.0], dtype=torch.float64)
    held = (W,)

    def in_tuple(z):
        return (held[0].sum() / held[0].shape[0] * z**2).sum()

    def default(z, W=W):
        return (W.sum() / W.shape[0] * z**2).sum()

    ops = [derivs.laplacian(in_tuple), derivs.laplacian(default)]
    assert [float(op(x)) for op in ops] == [12.0, 12.0]
    W.data = torch.tensor([2.0, 4.0, 9.0], dtype=torch.float64)
    assert [float(op(x)) for op in ops] == [20.0, 20.0]

    S = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)

    def contiguous(z):
        return (S[0] * z**2).sum() if S.is_contiguous() else (S[1] * z**2).sum()

    lap = derivs.laplacian(contiguous)
    assert float(lap(x)) == 6.0
    S.data = S.data.t()  # S[1] is now [2, 4]: 2 * (2 + 4)
    assert float(lap(x)) == 12.0

    B = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)

    def flat(z):  # the graph views B by its strides when traced
        return (B.reshape(-1)[:2] * z**2).sum()

    lap = derivs.laplacian(flat)
    assert float(lap(x)) == 6.0
    B.t_()  # B.reshape(-1)[:2] is now [1, 3]
    assert float(lap(x)) == 8.0


def test_data_is_detached_in_the_graph():
    """``W.data`` inside f is a constant to autograd, as in eager PyTorch: the
    stand-in's ``.data`` was a live view, and the gradient of a loss through the
    Laplacian came out twice the truth."""
    torch.manual_seed(0)
    W = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, dtype=torch.float64)

    def f(z):
        return (W.data * W * z**2).sum()

    derivs.laplacian(f)(x).backward()
    got, W.grad = W.grad.clone(), None
    want = torch.autograd.grad(
        torch.autograd.functional.hessian(f, x, create_graph=True).diagonal().sum(), W)[0]
    torch.testing.assert_close(got, want)


def test_what_a_stand_in_cannot_answer():
    """``is_inference()``, ``_is_view()`` of a tensor f reads, and a sparse tensor f
    reads: a stand-in would answer for itself (dense, not a view, not an inference
    tensor), so the trace refuses them and f runs eagerly."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with torch.inference_mode():
        Wi = torch.tensor([2.0, 3.0], dtype=torch.float64)
    base = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    view = base[:2]
    sparse = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64).to_sparse()
    cases = [lambda z: (z**2).sum() if Wi.is_inference() else (z**3).sum(),
             lambda z: (z**2).sum() if torch.is_inference(Wi) else (z**3).sum(),
             lambda z: (z**2).sum() if view._is_view() else (z**3).sum(),
             lambda z: (z**2).sum() if sparse.is_sparse else (z**3).sum()]
    for f in cases:
        assert float(derivs.laplacian(f)(x)) == 4.0
        assert float(derivs.partial(f, (0, 0))(x)) == 2.0


SIGN = 0.0


def test_signed_zero_and_nan_in_state_and_arguments():
    """-0.0 == 0.0 in Python (and hashes alike), but f may tell them apart: a cache
    keyed or guarded on ``==`` would serve the other zero's graph. f scales by
    ``atan2(s, -1)``: pi for s = +0.0, -pi for s = -0.0; ``d^2/dx^2 (x^2) = 2``."""
    import math

    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)

    def by_argument(z, s):
        return (z ** 2).sum(-1) * math.atan2(s, -1.0)

    lap = derivs.laplacian(by_argument, batch_axis=0)
    for s in (0.0, -0.0, 0.0, -0.0):
        np.testing.assert_allclose(lap(x, s).numpy(), [4 * math.atan2(s, -1.0)])

    def by_global(z):
        return (z ** 2).sum(-1) * math.atan2(SIGN, -1.0)

    lap = derivs.laplacian(by_global, batch_axis=0)
    global SIGN
    try:
        for s in (0.0, -0.0, 0.0, float("nan"), -0.0):
            SIGN = s
            want = 4 * math.atan2(s, -1.0)
            got = lap(x).numpy()
            assert np.isnan(got).all() if math.isnan(want) else np.allclose(got, [want]), (s, got)
    finally:
        SIGN = 0.0
