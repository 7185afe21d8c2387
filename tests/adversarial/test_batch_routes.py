"""Attacks on ``batch_axis`` (NOTE [batch axis proof], NOTE [per-sample route]):
f is documented to take the batch, so every route must give what f means on the
batch. Oracles: closed forms, and the framework's own nested derivatives per
sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

Z = np.random.default_rng(0).normal(size=(6, 3))
B, D = Z.shape


def _fw(name):
    if name == "jax":
        return jnp, jnp.asarray, lambda a: np.asarray(a)
    return torch, torch.as_tensor, lambda a: a.detach().numpy()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["jax", "torch"])
def test_f_that_reads_the_batch_size(name, jit):
    """``sum(Z**2, -1) / Z.shape[0]``: the Laplacian of sample i is 2 D / B. A
    per-sample route calling f on single samples (or batches of one) gives 2 D."""
    lib, arr, np_ = _fw(name)
    f = lambda Zb: (Zb ** 2).sum(-1) / Zb.shape[0]  # noqa: E731
    op = derivs.laplacian(f, batch_axis=0)
    if jit and name == "jax":
        op = jax.jit(op)
    np.testing.assert_allclose(np_(op(arr(Z))), np.full(B, 2 * D / B), rtol=1e-12)
    if name == "jax":  # and with f's own state traced by an enclosing jit
        @jax.jit
        def outer(scale, Zb):
            return derivs.laplacian(lambda z: scale * jnp.sum(z ** 2, -1) / z.shape[0],
                                    batch_axis=0)(Zb)
        np.testing.assert_allclose(outer(2.0, jnp.asarray(Z)), np.full(B, 4 * D / B),
                                   rtol=1e-12)


@pytest.mark.parametrize("name", ["jax", "torch"])
@pytest.mark.parametrize("case", ["negative part / batch size", "batch-wide sign"])
def test_batch_dependence_seen_only_at_negative_values(name, case):
    """f's dependence on the batch shows only where some input is negative: a
    route check on positive stand-ins accepted the bare-sample route (and the
    batch-of-one route) for both. Oracle: closed forms per sample on the batch."""
    lib, arr, np_ = _fw(name)
    relu = jax.nn.relu if name == "jax" else torch.relu
    if case == "negative part / batch size":
        f = lambda Zb: (Zb ** 2).sum(-1) + (relu(-Zb) ** 2).sum(-1) / Zb.shape[0]  # noqa
        want = 2 * D + 2 * (Z < 0).sum(-1) / B
    else:
        where = jnp.where if name == "jax" else torch.where
        f = lambda Zb: (Zb ** 2).sum(-1) + where(Zb.min() < 0, 1.0, 0.0) * (Zb ** 3).sum(-1)  # noqa
        want = 2 * D + 6 * Z.sum(-1) * (Z.min() < 0)
    got = derivs.laplacian(f, batch_axis=0)(arr(Z))
    np.testing.assert_allclose(np_(got), want, rtol=1e-12)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_batched_indexing_f(name):
    """f indexes the batch (``Z[:, 0]``): it must be called with batches."""
    lib, arr, np_ = _fw(name)
    f = lambda Zb: Zb[:, 0] ** 3 + Zb[:, 1] * Zb[:, 2]  # noqa: E731
    np.testing.assert_allclose(np_(derivs.laplacian(f, batch_axis=0)(arr(Z))),
                               6 * Z[:, 0], rtol=1e-12)
    np.testing.assert_allclose(np_(derivs.partial(f, (1, 2), batch_axis=0)(arr(Z))),
                               np.ones(B), rtol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["jax", "torch"])
def test_per_sample_array_closed_over(name, jit):
    """A coefficient per collocation point, closed over (shape (B, D)): the
    Laplacian of sample i is 2 sum_j c_ij (JAX once returned (B, B))."""
    lib, arr, np_ = _fw(name)
    c = np.arange(1.0, B * D + 1).reshape(B, D)
    coef = arr(c)
    f = lambda Zb: (coef * Zb ** 2).sum(-1)  # noqa: E731
    op = derivs.laplacian(f, batch_axis=0)
    if jit and name == "jax":
        op = jax.jit(op)
    np.testing.assert_allclose(np_(op(arr(Z))), 2 * c.sum(-1), rtol=1e-12)
    # batch_size cannot split what f closes over: a clear error, not a wrong shape
    with pytest.raises(ValueError, match="batch_size cannot split"):
        derivs.laplacian(f, batch_axis=0, batch_size=2)(arr(Z))
    with pytest.raises(ValueError, match="batch_size cannot split"):
        derivs.partial(f, (0, 0), batch_axis=0, batch_size=2)(arr(Z))


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_weights_of_the_batch_size_are_not_samples(name):
    """Weights passed as arguments whose leading size equals the batch size, above
    the proof's full-batch limit: only the batched argument is a sample."""
    lib, arr, np_ = _fw(name)
    rng = np.random.default_rng(1)
    Bw, Dw = 64, 80  # 5120 input elements
    x = rng.normal(size=(Bw, Dw)) * 0.3
    W = rng.normal(size=(Bw, Dw)) / 8  # (hidden = Bw, Dw)
    f = lambda xb, Wb: lib.tanh(xb @ Wb.T).sum(-1)  # noqa: E731
    got = np_(derivs.laplacian(f, batch_axis=0)(arr(x), arr(W)))
    h = np.tanh(x @ W.T)
    want = ((-2 * h * (1 - h ** 2)) * (W ** 2).sum(-1)).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    got = np_(derivs.laplacian(f, batch_axis=0, batch_size=16)(arr(x), arr(W)))
    np.testing.assert_allclose(got, want, rtol=1e-10)


