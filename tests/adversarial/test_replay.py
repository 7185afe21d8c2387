"""Attacks on NOTE [replay]: a PyTorch family program traced once per signature and
replayed as straight-line ATen code. A replay that baked in something it should
read live (a weight, a stride, the random directions, a Python attribute of the
module) would return the first call's value; each check compares a replayed call
with an independent oracle (torch.func's nested derivatives at float64, or a
closed form) after the state under attack has changed.

``REPLAY_AFTER`` is 0 here (``conftest.py``): every signature is traced on its first call, so each
call below after the first is a replay (``explain`` says so, checked where it
matters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import derivs
from benchmarks import zoo_models as Z

from ._threads import run_in_threads

D, BATCH = 5, 4


def _x(seed=0, n=BATCH, d=D):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, d)))


def _hessians(model, x):
    return torch.func.vmap(torch.func.hessian(lambda z: model(z[None])[0]))(
        x.detach().contiguous())


def _laplacian_oracle(model, x):
    return _hessians(model, x).diagonal(dim1=-2, dim2=-1).sum(-1)


def _close(got, want, rtol=1e-10):
    got, want = got.detach(), want.detach()
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(1.0, want.abs().max()))


def _replayed(op, *args) -> bool:
    notes = " ".join(derivs.explain(op, *args).notes)
    assert "NOTE [replay]" in notes, notes
    return "replayed so far: 0 of" not in notes


def _mlp(act=nn.Tanh, d=D, width=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), act(), nn.Linear(width, width), act(),
                         nn.Linear(width, 1), nn.Flatten(0)).double()


# Members whose PyTorch nested derivatives cannot serve as the oracle are built in
# elementary ops for it (zoo_models: SiLU, Mish, CELU); attention takes its math form.
_MEMBERS = [m for m in Z.MEMBERS if m != "transformer"]


@pytest.mark.parametrize("name", _MEMBERS)
@pytest.mark.parametrize("grad", [False, True])
def test_every_zoo_member_replayed(name, grad):
    model = Z.torch_member(name, D, 8, dtype=torch.float64)
    oracle = Z.torch_member(name, D, 8, dtype=torch.float64, elementary=True)
    lap = derivs.laplacian(model, batch_axis=0)
    diag = derivs.hessian_diagonal(model, batch_axis=0)
    x = _x()
    H = _hessians(oracle, x)
    with torch.set_grad_enabled(grad):
        for _ in range(2):  # traced on the first call, replayed on the second
            _close(lap(x), H.diagonal(dim1=-2, dim2=-1).sum(-1), 1e-9)
            _close(diag(x), H.diagonal(dim1=-2, dim2=-1), 1e-9)
        assert _replayed(lap, x) and _replayed(diag, x)


def test_a_weight_trained_in_place_is_read_live():
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    _close(lap(x), _laplacian_oracle(model, x))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        lap(x).square().sum().backward()
        opt.step()
        _close(lap(x), _laplacian_oracle(model, x))
    assert _replayed(lap, x)


def test_a_weight_replaced_by_one_of_another_layout():
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    _close(lap(x), _laplacian_oracle(model, x))
    w = model[2].weight.detach()
    model[2].weight = nn.Parameter(w.T.contiguous().T * 1.5)  # same shape, transposed strides
    assert model[2].weight.stride() != w.stride()
    _close(lap(x), _laplacian_oracle(model, x))
    model[2].weight = nn.Parameter(torch.randn(16, 8, dtype=torch.float64)[::2] * 0.7)
    _close(lap(x), _laplacian_oracle(model, x))


@pytest.mark.parametrize("make", [
    lambda x: x,
    lambda x: x.T.contiguous().T,  # column-major
    lambda x: torch.cat([x, x], 1)[:, ::2],  # strided
    lambda x: torch.cat([x[:1], x])[1:],  # storage offset
    lambda x: x[:1].expand(BATCH, D),  # one sample, expanded
], ids=["contiguous", "column-major", "strided", "offset", "expanded"])
def test_inputs_of_every_layout(make):
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    diag = derivs.hessian_diagonal(model, batch_axis=0)
    for seed in range(3):  # the same layout again: replayed
        x = make(_x(seed))
        H = _hessians(model, x)
        _close(lap(x), H.diagonal(dim1=-2, dim2=-1).sum(-1))
        _close(diag(x), H.diagonal(dim1=-2, dim2=-1))
    assert _replayed(lap, make(_x()))


def test_layouts_alternating_on_one_operator():
    """Two layouts of one shape, called in turn: each replay serves its own."""
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    for seed in range(4):
        base = _x(seed)
        for x in (base, base.T.contiguous().T, torch.cat([base, base], 1)[:, 1::2],
                  base[1:2].expand(BATCH, D)):
            _close(lap(x), _laplacian_oracle(model, x))


def test_gradients_through_a_replay():
    """Training a PINN: the gradient of a loss of the Laplacian, w.r.t. the weights
    and the input, through the replayed graph, against torch.func's nested
    derivatives of the same loss."""
    model = _mlp(nn.Softplus)
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x().requires_grad_(True)
    params = dict(model.named_parameters())

    def loss_oracle(p, z):
        def u(v):
            return torch.func.functional_call(model, p, (v[None],))[0]
        lapl = torch.func.vmap(lambda v: torch.func.hessian(u)(v).diagonal().sum())(z)
        return (lapl * torch.arange(1.0, BATCH + 1, dtype=z.dtype)).sum()

    want_p, want_x = torch.func.grad(loss_oracle, argnums=(0, 1))(
        {k: v.detach() for k, v in params.items()}, x.detach())
    for _ in range(2):
        loss = (lap(x) * torch.arange(1.0, BATCH + 1, dtype=x.dtype)).sum()
        # (the last bias is unused: the Laplacian does not depend on it)
        got = torch.autograd.grad(loss, [x, *params.values()], allow_unused=True)
        _close(got[0], want_x)
        for g, k in zip(got[1:], params):
            _close(torch.zeros_like(want_p[k]) if g is None else g, want_p[k])
    assert _replayed(lap, x)


def test_requires_grad_changes_between_calls():
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    for flag in (False, True, False, True):
        out = lap(x.clone().requires_grad_(flag))
        _close(out, _laplacian_oracle(model, x))
        assert out.requires_grad  # the weights require grad either way


def test_threads_each_with_their_own_points():
    model = _mlp(nn.GELU)
    lap = derivs.laplacian(model, batch_axis=0)
    xs = [_x(k) for k in range(8)]
    wants = [_laplacian_oracle(model, x) for x in xs]

    def work(k):
        for _ in range(20):
            _close(lap(xs[k]), wants[k])

    run_in_threads(work, 8)
    assert _replayed(lap, xs[0])


def test_a_module_attribute_switched_after_the_replay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _mlp()
            self.smooth = True

        def forward(self, x):
            h = self.inner(x)
            return torch.tanh(h) if self.smooth else torch.sin(h) * 2

    model = Net()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    for smooth in (True, True, False, False, True):
        model.smooth = smooth
        _close(lap(x), _laplacian_oracle(model, x))


def test_estimator_directions_are_read_live():
    """A fresh key each call: the replay takes the directions as an input (a trace
    that kept the first call's directions would repeat its estimate)."""
    model = _mlp(nn.SiLU)
    est = derivs.hutchinson_laplacian(model, samples=6, batch_axis=0, distribution="gaussian")
    x = _x()
    H = _hessians(model, x)
    seen = set()
    for seed in range(4):
        V = torch.randn((6, D), generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        want = torch.einsum("sd,nde,se->n", V, H, V) / 6
        got = est(seed, x)
        _close(got, want)
        seen.add(round(float(got[0].detach()), 12))
    assert len(seen) == 4
    assert _replayed(est, 0, x)


def test_bilaplacian_and_diffusion_replayed():
    model = _mlp(nn.GELU, d=3)
    x = _x(d=3)[:2]
    sigma = torch.as_tensor(np.random.default_rng(3).normal(size=(3, 2)))
    bi = derivs.bilaplacian(model, batch_axis=0)
    diff = derivs.diffusion_operator(model, sigma, batch_axis=0)

    def u(v):
        return model(v[None])[0]

    def lap(v):
        return torch.func.hessian(u)(v).diagonal().sum()

    want_bi = torch.func.vmap(lambda v: torch.func.hessian(lap)(v).diagonal().sum())(x)
    H = _hessians(model, x)
    want_diff = torch.einsum("dr,nde,er->n", sigma, H, sigma)
    for _ in range(2):
        _close(bi(x), want_bi, 1e-8)
        _close(diff(x), want_diff)
    assert _replayed(bi, x) and _replayed(diff, x)


def test_inside_torch_func_transforms():
    """Under vmap and grad the call is interpreted, and still exact."""
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    xs = torch.stack([_x(0), _x(1)])
    _close(torch.func.vmap(lap)(xs), torch.stack([_laplacian_oracle(model, x) for x in xs]))
    x = _x()

    def total(z):
        return torch.func.vmap(lambda v: torch.func.hessian(lambda w: model(w[None])[0])(v)
                               .diagonal().sum())(z).sum()

    _close(torch.func.grad(lambda z: lap(z).sum())(x), torch.func.grad(total)(x))
    _close(lap(x), _laplacian_oracle(model, x))  # and a plain call after them


def test_autocast_is_interpreted():
    model = _mlp().float()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x().float()
    want = _laplacian_oracle(model.double(), x.double()).float()
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            got = lap(x)
            torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)
        assert not _replayed(lap, x)


def test_a_failed_trace_leaves_nothing_behind(monkeypatch):
    import torch.fx.experimental.proxy_tensor as proxy_tensor

    def broken(*args, **kwargs):
        raise RuntimeError("injected trace failure")

    monkeypatch.setattr(proxy_tensor, "make_fx", broken)
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    for _ in range(3):
        _close(lap(x), _laplacian_oracle(model, x))
    notes = " ".join(derivs.explain(lap, x).notes)
    assert "injected trace failure" in notes and "replayed so far: 0 of" in notes
    # forward mode still works in this thread after the failure
    _, t = torch.func.jvp(torch.sin, (x,), (torch.ones_like(x),))
    _close(t, torch.cos(x))


def test_the_traced_call_passing_one_tensor_twice():
    """A trace of a call with ``x is y`` must not make later calls read y for x."""
    def f(x, y):
        return (torch.sin(x) * y).sum(-1)

    lap = derivs.laplacian(f, batch_axis=0)
    x = torch.linspace(0.1, 1.0, 20, dtype=torch.float64).reshape(4, 5)
    _close(lap(x, x), -(torch.sin(x) * x).sum(-1))  # traced with x is y
    y = torch.full((4, 5), 2.0, dtype=torch.float64)
    _close(lap(x, y), -(torch.sin(x) * y).sum(-1))
    assert _replayed(lap, x, y)


def test_points_that_are_the_module_s_own_buffer():
    """Kansa-style RBF collocation: the centres are the collocation points."""
    class RBF(nn.Module):
        def __init__(self, centers):
            super().__init__()
            self.register_buffer("centers", centers)
            self.w = nn.Parameter(torch.randn(len(centers), dtype=centers.dtype))

        def forward(self, x):
            r2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
            return torch.exp(-r2) @ self.w

    torch.manual_seed(0)
    net = RBF(torch.rand(6, D, dtype=torch.float64))
    lap = derivs.laplacian(net, batch_axis=0)
    for _ in range(2):
        _close(lap(net.centers), _laplacian_oracle(net, net.centers))
    x = torch.rand(6, D, dtype=torch.float64)
    _close(lap(x), _laplacian_oracle(net, x))


def test_activation_checkpointing_around_the_operator(monkeypatch):
    """Checkpointing's recomputation must save what its forward saved; a replay saves
    other tensors than the interpretation, so under saved-tensor hooks every call
    is interpreted, at any call count (the default count: the forward is the
    signature's last interpreted call, its recomputation would be the first replay)."""
    from torch.utils.checkpoint import checkpoint

    from derivs.backends.torch_engine import _replay

    monkeypatch.setattr(_replay, "REPLAY_AFTER", 3)
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_oracle(p):
        def u(v):
            return torch.func.functional_call(model, p, (v[None],))[0]
        return torch.func.vmap(lambda v: torch.func.hessian(u)(v).diagonal().sum())(
            x).square().sum()

    want = torch.func.grad(loss_oracle)(params)["0.weight"]
    for _ in range(3):  # calls 1-2, 3-4 (the forward interpreted, its recomputation not), 5-6
        model.zero_grad()
        checkpoint(lambda z: lap(z).square().sum(), x, use_reentrant=False).backward()
        _close(model[0].weight.grad, want)


def test_saved_tensor_hooks_see_no_trace():
    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    seen = []

    def pack(t):
        seen.append(type(t).__name__)
        return t

    want = _laplacian_oracle(model, x)  # (torch.func refuses saved-tensor hooks)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(3):
            _close(lap(x), want)
    assert seen and set(seen) <= {"Tensor", "Parameter"}, set(seen)


def test_under_a_user_s_dispatch_mode():
    """A mode around the call sees the real computation (no fake trace through it),
    and the value is exact."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.fakes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            from torch._subclasses.fake_tensor import FakeTensor

            self.fakes += any(isinstance(a, FakeTensor) for a in args)
            return func(*args, **(kwargs or {}))

    model = _mlp()
    lap = derivs.laplacian(model, batch_axis=0)
    x = _x()
    lap(x)
    with Count() as mode:
        for _ in range(3):
            _close(lap(x), _laplacian_oracle(model, x))
    assert mode.fakes == 0
