"""Capture as users write PyTorch: nn.Modules, closures and globals are lifted and
guarded. Every kind of value f can read is changed between two calls, and the
result is compared with an independent oracle (nested torch.func.jacfwd) of f
as it is now: a cached graph must never return a stale value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import derivs
from derivs.backends.torch_engine import _engine

DT = torch.float64
X = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
MI = (0, 1)


def oracle(f, x=X, mi=MI):
    """d^2 f / dx_0 dx_1 per row, by nested forward AD of f as it is now."""
    def one(v):
        d = lambda u: f(u[None])[0]  # noqa: E731
        for _ in mi:
            d = torch.func.jacfwd(d)
        return d(v)[mi]
    return torch.stack([one(v) for v in x])


@pytest.fixture
def builds(monkeypatch):
    """Counts graph builds (each is one capture of f)."""
    count = [0]
    real = _engine.build

    def counting(*a, **k):
        count[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(_engine, "build", counting)
    import derivs.backends.torch_engine as pkg
    monkeypatch.setattr(pkg, "build", counting)
    return count


def traced(d, *args) -> bool:
    return derivs.explain(d, *args).strategy == "traced-jet"


def _mlp(seed=0, act=torch.nn.Tanh):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), act(), torch.nn.Linear(8, 1)).to(DT)


def check_live(d, f, change, *, rebuild: bool, builds=None):
    """``d`` matches the oracle before and after ``change()``, and the value moved."""
    before = d(X)
    torch.testing.assert_close(before, oracle(f))
    n = builds[0] if builds is not None else None
    change()
    after = d(X)
    torch.testing.assert_close(after, oracle(f))
    assert not torch.allclose(before, after), "the change must matter for this test"
    if builds is not None:
        assert (builds[0] > n) == rebuild, (builds[0], n)


# -- lifted tensors: read live, no retrace ------------------------------------------
def test_module_is_traced_and_parameters_are_read_live(builds):
    model = _mlp()
    f = lambda z: model(z).squeeze(-1) ** 3  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert traced(d, X)

    def step():
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
    check_live(d, f, step, rebuild=False, builds=builds)


def test_closed_over_tensor_updated_in_place(builds):
    w = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
    f = lambda z: torch.sin(z @ w) * z[:, 0]  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert traced(d, X)
    check_live(d, f, lambda: w.mul_(3), rebuild=False, builds=builds)


def test_tensors_in_containers_and_globals(builds):
    ws = [torch.tensor([1.0, 2.0, 3.0], dtype=DT)]
    table = {"w": torch.tensor(0.5, dtype=DT)}
    f = lambda z: torch.tanh(z @ ws[0]) * table["w"] * z[:, 1] ** 2  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert traced(d, X)
    check_live(d, f, lambda: table["w"].fill_(2.0), rebuild=False, builds=builds)

    def replace():
        ws[0] = torch.tensor([-1.0, 0.5, 1.0], dtype=DT)
    check_live(d, f, replace, rebuild=True, builds=builds)


G_SCALE = 2.0
G_W = torch.tensor([1.0, -1.0, 0.5], dtype=DT)


def _global_f(z):
    return torch.sin(z @ G_W) * G_SCALE * z[:, 0] ** 2


def test_global_float_and_global_tensor_rebound(builds):
    global G_SCALE, G_W
    d = derivs.partial(_global_f, MI, batch_axis=0)
    assert traced(d, X)
    saved = G_SCALE, G_W
    try:
        def rescale():
            global G_SCALE
            G_SCALE = 5.0
        check_live(d, _global_f, rescale, rebuild=True, builds=builds)

        def rebind():
            global G_W
            G_W = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
        check_live(d, _global_f, rebind, rebuild=True, builds=builds)
    finally:
        G_SCALE, G_W = saved


def _helper_a(z):
    return torch.sin(z)


def _helper_b(z):
    return torch.cos(z)


HELPER = _helper_a


def _calls_helper(z):
    return HELPER(z).prod(-1)


def test_global_function_rebound(builds):
    global HELPER
    d = derivs.partial(_calls_helper, MI, batch_axis=0)
    try:
        def rebind():
            global HELPER
            HELPER = _helper_b
        check_live(d, _calls_helper, rebind, rebuild=True, builds=builds)
    finally:
        HELPER = _helper_a


def test_closure_float_rebound():
    scale = 1.0

    def f(z):
        return torch.sin(z * scale).prod(-1)

    d = derivs.partial(f, MI, batch_axis=0)

    def change():
        nonlocal scale
        scale = 3.0
    check_live(d, f, change, rebuild=True)


def test_item_of_a_closed_over_tensor_runs_live():
    s = torch.tensor(2.0, dtype=DT)
    f = lambda z: torch.sin(z * s.item()).prod(-1)  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert not traced(d, X)  # .item() cannot be lifted: the general path reads it live
    check_live(d, f, lambda: s.fill_(0.5), rebuild=False)


def test_numpy_scalar_and_array_in_closure():
    a = np.array([1.0, 2.0, 3.0])
    c = [np.float64(2.0)]
    f = lambda z: torch.sin(z * torch.as_tensor(a)).prod(-1) * float(c[0])  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)

    def change_array():
        a[1] = -4.0
    check_live(d, f, change_array, rebuild=True)

    def change_scalar():
        c[0] = np.float64(-1.5)
    check_live(d, f, change_scalar, rebuild=True)


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()
        self.scale = 2.0

    def forward(self, z):
        return self.net(z).squeeze(-1) ** 2 * self.scale


def test_module_attribute_swapped_submodule_and_hook(builds):
    model = Scaled()
    f = lambda z: model(z)  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert traced(d, X)

    def attr():
        model.scale = -3.0
    check_live(d, f, attr, rebuild=True, builds=builds)

    def swap():
        model.net[0] = torch.nn.Linear(3, 8).to(DT)
    check_live(d, f, swap, rebuild=True, builds=builds)

    def hook():
        model.net[1].register_forward_hook(lambda m, i, o: o * 2)
    check_live(d, f, hook, rebuild=True, builds=builds)


def test_parameter_rebound_and_module_as_f(builds):
    model = torch.nn.Sequential(_mlp(), torch.nn.Flatten(0))  # the module is f
    d = derivs.partial(model, MI, batch_axis=0)
    assert traced(d, X)

    def rebind():
        model[0][2].weight = torch.nn.Parameter(torch.randn(1, 8, dtype=DT))
    check_live(d, model, rebind, rebuild=True, builds=builds)


def test_train_eval_toggle():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 1)).to(DT)
    model.eval()
    f = lambda z: model(z).squeeze(-1) ** 2  # noqa: E731
    d = derivs.partial(f, MI, batch_axis=0)
    assert traced(d, X)
    torch.testing.assert_close(d(X), oracle(f))
    model.train()  # dropout draws random numbers: the general path, never a cached graph
    assert "random" in str(derivs.explain(d, X))
    model.eval()
    assert traced(d, X)
    torch.testing.assert_close(d(X), oracle(f))


def test_batchnorm_in_train_mode_names_eval():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(DT)
    f = lambda z: model(z).squeeze(-1)  # noqa: E731
    stats = model[1].running_mean.clone()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        derivs.laplacian(f, batch_axis=0)(X)
    assert torch.equal(model[1].running_mean, stats)  # nothing left behind
    model.eval()
    lap = derivs.laplacian(f, batch_axis=0)(X)
    ref = torch.func.vmap(lambda z: torch.trace(torch.func.hessian(lambda u: f(u[None])[0])(z)))(X)
    torch.testing.assert_close(lap, ref)


# -- training through derivatives of a module -----------------------------------------
@pytest.mark.parametrize("unroll", [True, False])
def test_pinn_loss_gradients_equal_torch_func(unroll, monkeypatch):
    from derivs import _operators

    monkeypatch.setattr(_operators, "UNROLL_MAX_DIRECTIONS", 4 if unroll else 0)
    model = _mlp(seed=3)
    f = lambda z: model(z).squeeze(-1)  # noqa: E731
    loss = (derivs.laplacian(f, batch_axis=0)(X) - 1.0).pow(2).mean()
    loss.backward()
    ours = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    params = dict(model.named_parameters())

    def ref_loss(p):
        g = lambda z: torch.func.functional_call(model, p, (z[None],))[0, 0]  # noqa: E731
        lap = torch.func.vmap(lambda z: torch.trace(torch.func.hessian(g)(z)))(X)
        return (lap - 1.0).pow(2).mean()

    ref = torch.func.grad(ref_loss)(params)
    for got, name in zip(ours, params):
        torch.testing.assert_close(got, ref[name], rtol=1e-9, atol=1e-12)


def test_explain_reports_lifted_tensors_and_guard():
    model = _mlp()
    text = str(derivs.explain(derivs.partial(lambda z: model(z), MI, batch_axis=0), X))
    assert "4 tensors f reads lifted to inputs" in text and "state guard" in text


def test_state_is_restored_after_a_failed_capture():
    model = _mlp()
    weight = model[0].weight

    def f(z):
        h = model(z)
        if torch.isfinite(h).all():  # data-dependent: the capture fails
            return h.squeeze(-1)
        return -h.squeeze(-1)

    d = derivs.partial(f, MI, batch_axis=0)
    d(X)
    assert model[0]._parameters["weight"] is weight  # the swap was undone
    torch.testing.assert_close(d(X), oracle(f))


def test_module_input_of_other_library_functions():
    """A module from torch.nn, a closure, F.* functions and a functools.partial."""
    import functools

    model = _mlp(act=torch.nn.SiLU)
    act = functools.partial(F.softplus, beta=2.0)
    f = lambda z: act(model(z)).squeeze(-1)  # noqa: E731
    d = derivs.partial(f, (0, 0, 1), batch_axis=0)
    assert traced(d, X)
    torch.testing.assert_close(d(X), oracle(f, mi=(0, 0, 1)))


# -- sparse patterns share the capture: never stale ------------------------------------
def _sparse_matches_dense(J, f, x):
    got = J(x).to_dense()
    torch.testing.assert_close(got, torch.func.jacrev(f)(x))


def test_sparse_pattern_follows_what_f_reads():
    x = torch.linspace(-1.0, 1.0, 6, dtype=DT)
    c = [0.0]
    w = torch.zeros(6, dtype=DT)
    mask = np.zeros(6)

    def f(v):
        return v * v.roll(1) * c[0] + v.roll(-1) * w + v * torch.as_tensor(mask) + torch.sin(v)

    J = derivs.jacobian(f, sparse=True)
    _sparse_matches_dense(J, f, x)
    before = J.prepare(x).pattern.nnz
    c[0] = 1.0  # a Python value going 0 -> 1 makes new entries structural nonzeros
    _sparse_matches_dense(J, f, x)
    w.fill_(2.0)  # a closed-over tensor changed in place
    _sparse_matches_dense(J, f, x)
    mask[2] = 3.0  # a NumPy array changed in place
    _sparse_matches_dense(J, f, x)
    assert J.prepare(x).pattern.nnz > before


def test_sparse_jacobian_of_a_module():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False).to(DT)
    f = lambda v: torch.tanh(conv(v[None, None]))[0, 0]  # noqa: E731
    x = torch.linspace(-1.0, 1.0, 8, dtype=DT)
    J = derivs.jacobian(f, sparse=True)
    _sparse_matches_dense(J, f, x)
    assert J.prepare(x).pattern.nnz <= 3 * 8  # a banded pattern, not dense
    with torch.no_grad():
        conv.weight.mul_(-2)  # trained: requires grad, values never taken as zeros
    _sparse_matches_dense(J, f, x)


def test_circular_pad_pattern_misses_nothing():
    """The copy_ into slices that circular padding decomposes into is made functional
    before detection (it used to give an empty pattern and an all-zero Jacobian)."""
    v = torch.rand(9, dtype=DT)
    f = lambda v: F.pad(v.reshape(1, 1, 9), (3, 6), mode="circular").reshape(-1)  # noqa: E731
    dense = torch.func.jacrev(f)(v)
    pattern = derivs.sparsity(f, v)
    assert pattern.nnz == int((dense != 0).sum()) == 18
    _sparse_matches_dense(derivs.jacobian(f, sparse=True), f, v)


@pytest.mark.parametrize("name,f", [
    ("cov", lambda v: torch.cov(v.reshape(3, 4)).reshape(-1)),
    ("corrcoef", lambda v: torch.corrcoef(v.reshape(3, 4)).reshape(-1)),
    ("gaussian_nll_loss", lambda v: F.gaussian_nll_loss(v[:6], v[6:], v[6:] + 1.0,
                                                        reduction="none")),
    ("avg_pool2d, empty stride", lambda v: F.avg_pool2d(v.reshape(1, 3, 4), 2, stride=(),
                                                         padding=(0,)).reshape(-1)),
    ("cdist", lambda v: torch.cdist(v.reshape(4, 3), torch.ones(2, 3, dtype=v.dtype)).reshape(-1)),
])
def test_sparse_jacobian_of_hard_ops(name, f):
    """Ops whose detection used to raise: a pattern that contains every nonzero (dense
    with a SparsityWarning where f cannot be traced), and the exact Jacobian."""
    import warnings

    v = torch.rand(12, dtype=DT, generator=torch.Generator().manual_seed(4)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _sparse_matches_dense(derivs.jacobian(f, sparse=True), f, v)


def test_a_failed_detection_leaves_no_state_behind():
    """A detection that fails inside functionalization must not break later calls
    (it used to leave dispatch keys excluded: 'expected device meta' afterwards)."""
    import warnings

    before = str(torch._C._dispatch_tls_local_exclude_set())
    rm, rv = torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)
    aten = torch.ops.aten
    f = lambda v: aten._batch_norm_with_update.default(  # noqa: E731
        v.reshape(4, 2), None, None, rm, rv, 0.1, 1e-5)[0].reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            derivs.jacobian(f, sparse=True)(torch.rand(8, dtype=DT))
        except Exception:  # noqa: BLE001 - whatever it does, it must leave nothing behind
            pass
    assert str(torch._C._dispatch_tls_local_exclude_set()) == before
    g = lambda v: torch.sin(v) * v.roll(1)  # noqa: E731
    x = torch.rand(8, dtype=DT)
    _sparse_matches_dense(derivs.jacobian(g, sparse=True), g, x)
    # forward mode still works in this process (the leaked keys used to break it)
    torch.testing.assert_close(derivs.partial(g, (0, 1), strategy="nested-forward")(x),
                               torch.func.jacfwd(torch.func.jacfwd(g))(x)[:, 0, 1])
