"""batch_axis is proven from f's graph, never assumed (NOTE [batch axis proof]).

A wrong batch axis is an error that names vmap; an undecidable one runs vmapped
over the samples; a proven one runs in one pass. Oracles: the per-sample values of
jax.vmap / torch.func.vmap over the unbatched transform, and the docs/problems.md numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

X = np.arange(1.0, 31.0).reshape(6, 5)
EXPECTED = [8.0, 63.0, 168.0, 323.0, 528.0, 783.0]


def fw(name):
    if name == "jax":
        return jnp, jnp.asarray, jax.vmap
    return torch, torch.tensor, torch.func.vmap


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_reducing_over_the_samples_is_an_error(name):
    """The seed-2 wrong turn: prod over the whole batch (was 1.2e32, silently)."""
    lib, arr, _ = fw(name)
    with pytest.raises(ValueError, match=r"no axis of size 6.*vmap"):
        derivs.partial(lib.prod, (0, 2, 4), batch_axis=0)(arr(X))


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_wrong_axis_is_an_error(name):
    lib, arr, _ = fw(name)
    per_row = (lambda v: jnp.prod(v, -1)) if name == "jax" else (lambda v: torch.prod(v, -1))
    with pytest.raises(ValueError, match="batch_axis=1"):
        derivs.partial(per_row, (0,), batch_axis=1)(arr(X))


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_coupled_samples_are_an_error(name):
    lib, arr, _ = fw(name)
    centered = lambda v: (v - v.mean(0)) ** 2  # noqa: E731
    with pytest.raises(ValueError, match=r"output sample \d depends on input sample \d"):
        derivs.partial(centered, (0, 1), batch_axis=0)(arr(X))


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_independent_samples_run_in_one_pass(name):
    lib, arr, vmap = fw(name)
    per_row = (lambda v: jnp.prod(v, -1)) if name == "jax" else (lambda v: torch.prod(v, -1))
    d = derivs.partial(per_row, (0, 2, 4), batch_axis=0)
    np.testing.assert_allclose(np.asarray(d(arr(X))), EXPECTED)
    e = derivs.explain(d, arr(X))
    assert any("proven" in n for n in e.notes), e.notes


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_samples_along_axis_1_with_output_on_axis_0(name):
    """(D, B) -> (B,): the samples' axis moves, each output still reads its own column."""
    lib, arr, _ = fw(name)
    per_col = (lambda v: jnp.prod(v, 0)) if name == "jax" else (lambda v: torch.prod(v, 0))
    got = derivs.partial(per_col, (0, 2, 4), batch_axis=1)(arr(X.T.copy()))
    np.testing.assert_allclose(np.asarray(got), EXPECTED)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_undecided_runs_vmapped(name):
    """Batched linear solves: the detector takes solve as dense over its inputs, so
    independence cannot be proven: the transform runs vmapped, with the right value."""
    lib, arr, vmap = fw(name)
    rng = np.random.default_rng(0)
    A = arr(np.eye(3)[None].repeat(4, 0) * 3 + rng.normal(size=(4, 3, 3)) * 0.1)
    b = arr(np.ones(3))
    solve = (jnp.linalg.solve if name == "jax" else torch.linalg.solve)
    f = lambda A: solve(A, b)  # noqa: E731
    d = derivs.partial(f, (0, 4), batch_axis=0)
    e = derivs.explain(d, A)
    assert any("runs vmapped" in n for n in e.notes), e.notes
    expected = vmap(derivs.partial(f, (0, 4)))(A)
    np.testing.assert_allclose(np.asarray(d(A)), np.asarray(expected), rtol=1e-10)


