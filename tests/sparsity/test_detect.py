"""Detected patterns against independent oracles: sympy's exact derivatives of
generated expressions, and nonzeros of dense Jacobians at random points."""

from __future__ import annotations

import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
import torch

import derivs
from tests import _expressions as E
from tests._frameworks import FRAMEWORKS, array, math_ns, to_numpy


def _vars(tree) -> set:
    op, *kids = tree
    if op == "var":
        return {kids[0]}
    if op == "const":
        return set()
    return set().union(*(_vars(k) for k in kids))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("seed", range(6))
def test_pattern_of_generated_systems_matches_sympy(fw, seed):
    rng = random.Random(seed)
    n, m = 7, 6
    trees = [E.random_tree(rng, n, depth=rng.randint(1, 4)) for _ in range(m)]
    syms = sympy.symbols(f"x0:{n}")
    exact = np.array([[sympy.diff(E.to_sympy(t, syms), s) != 0 for s in syms] for t in trees])
    fns = [E.to_array_fn(t, math_ns(fw)) for t in trees]
    stack = jnp.stack if fw == "jax" else torch.stack

    def f(x):
        outs = [g(lambda i: x[i]) for g in fns]
        outs = [o if hasattr(o, "shape") else x[0] * 0 + o for o in outs]
        return stack(outs)
    got = derivs.sparsity(f, array(fw, np.zeros(n))).todense()
    assert np.all(got >= exact)  # never misses an entry
    # Exactly the variables each expression mentions (sympy only drops one when an
    # expression cancels, e.g. x0 - x0).
    syntactic = np.array([[i in _vars(t) for i in range(n)] for t in trees])
    assert np.array_equal(got, syntactic)


def _dense_nonzeros(fw, f, shape, points=3):
    rng = np.random.default_rng(0)
    seen = None
    for _ in range(points):
        x = array(fw, rng.uniform(-1.5, 1.5, shape))
        J = jax.jacfwd(f)(x) if fw == "jax" else torch.func.jacfwd(f)(x)
        nz = to_numpy(J).reshape(-1, int(np.prod(shape))) != 0
        seen = nz if seen is None else seen | nz
    return seen


JAX_CASES = {
    # name: (f, input shape, exact?) -- exact: the pattern equals the nonzeros seen
    "roll-product": (lambda x: jnp.sin(x) * jnp.roll(x, 3), (12,), True),
    "gather-iota": (lambda x: x[jnp.arange(6) * 2] * x[1], (12,), True),
    "scatter-add": (lambda x: x.at[jnp.array([1, 1, 4])].add(x[:3] * x[7]), (12,), True),
    "set-overwrites": (lambda x: jnp.sin(x).at[3].set(x[0] ** 2), (12,), True),
    "const-sparse-matmul": (lambda x: jnp.asarray(np.eye(12, k=2) + np.eye(12)) @ jnp.tanh(x),
                            (12,), True),
    "var-matmul": (lambda x: (x.reshape(3, 4) @ x.reshape(4, 3)).ravel(), (12,), True),
    "conv-5point": (lambda x: jax.scipy.signal.convolve2d(
        x.reshape(4, 3), jnp.asarray([[0., 1, 0], [1, -4, 1], [0, 1, 0]]), mode="same").ravel(),
        (12,), True),
    "reduce-window-sum": (lambda x: jax.lax.reduce_window(
        x.reshape(4, 3) ** 2, 0.0, jax.lax.add, (2, 2), (1, 1), "VALID").ravel(), (12,), True),
    # max reads one element of each window at a point, but which one depends on x
    "reduce-window-max": (lambda x: jax.lax.reduce_window(
        x.reshape(4, 3), -jnp.inf, jax.lax.max, (2, 2), (1, 1), "VALID").ravel(), (12,), False),
    "cumsum": (lambda x: jnp.cumsum(x[::-1]) * x, (12,), True),
    "softmax-rows": (lambda x: jax.nn.softmax(x.reshape(3, 4), axis=1).ravel(), (12,), True),
    "prod-axis": (lambda x: jnp.prod(x.reshape(3, 4), axis=0), (12,), True),
    "pad-slice": (lambda x: jnp.pad(x, (2, 1))[1:-2] ** 2, (12,), True),
    "concat-split": (lambda x: jnp.concatenate(jnp.split(x, 3)[::-1]) * x[0], (12,), True),
    "dynamic-slice": (lambda x: jax.lax.dynamic_slice(x, (3,), (4,)) * 2, (12,), True),
    "select-known": (lambda x: jnp.where(jnp.arange(12) % 2 == 0, x, x[::-1]), (12,), True),
    "select-unknown": (lambda x: jnp.where(x > 0, x, 2 * x[::-1]), (12,), False),
    "2d-input": (lambda x: (x[1:, :] - x[:-1, :] ** 2).sum(axis=1), (4, 3), True),
    "cond": (lambda x: jax.lax.cond(x[0] > 0, lambda v: v * 2, lambda v: jnp.roll(v, 1), x),
             (12,), False),
    "fori": (lambda x: jax.lax.fori_loop(0, 2, lambda i, c: c + jnp.roll(c, 1) ** 2, x),
             (12,), True),
    "while": (lambda x: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * jnp.roll(
        c[0], 1), c[1] + 1), (x, 0))[0], (12,), False),
    "scan": (lambda x: jax.lax.scan(lambda c, xi: (c + xi, c * xi), 1.0, x)[1], (12,), True),
    "fft": (lambda x: jnp.abs(jnp.fft.rfft(x.reshape(3, 4), axis=-1)).ravel(), (12,), True),
    "solve": (lambda x: jnp.linalg.solve(jnp.eye(3) + x[:9].reshape(3, 3), x[9:]), (12,), True),
    "relu-custom-jvp": (lambda x: jax.nn.relu(x) * x[0], (12,), False),
}


