"""Attacks on coordinate sampling and its picked seeds (NOTE [picked seeds]):
strided and non-contiguous inputs, a weight changed between calls, threads with
their own keys, ``torch_compile``, and the gather actually taken where it is
claimed. The oracle is a dense float64 Hessian at the drawn coordinates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs
from derivs.backends import _torch as torch_backend
from derivs.backends.torch_engine import _family

from ._threads import run_in_threads

D, N = 7, 6


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Softplus(),
                               torch.nn.Linear(16, 1)).double()


def _oracle(net, x, picks):
    u1 = lambda z: net(z).squeeze(-1)  # noqa: E731
    diag = torch.func.vmap(lambda z: torch.diagonal(torch.func.hessian(u1)(z)))(x)
    return D / len(picks) * diag[:, torch.as_tensor(picks)].sum(1)


def _picks(seed, samples, x):
    return torch_backend.random_coordinates(seed, samples, D, x, "t").numpy()


def test_the_gather_is_taken_and_equals_the_dense_product(monkeypatch):
    net = _net()
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    x = torch.randn(N, D, dtype=torch.float64)
    est = derivs.hutchinson_laplacian(u, samples=3, distribution="coordinates", batch_axis=0)
    taken = []
    real = _family._picked_mm

    def spy(*a, **k):
        out = real(*a, **k)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(_family, "_picked_mm", spy)
    got = est(1, x)
    assert any(taken)
    torch.testing.assert_close(got, _oracle(net, x, _picks(1, 3, x)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["transposed", "strided", "offset"])
def test_non_contiguous_inputs(layout):
    net = _net()
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    base = torch.randn(3 * N, 3 * D, dtype=torch.float64)
    x = {"transposed": base[:D, :N].t(), "strided": base[::3, ::3][:N, :D],
         "offset": base[2:2 + N, 5:5 + D]}[layout]
    est = derivs.hutchinson_laplacian(u, samples=4, distribution="coordinates", batch_axis=0)
    torch.testing.assert_close(est(2, x), _oracle(net, x.contiguous(), _picks(2, 4, x)),
                               rtol=1e-10, atol=1e-12)


def test_a_weight_changed_between_calls_is_read_live():
    net = _net()
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    x = torch.randn(N, D, dtype=torch.float64)
    est = derivs.hutchinson_laplacian(u, samples=3, distribution="coordinates", batch_axis=0)
    est(0, x)
    with torch.no_grad():
        net[0].weight.mul_(-1.5)
    torch.testing.assert_close(est(0, x), _oracle(net, x, _picks(0, 3, x)), rtol=1e-10,
                               atol=1e-12)


def test_threads_with_their_own_keys():
    net = _net()
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    x = torch.randn(N, D, dtype=torch.float64)
    est = derivs.hutchinson_laplacian(u, samples=3, distribution="coordinates", batch_axis=0)
    with torch.no_grad():
        want = {k: _oracle(net, x, _picks(k, 3, x)) for k in range(8)}

    def work(k):
        for _ in range(5):
            with torch.no_grad():
                got = est(k, x)
            torch.testing.assert_close(got, want[k], rtol=1e-10, atol=1e-12)

    run_in_threads(work, 8)


def test_torch_compile_reads_the_dense_seeds():
    net = _net()
    u = lambda z: net(z).squeeze(-1)  # noqa: E731
    x = torch.randn(N, D, dtype=torch.float64)
    est = derivs.hutchinson_laplacian(u, samples=3, distribution="coordinates", batch_axis=0,
                                      torch_compile=True)
    for seed in (0, 1):  # the picks change per key; a compiled program must follow
        torch.testing.assert_close(est(seed, x), _oracle(net, x, _picks(seed, 3, x)),
                                   rtol=1e-9, atol=1e-11)


def test_jax_keys_vmapped_and_a_strided_input():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(D, 5)))
    u = lambda z: jnp.sum(jax.nn.gelu(z @ w), -1)  # noqa: E731
    big = jnp.asarray(rng.normal(size=(2 * N, 2 * D)))
    x = big[::2, 1::2]
    est = derivs.hutchinson_laplacian(u, samples=D, distribution="coordinates", batch_axis=0)
    keys = jax.random.split(jax.random.key(0), 3)
    exact = jnp.trace(jax.vmap(jax.hessian(u))(x), axis1=1, axis2=2)
    for row in jax.vmap(lambda k: est(k, x))(keys):  # samples == D: exact for every key
        np.testing.assert_allclose(np.asarray(row), np.asarray(exact), rtol=1e-10)


@pytest.mark.parametrize("shape, axis", [((N, D), 0), ((D, N), 1), ((N, 2, 4), 0),
                                         ((2, N, 4), 1)])
def test_jax_whole_batch_picks_under_jit_with_traced_weights(shape, axis):
    """Under ``jax.jit`` with the weights traced, the per-sample route cannot be
    proven, so the whole batch runs with one picked position per sample (a column
    per row for a (batch, n) input): every layout against the dense Hessian."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape))
    n = int(np.prod(shape)) // shape[axis]
    w = jnp.asarray(rng.normal(size=(n, 5)))

    def u(z, w):
        flat = jnp.moveaxis(z, axis, 0).reshape(z.shape[axis], -1)
        return jnp.sum(jnp.tanh(flat @ w), -1) + jnp.sum(flat ** 3, -1)

    S, key = 3, jax.random.key(4)

    @jax.jit
    def run(x, w):
        return derivs.hutchinson_laplacian(lambda z: u(z, w), samples=S,
                                           distribution="coordinates", batch_axis=axis)(key, x)

    from derivs.backends import _jax as jax_backend
    picks = np.asarray(jax_backend.random_coordinates(key, S, n, x, "t"))
    flat = jnp.moveaxis(x, axis, 0).reshape(shape[axis], -1)

    def one(v):  # u of one flattened sample
        return jnp.sum(jnp.tanh(v @ w)) + jnp.sum(v ** 3)

    diag = jax.vmap(lambda z: jnp.diagonal(jax.hessian(one)(z)))(flat)
    want = n / S * np.asarray(diag)[:, picks].sum(1)
    np.testing.assert_allclose(np.asarray(run(x, w)), want, rtol=1e-10)