def test_problem1_batch_axis_is_proven():
    """The seed-1 one-liner: elementwise f, y computed from x, batch_axis=0."""
    f = lambda x, y: 100 + (x + 0.01 * y**2) ** 2  # noqa: E731
    x = torch.linspace(-1, 1, 3000, dtype=torch.float64)[:, None]
    y = 3 * x
    d = derivs.partial(f, 0, batch_axis=0)
    torch.testing.assert_close(d(x, y), 2 * (x + 0.01 * y**2))
    assert any("proven" in n for n in derivs.explain(d, x, y).notes)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_operator_batch_axis_is_proven_or_refused(name):
    lib, arr, vmap = fw(name)
    x = arr(np.random.default_rng(1).normal(size=(4, 3)))
    per_row = lambda v: lib.sin(v).sum(-1) * v[..., 0]  # noqa: E731
    lap = derivs.laplacian(per_row, batch_axis=0)
    np.testing.assert_allclose(np.asarray(lap(x)), np.asarray(vmap(derivs.laplacian(per_row))(x)),
                               rtol=1e-10)
    assert any("proven" in line for line in derivs.explain(lap, x).notes)
    mixed = lambda v: lib.sin(v).sum(-1) * v[..., 0].sum()  # noqa: E731
    with pytest.raises(ValueError, match="batch_axis=0 is wrong"):
        derivs.laplacian(mixed, batch_axis=0)(x)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_batch_size_bounds_the_samples_of_partials(name):
    """batch_size=b on partial / partials / value_and_partials: b samples at a time,
    7 samples in chunks of 3 leave a remainder. Oracle: nested dense derivatives
    of each sample (jax.jacfwd / torch.func.jacfwd), and f itself for the value."""
    lib, arr, vmap = fw(name)
    rng = np.random.default_rng(3)
    W = arr(rng.normal(size=(4, 5)) / 2)
    f = lambda v: lib.tanh(v @ W).sum(-1) + v[..., 0] * v[..., 3] ** 2  # noqa: E731
    x = arr(rng.normal(size=(7, 4)))
    jacfwd = jax.jacfwd if name == "jax" else torch.func.jacfwd
    hess = vmap(jacfwd(jacfwd(f)))(x)           # (7, 4, 4)
    third = vmap(jacfwd(jacfwd(jacfwd(f))))(x)  # (7, 4, 4, 4)
    as_np = lambda t: np.asarray(t.detach() if name == "torch" else t)  # noqa: E731
    got = derivs.partial(f, (0, 3), batch_axis=0, batch_size=3)(x)
    np.testing.assert_allclose(as_np(got), as_np(hess[:, 0, 3]), rtol=1e-12, atol=1e-12)
    d = derivs.partials(f, [(1, 1), (0, 3, 3)], batch_axis=0, batch_size=3)(x)
    np.testing.assert_allclose(as_np(d[(1, 1)]), as_np(hess[:, 1, 1]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_np(d[(0, 3, 3)]), as_np(third[:, 0, 3, 3]), rtol=1e-12,
                               atol=1e-12)
    value, d = derivs.value_and_partials(f, [(2, 2)], batch_axis=0, batch_size=3)(x)
    np.testing.assert_allclose(as_np(value), as_np(f(x)), rtol=1e-12)
    np.testing.assert_allclose(as_np(d[(2, 2)]), as_np(hess[:, 2, 2]), rtol=1e-12, atol=1e-12)
    if name == "jax":  # under jit, and differentiable through the chunks
        op = derivs.partial(f, (0, 3), batch_axis=0, batch_size=3)
        np.testing.assert_allclose(jax.jit(op)(x), hess[:, 0, 3], rtol=1e-12, atol=1e-12)
        g = jax.grad(lambda v: op(v).sum())(x)
        want = jax.grad(lambda v: vmap(jacfwd(jacfwd(f)))(v)[:, 0, 3].sum())(x)
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)
    else:
        xs = x.clone().requires_grad_(True)
        derivs.partial(f, (0, 3), batch_axis=0, batch_size=3)(xs).sum().backward()
        want = torch.func.grad(lambda v: vmap(jacfwd(jacfwd(f)))(v)[:, 0, 3].sum())(x)
        np.testing.assert_allclose(xs.grad.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


def test_batch_size_errors():
    f = lambda v: jnp.sin(v).sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="pass batch_axis"):
        derivs.partial(f, 0, batch_size=2)
    with pytest.raises(ValueError, match="positive int"):
        derivs.partials(f, [(0,)], batch_axis=0, batch_size=0)
    with pytest.raises(ValueError, match="has_aux=True is not supported"):
        derivs.value_and_partials(lambda v: (f(v), v), [(0,)], has_aux=True, batch_axis=0,
                                  batch_size=2)


@pytest.mark.parametrize("fw", ["jax", "torch"])
@pytest.mark.parametrize("D", [3, 12])
def test_differential_operator_batch_size(fw, D):
    """``batch_size`` on differential_operator (coordinate groups at D = 3, the
    collapsed family at D = 12), against per-point dense derivatives."""
    rng = np.random.default_rng(D)
    W, X = rng.normal(size=(D, 8)), rng.normal(size=(10, D))
    terms = [(1.0, 0), (-0.5, (1, 1)), (0.3, (0, 2)), (0.2, (2, 2))]
    wj = jnp.asarray(W)
    fj = lambda x: jnp.sum(jnp.tanh(x @ wj), -1)  # noqa: E731
    want = jax.vmap(lambda z: jax.grad(fj)(z)[0] + sum(
        c * jax.hessian(fj)(z)[i[0], i[1]] for c, i in terms[1:]))(jnp.asarray(X))
    if fw == "jax":
        f, x = fj, jnp.asarray(X)
    else:
        wt = torch.as_tensor(W)
        f, x = (lambda z: torch.tanh(z @ wt).sum(-1)), torch.as_tensor(X)
    for bs in (3, 5):
        got = derivs.differential_operator(f, terms, batch_axis=0, batch_size=bs)(x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10)