_COUPLED = {"on": False}


def _switchable(Zb):
    out = (Zb ** 3).sum(-1)
    if _COUPLED["on"]:
        out = out + Zb.mean(0).sum() ** 2  # now every sample reads every other
    return out


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_verdict_follows_the_state(name):
    """The batch verdict is guarded on f's state: a global flag that makes f couple
    the samples after the first call is seen (PyTorch once kept the one pass and
    returned the uncoupled value)."""
    lib, arr, np_ = _fw(name)
    _COUPLED["on"] = False
    d = derivs.partial(_switchable, (0, 0), batch_axis=0)
    np.testing.assert_allclose(np_(d(arr(Z))), 6 * Z[:, 0], rtol=1e-12)
    _COUPLED["on"] = True
    try:
        with pytest.raises(ValueError, match="batch_axis=0 is wrong"):
            d(arr(Z))
    finally:
        _COUPLED["on"] = False


def test_route_is_not_decided_at_a_degenerate_point():
    """A shared weight of the batch's size, first called with ones (or the inputs all
    zero): the route's check compares values, so it must not run on the call's own
    values (it once cached "the weight is per sample" from a first call at ones)."""
    B_, D_ = 4, 4
    x = np.random.default_rng(2).normal(size=(B_, D_))
    s2 = np.array([0.5, 1.0, 2.0, 3.0])
    want = lambda xx, s: np.sum(-s ** 2 * np.cos(xx * s), -1)  # noqa: E731
    f = lambda xx, s: jnp.sum(jnp.cos(xx * s), -1)  # noqa: E731
    lap = derivs.laplacian(f, batch_axis=0)
    lap(jnp.asarray(x), jnp.ones(D_))
    np.testing.assert_allclose(lap(jnp.asarray(x), jnp.asarray(s2)), want(x, s2), rtol=1e-10)
    zeros = np.zeros((B_, D_))
    np.testing.assert_allclose(derivs.laplacian(f, batch_axis=0)(jnp.asarray(zeros),
                                                                 jnp.asarray(s2)),
                               want(zeros, s2), rtol=1e-10)
    ft = lambda xx, s: torch.cos(xx * s).sum(-1)  # noqa: E731
    for size in (1, 2):
        lt = derivs.laplacian(ft, batch_axis=0, batch_size=size)
        lt(torch.as_tensor(x), torch.ones(D_, dtype=torch.float64))
        np.testing.assert_allclose(lt(torch.as_tensor(x), torch.as_tensor(s2)).numpy(),
                                   want(x, s2), rtol=1e-10)