@pytest.mark.parametrize("name", ["laplacian", "diffusion"])
def test_stderr_with_a_negative_batch_axis_and_one_sample(name):
    """The review's silent wrong value: with_stderr shifted a negative output axis
    by the read axis, so a one-sample batch on the last axis averaged over the
    wrong axis (JAX gave [18, 36, 54] for the Laplacian 36)."""
    x = jnp.array([[1.0], [2.0], [3.0]])
    f = lambda z: (z ** 3).sum(0)  # noqa: E731
    if name == "laplacian":
        est = derivs.hutchinson_laplacian(f, 3, batch_axis=-1, distribution="coordinates",
                                          with_stderr=True)
    else:
        est = derivs.hutchinson_diffusion(f, jnp.eye(3), samples=3, batch_axis=-1,
                                          distribution="coordinates", with_stderr=True)
    value, err = est(jax.random.key(0), x)
    np.testing.assert_allclose(np.asarray(value), [36.0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(err), [0.0], atol=1e-12)


def test_stderr_of_a_tuple_output():
    f = lambda z: ((z ** 3).sum(), (z ** 2).sum())  # noqa: E731  (Laplacians 6 sum z, 2 D)
    for x, key in ((jnp.arange(1.0, 5.0), jax.random.key(0)),
                   (torch.arange(1.0, 5.0, dtype=torch.float64), 0)):
        (lap3, lap2), (e3, e2) = derivs.hutchinson_laplacian(
            f, 4, distribution="coordinates", with_stderr=True)(key, x)
        np.testing.assert_allclose([float(lap3), float(lap2)], [60.0, 8.0], rtol=1e-12)
        np.testing.assert_allclose([float(e3), float(e2)], [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("batched", [True, False])
def test_differential_operator_family_on_multi_dimensional_samples(batched):
    """The review's raw crash: a collapsed term set (five or more second-order
    terms) on samples of shape (2, 3) in JAX; against dense jax.hessian."""
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(6, 4)))
    u = lambda z: jnp.sum(jnp.tanh(z.reshape(z.shape[:-2] + (6,)) @ w), -1)  # noqa: E731
    coef = rng.normal(size=6)
    terms = [(float(c), (i, i)) for i, c in enumerate(coef)]
    x = jnp.asarray(rng.normal(size=(5, 2, 3)))
    hd = jax.vmap(lambda z: jnp.diagonal(jax.hessian(lambda v: u(v.reshape(2, 3)))(
        z.reshape(6))))(x)
    want = np.asarray(hd) @ coef
    if batched:
        got = derivs.differential_operator(u, terms, batch_axis=0)(x)
    else:
        got = jnp.stack([derivs.differential_operator(u, terms)(z) for z in x])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)