@pytest.mark.parametrize("name", sorted(JAX_CASES))
def test_jax_pattern_covers_dense_nonzeros(name):
    f, shape, exact = JAX_CASES[name]
    got = derivs.sparsity(f, jnp.zeros(shape)).todense()
    seen = _dense_nonzeros("jax", f, shape)
    assert np.all(got >= seen), "missed entries"
    if exact:
        assert np.array_equal(got, seen)


TORCH_CASES = {
    "roll-product": (lambda x: torch.sin(x) * torch.roll(x, 3), (12,), True),
    "index-arange": (lambda x: x[torch.arange(6) * 2] * x[1], (12,), True),
    "index-add": (lambda x: x.index_add(0, torch.tensor([1, 1, 4]), x[:3] * x[7]), (12,), True),
    "index-put": (lambda x: torch.sin(x).index_put((torch.tensor([3]),), x[:1] ** 2), (12,), True),
    "const-sparse-matmul": (lambda x: torch.as_tensor(np.eye(12, k=2) + np.eye(12)) @ torch.tanh(x),
                            (12,), True),
    "var-matmul": (lambda x: (x.reshape(3, 4) @ x.reshape(4, 3)).ravel(), (12,), True),
    "conv-5point": (lambda x: torch.nn.functional.conv2d(
        x.reshape(1, 1, 4, 3), torch.tensor([[[[0., 1, 0], [1, -4, 1], [0, 1, 0]]]],
                                            dtype=x.dtype), padding=1).ravel(), (12,), True),
    "max-pool": (lambda x: torch.nn.functional.max_pool2d(x.reshape(1, 4, 3), 2, 1).ravel(),
                 (12,), False),
    "cumsum": (lambda x: torch.cumsum(x.flip(0), 0) * x, (12,), True),
    "softmax-rows": (lambda x: torch.softmax(x.reshape(3, 4), 1).ravel(), (12,), True),
    "layer-norm": (lambda x: torch.nn.functional.layer_norm(x.reshape(3, 4), (4,)).ravel(),
                   (12,), True),
    "prod-axis": (lambda x: torch.prod(x.reshape(3, 4), 0), (12,), True),
    "pad-slice": (lambda x: torch.nn.functional.pad(x, (2, 1))[1:-2] ** 2, (12,), True),
    "cat-chunk": (lambda x: torch.cat(torch.chunk(x, 3)[::-1]) * x[0], (12,), True),
    "where-unknown": (lambda x: torch.where(x > 0, x, 2 * x.flip(0)), (12,), False),
    "2d-input": (lambda x: (x[1:, :] - x[:-1, :] ** 2).sum(1), (4, 3), True),
    "linear-layer": (lambda x: torch.tanh(torch.nn.functional.linear(
        x.reshape(3, 4), torch.ones(2, 4, dtype=x.dtype))).ravel(), (12,), True),
    "solve": (lambda x: torch.linalg.solve(torch.eye(3, dtype=x.dtype) + x[:9].reshape(3, 3),
                                           x[9:]), (12,), True),
    "relu": (lambda x: torch.relu(x) * x[0], (12,), False),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_torch_pattern_covers_dense_nonzeros(name):
    f, shape, exact = TORCH_CASES[name]
    got = derivs.sparsity(f, torch.zeros(shape, dtype=torch.float64)).todense()
    seen = _dense_nonzeros("torch", f, shape)
    assert np.all(got >= seen), "missed entries"
    if exact:
        assert np.array_equal(got, seen)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_hessian_pattern(fw):
    m = jnp if fw == "jax" else torch

    def f(x):
        return m.sum(x[1:] * x[:-1]) + m.sum(m.exp(x[::3])) + x[0] * x[5]
    got = derivs.sparsity(f, array(fw, np.zeros(9)), hessian=True).todense()
    expect = np.zeros((9, 9), bool)
    for i in range(8):
        expect[i, i + 1] = expect[i + 1, i] = True
    for i in range(0, 9, 3):
        expect[i, i] = True
    expect[0, 5] = expect[5, 0] = True
    assert np.array_equal(got, expect)


def test_unknown_jax_primitive_is_dense_with_a_warning():
    def f(x):
        return jax.lax.top_k(x, 2)[0] + x[:2]
    with pytest.warns(derivs.SparsityWarning, match="top_k"):
        got = derivs.sparsity(f, jnp.zeros(5)).todense()
    assert got.all()  # conservative: every output on every input
    with pytest.raises(derivs.UnsupportedOpError, match="top_k"):
        derivs.sparsity(f, jnp.zeros(5), unknown="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        derivs.sparsity(f, jnp.zeros(5), unknown="silent")


def test_unknown_torch_op_is_dense_with_a_warning():
    def f(x):
        return torch.topk(x, 2).values + x[:2]
    with pytest.warns(derivs.SparsityWarning, match="topk"):
        got = derivs.sparsity(f, torch.zeros(5)).todense()
    assert got.all()
    with pytest.raises(derivs.UnsupportedOpError, match="topk"):
        derivs.sparsity(f, torch.zeros(5), unknown="error")


def test_detection_is_vectorized_at_large_n():
    """1e5 inputs in well under a second (a per-element Python loop would not be)."""
    import time

    f = lambda u: u[2:] - 2 * u[1:-1] + u[:-2] + u[1:-1] ** 3  # noqa: E731
    t0 = time.perf_counter()
    p = derivs.sparsity(f, jnp.zeros(100_000))
    assert p.nnz == 3 * (100_000 - 2)
    assert time.perf_counter() - t0 < 5.0  # generous: a guard against per-element loops


@pytest.mark.parametrize("side", ["lhs", "rhs"])
def test_dense_factor_contraction_equals_the_general_map(side, monkeypatch):
    """``_algebra.contract`` with a dense constant factor (a weight matrix) takes one
    union per row; it must give exactly the sets of the general entry-by-entry map."""
    import scipy.sparse as sp

    from derivs._sparsity import _algebra as A

    rng = np.random.default_rng(0)
    B, M, K, N, n = 2, 3, 4, 5, 7
    var = (B, M, K) if side == "lhs" else (B, K, N)
    deps = sp.csr_array(rng.random((int(np.prod(var)), n)) < 0.3)
    lhs_ids = np.arange(B * M * K).reshape(B, M, K)
    rhs_ids = np.arange(B * K * N).reshape(B, K, N)
    out_ids = rng.permutation(B * M * N).reshape(B, M, N)  # any layout of the result
    args = ((deps, None) if side == "lhs" else (None, deps)) + (
        lhs_ids, rhs_ids, out_ids, np.ones((B, M, K), bool), np.ones((B, K, N), bool))
    fast = A.contract(*args)
    monkeypatch.setattr(A, "_distinct", lambda ids: False)  # the general map
    general = A.contract(*args)
    assert (fast != general).nnz == 0 and fast.shape == general.shape