def test_unproven_and_unchecked_is_an_error_under_jit():
    """An unproven batch axis (cholesky is dense by design) with f's own state traced
    by an enclosing jit: nothing can check a per-sample route, so it is an error
    (it once read the first sample's closed-over coefficients for every sample)."""
    k0, k1 = jax.random.split(jax.random.key(3))
    X, C = jax.random.normal(k0, (4, 3)), jax.random.normal(k1, (4, 3))

    def make_f(C):
        def f(x):
            M = x[:, :, None] * x[:, None, :] + 2.0 * jnp.eye(3)
            L = jnp.linalg.cholesky(M)
            return jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), -1) * jnp.sum(
                C * jnp.sin(x), -1)
        return f

    with pytest.raises(ValueError, match="traced by an enclosing transformation"):
        jax.jit(lambda X, C: derivs.laplacian(make_f(C), batch_axis=0)(X))(X, C)


def test_aux_is_what_f_returns_for_the_batch():
    f = lambda Xb: (jnp.sum(jnp.linalg.cholesky(  # noqa: E731
        Xb[:, :, None] * Xb[:, None, :] + 2.0 * jnp.eye(3)), (-1, -2)),
        {"n": Xb.shape[0], "val": jnp.sum(Xb, -1)})
    X = jnp.asarray(Z)
    out, aux = derivs.partial(f, (0,), batch_axis=0, has_aux=True)(X)
    assert aux["n"] == B and aux["val"].shape == (B,)
    assert out.shape == (B,)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_diffusion_functions_get_the_batch(name):
    """sigma, drift and reaction functions take the argument as passed, batch axis
    included (JAX's per-sample route once gave them bare samples: an IndexError,
    a (B, D) output, a batch mean dropped)."""
    lib, arr, np_ = _fw(name)
    X = Z[:4]
    f = lambda Xb: lib.sin(Xb).sum(-1)  # noqa: E731
    drift = lambda Xb: Xb - Xb.mean(0)  # noqa: E731
    reaction = lambda Xb: -0.3 * Xb[:, 0]  # noqa: E731
    got = np_(derivs.diffusion_operator(f, None if False else (
        lambda Xb: 0.5 * lib.ones(Xb.shape + (3,), dtype=Xb.dtype)), drift, reaction,
        batch_axis=0)(arr(X)))
    s = 0.5 * np.ones(3)
    hess = -np.sin(X)  # diagonal Hessian per sample
    want = (s @ s) * 0 + np.sum(0.25 * 3 * hess * 0, -1)  # placeholder, replaced below
    C = np.full((3, 3), 0.25 * 3)  # sigma sigma^T = 0.75 everywhere
    want = np.einsum("ij,bij->b", C, np.stack([np.diag(h) for h in hess])) \
        + np.sum(np.cos(X) * (X - X.mean(0)), -1) + (-0.3 * X[:, 0]) * np.sin(X).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_batch_size_slices_share_one_program(monkeypatch):
    """Slices of the samples at k storage offsets must not capture k programs: past
    the program cache's size, every call captured them all again (a batch of 80 in
    slices of 2: 40 captures and 2.8 s per call). Exact against torch.func."""
    from derivs.backends.torch_engine import _capture

    captures = []
    real = _capture.capture
    monkeypatch.setattr(_capture, "capture", lambda *a, **k: captures.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1),
                                torch.nn.Flatten(0)).double()
    lap = derivs.laplacian(model, batch_axis=0, batch_size=2)
    x = torch.randn(80, 5, dtype=torch.float64)
    want = torch.func.vmap(torch.func.hessian(lambda z: model(z[None])[0]))(x).diagonal(
        dim1=-2, dim2=-1).sum(-1)
    for _ in range(3):
        torch.testing.assert_close(lap(x), want, rtol=1e-10, atol=1e-10)
    assert len(captures) <= 3, len(captures)


def test_torch_vmap_over_an_operator_with_batch_size():
    """The per-sample route's check draws random stand-ins; under the user's vmap
    that was PyTorch's raw "random operation" error."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1),
                                torch.nn.Flatten(0)).double()
    lap = derivs.laplacian(model, batch_axis=0, batch_size=2)
    xs = torch.randn(2, 6, 3, dtype=torch.float64)
    want = torch.stack([torch.func.vmap(torch.func.hessian(lambda z: model(z[None])[0]))(x)
                        .diagonal(dim1=-2, dim2=-1).sum(-1) for x in xs])
    torch.testing.assert_close(torch.func.vmap(lap)(xs), want, rtol=1e-10, atol=1e-12)
