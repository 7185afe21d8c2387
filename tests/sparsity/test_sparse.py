"""Sparse Jacobians and Hessians against dense derivatives (the oracle), both
frameworks, float64 and float32, all output formats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import derivs
from tests._frameworks import FRAMEWORKS, array, to_numpy

from . import _problems as P


def ns(fw):
    return jnp if fw == "jax" else torch


def pad(fw):
    if fw == "jax":
        return lambda U: jnp.pad(U, 1)
    return lambda U: torch.nn.functional.pad(U, (1, 1, 1, 1))


def dense_jac(fw, f, x, hessian=False):
    if fw == "jax":
        J = jax.hessian(f)(x) if hessian else jax.jacfwd(f)(x)
    else:
        J = torch.func.hessian(f)(x) if hessian else torch.func.jacfwd(f)(x)
    return to_numpy(J).reshape(-1, int(np.prod(x.shape)))


def as_dense(M) -> np.ndarray:
    if isinstance(M, torch.Tensor):
        return M.to_dense().detach().numpy() if M.layout != torch.strided else M.numpy()
    if sp.issparse(M):
        return M.toarray()
    if hasattr(M, "todense"):
        return np.asarray(M.todense())
    return np.asarray(M)


def problems(fw):
    return {
        "fd1d": (P.fd1d(ns(fw)), 40, False),
        "rosenbrock": (P.rosenbrock(ns(fw)), 40, True),
        "laplace2d": (P.laplace2d(ns(fw), pad(fw)), 49, False),
    }


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("name", ["fd1d", "rosenbrock", "laplace2d"])
def test_values_match_dense(fw, name):
    f, n, hess = problems(fw)[name]
    x = array(fw, np.random.default_rng(0).uniform(-1, 1, n))
    D = (derivs.hessian if hess else derivs.jacobian)(f, sparse=True)
    got = as_dense(D(x))
    np.testing.assert_allclose(got, dense_jac(fw, f, x, hess), rtol=1e-12, atol=1e-12)
    # Far fewer passes than columns: the point of coloring.
    assert D.prepare(x).n_colors <= 5


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_five_point_stencil_gets_five_colors(fw):
    f = P.laplace2d(ns(fw), pad(fw))
    x = array(fw, np.ones(30 * 30))
    prepared = derivs.jacobian(f, sparse=True).prepare(x)
    assert np.array_equal(prepared.pattern.todense(), P.five_point_pattern(30))
    assert prepared.n_colors == 5  # optimal: a 5-point stencil row has 5 entries


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_float32_agrees_with_float64(fw):
    f, n, _ = problems(fw)["laplace2d"]
    v = np.random.default_rng(1).uniform(-1, 1, n)
    D = derivs.jacobian(f, sparse=True, format="dense")
    j32 = to_numpy(D(array(fw, v, "float32")))
    j64 = to_numpy(D(array(fw, v, "float64")))
    assert j32.dtype == np.float32
    np.testing.assert_allclose(j32, j64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("fmt", ["native", "coo", "csr", "scipy", "dense"])
def test_formats(fw, fmt):
    f = P.fd1d(ns(fw))
    x = array(fw, np.linspace(-1, 1, 12))
    J = derivs.jacobian(f, sparse=True, format=fmt)(x)
    expect = dense_jac(fw, f, x)
    if fmt == "scipy":
        assert isinstance(J, sp.csr_array)
    elif fmt == "dense":
        assert tuple(J.shape) == (10, 12)
    elif fw == "torch":
        assert J.layout == (torch.sparse_csr if fmt == "csr" else torch.sparse_coo)
    else:
        from jax.experimental import sparse as jsparse
        assert isinstance(J, jsparse.BCSR if fmt == "csr" else jsparse.BCOO)
    np.testing.assert_allclose(as_dense(J), expect, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_row_coloring_for_few_dense_outputs(fw):
    # Two outputs that each read every input: columns all conflict, rows do not.
    def f(x):
        return ns(fw).stack([(x ** 2).sum(), (x * x[0]).sum()])
    x = array(fw, np.linspace(0.5, 2, 30))
    D = derivs.jacobian(f, sparse=True)
    assert D.prepare(x).coloring.mode == "row"
    np.testing.assert_allclose(as_dense(D(x)), dense_jac(fw, f, x), rtol=1e-12)
    forced = derivs.jacobian(f, sparse=True, coloring="column")
    assert forced.prepare(x).coloring.mode == "column"
    np.testing.assert_allclose(as_dense(forced(x)), dense_jac(fw, f, x), rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_matrix_input_argnums_and_aux(fw):
    def f(a, x):
        return (x[:, 1:] * x[:, :-1] * a).reshape(-1), x.sum()
    a = array(fw, 2.0)
    x = array(fw, np.random.default_rng(2).uniform(-1, 1, (3, 5)))
    D = derivs.jacobian(f, argnums=1, sparse=True, has_aux=True, format="dense")
    J, aux = D(a, x)
    assert tuple(J.shape) == (12, 3, 5)
    expect = dense_jac(fw, lambda x: f(a, x)[0], x)
    np.testing.assert_allclose(to_numpy(J).reshape(12, 15), expect, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(aux), to_numpy(x).sum())


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_tuple_argnums_gives_blocks(fw):
    def f(x, y):
        return x[1:] * y[:-1] + x[:-1]
    x = array(fw, np.linspace(-1, 1, 6))
    y = array(fw, np.linspace(1, 2, 6))
    Jx, Jy = derivs.jacobian(f, argnums=(0, 1), sparse=True)(x, y)
    np.testing.assert_allclose(as_dense(Jx), dense_jac(fw, lambda x: f(x, y), x), rtol=1e-12)
    np.testing.assert_allclose(as_dense(Jy), dense_jac(fw, lambda y: f(x, y), y), rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_hessian_of_a_coupled_function(fw):
    def f(x):
        m = ns(fw)
        return m.sum(m.tanh(x[1:] * x[:-1])) + m.sum(m.sin(x[::2]) * x[1::2]) + m.sum(x ** 4)
    x = array(fw, np.random.default_rng(3).uniform(-1, 1, 20))
    H = derivs.hessian(f, sparse=True, check=True)
    got = as_dense(H(x))
    np.testing.assert_allclose(got, dense_jac(fw, f, x, hessian=True), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, got.T)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_dense_mode_matches_framework(fw):
    f = P.fd1d(ns(fw))
    x = array(fw, np.linspace(-1, 1, 9))
    np.testing.assert_allclose(to_numpy(derivs.jacobian(f)(x)), dense_jac(fw, f, x))
    g = P.rosenbrock(ns(fw))
    np.testing.assert_allclose(to_numpy(derivs.hessian(g)(x)), dense_jac(fw, g, x, True))


def test_jax_jit_and_reuse():
    f = P.fd1d(jnp)
    D = derivs.jacobian(f, sparse=True)
    x = jnp.linspace(-1.0, 1.0, 50)
    jitted = jax.jit(lambda x: D(x).data)
    np.testing.assert_allclose(jitted(x), D(x).data)
    first = D.prepare(x)
    assert D.prepare(x + 1.0) is first  # same signature: pattern and coloring reused
    assert D.prepare(jnp.ones(60)) is not first
    # Under jit the BCOO result is traceable end to end.
    J = jax.jit(D)(x)
    np.testing.assert_allclose(J.todense(), jax.jacfwd(f)(x))


def test_jax_grad_through_sparse_values():
    f = P.fd1d(jnp)
    D = derivs.jacobian(f, sparse=True)
    x = jnp.linspace(-1.0, 1.0, 20)
    g = jax.grad(lambda x: jnp.sum(D(x).data ** 2))(x)
    ref = jax.grad(lambda x: jnp.sum(jax.jacfwd(f)(x) ** 2))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-12)


def test_torch_autograd_through_sparse_values():
    f = P.fd1d(torch)
    D = derivs.jacobian(f, sparse=True)
    x = torch.linspace(-1, 1, 20, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((D(x).coalesce().values() ** 2).sum(), x)
    x2 = x.detach().requires_grad_()
    (ref,) = torch.autograd.grad((torch.autograd.functional.jacobian(f, x2, create_graph=True)
                                  ** 2).sum(), x2)
    np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_check_catches_a_wrong_pattern(fw, monkeypatch):
    f = P.fd1d(ns(fw))
    x = array(fw, np.linspace(-1, 1, 12))
    mod = derivs.backends.backend_named(fw).sparsity()
    real = mod.detect

    def drop_superdiagonal(*a, **k):
        m, out_shape, in_shape, cons, valid = real(*a, **k)
        m = sp.csr_array(m).tolil()
        for i in range(m.shape[0]):
            m[i, i + 2] = False  # the entry u[i+2] of row i
        return sp.csr_array(m.tocsr()), out_shape, in_shape, cons, valid
    monkeypatch.setattr(mod, "detect", drop_superdiagonal)
    with pytest.raises(ValueError, match="misses entries"):
        derivs.jacobian(f, sparse=True, check=True)(x)
    monkeypatch.setattr(mod, "detect", real)
    derivs.jacobian(f, sparse=True, check=True)(x)  # the true pattern passes


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_explain_reports_colors(fw):
    f = P.laplace2d(ns(fw), pad(fw))
    x = array(fw, np.ones(100))
    e = derivs.explain(derivs.jacobian(f, sparse=True), x)
    report = str(e)
    assert "colors: 5" in report and "nnz 460" in report and "smallest-last" in report
    assert e.colors == 5 and e.strategy == "colored-forward" and e.backend == fw
    assert e.pattern.nnz == 460
    h = derivs.explain(derivs.hessian(P.rosenbrock(ns(fw)), sparse=True), x)
    assert h.strategy == "colored-hvp" and h.colors == 3


def test_errors():
    f = P.fd1d(jnp)
    x = jnp.ones(5)
    with pytest.raises(ValueError, match="format"):
        derivs.jacobian(f, sparse=True, format="bsr")
    with pytest.raises(ValueError, match="coloring"):
        derivs.jacobian(f, sparse=True, coloring="diagonal")
    with pytest.raises(TypeError, match="callable"):
        derivs.jacobian(3, sparse=True)
    with pytest.raises(TypeError, match="argnums"):
        derivs.hessian(f, argnums=(0, 1), sparse=True)
    with pytest.raises(ValueError, match="argument 2"):
        derivs.jacobian(f, argnums=2, sparse=True)(x)
    with pytest.raises(TypeError, match="example arguments"):
        derivs.sparsity(f)
    with pytest.raises(TypeError, match="integer"):
        derivs.jacobian(f, sparse=True)(jnp.arange(5))
    with pytest.raises(TypeError, match="scipy"):
        jax.jit(derivs.jacobian(f, sparse=True, format="scipy"))(x)


def test_torch_trainable_closure_zeros_are_not_structural():
    """A zero-initialized layer f closes over will train away from zero: its zeros
    must not become structural zeros of the pattern, and the values must follow
    the live weights (the closure runs eagerly, not as a frozen graph)."""
    layer = torch.nn.Linear(6, 4, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)

    def f(x):
        return torch.tanh(layer(x)) * x[:4]
    D = derivs.jacobian(f, sparse=True, format="dense")
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    assert D.prepare(x).pattern.todense()[:, 4:].all()  # every output reads every input
    with torch.no_grad():
        layer.weight.normal_()
    np.testing.assert_allclose(to_numpy(D(x)), to_numpy(torch.func.jacfwd(f)(x)), rtol=1e-12)


def test_python_scalar_arguments_are_part_of_the_signature():
    def f(x, k):
        return x[k:] * x[:-k]
    D = derivs.jacobian(f, sparse=True, format="dense")
    x = jnp.linspace(-1.0, 1.0, 8)
    for k in (1, 3):
        np.testing.assert_allclose(D(x, k), jax.jacfwd(f)(x, k))


@pytest.mark.parametrize("kind", ["column", "row", "hessian"])
def test_torch_captured_pass_equals_the_eager_transforms(kind):
    """The simplified ATen graph (folded constants, removed no-ops) computes the same
    compressed products as torch.func run eagerly."""
    from derivs._sparsity import _torch as T

    f = P.rosenbrock(torch) if kind == "hessian" else P.fd1d(torch)
    x = torch.as_tensor(np.random.default_rng(4).uniform(-1, 1, 30))
    m = 1 if kind == "hessian" else 28
    size = 28 if kind == "row" else 30
    seeds = np.random.default_rng(5).standard_normal((3, size))
    gather = np.arange(3 * (30 if kind != "column" else m))
    run = T._capture(kind, f, (x,), 0, seeds, gather)
    assert run is not False
    eager, _ = T.compressed(kind, f, (x,), 0, False, seeds)
    np.testing.assert_allclose(run((x,)).numpy(), eager.reshape(-1)[gather].numpy(),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_hessian_errors_and_aux(fw):
    x = array(fw, np.linspace(0.5, 1.5, 6))
    with pytest.raises(ValueError, match="must return a scalar"):
        derivs.hessian(lambda x: x ** 2, sparse=True)(x)

    def f(x):
        return (x[1:] * x[:-1] ** 2).sum(), x[0] * 2
    H, aux = derivs.hessian(f, sparse=True, has_aux=True, format="dense")(x)
    np.testing.assert_allclose(to_numpy(H), dense_jac(fw, lambda x: f(x)[0], x, hessian=True),
                               rtol=1e-12)
    np.testing.assert_allclose(to_numpy(aux), 2 * to_numpy(x)[0])


def test_vmap_over_sparse_jacobians():
    f = lambda x: x[1:] * x[:-1] ** 2  # noqa: E731
    xs = np.random.default_rng(6).uniform(-1, 1, (4, 6))
    ref = np.stack([to_numpy(jax.jacfwd(f)(jnp.asarray(x))) for x in xs])
    J = jax.vmap(derivs.jacobian(f, sparse=True))(jnp.asarray(xs))  # a batched BCOO
    np.testing.assert_allclose(J.todense(), ref, rtol=1e-12)
    dense = jax.vmap(derivs.jacobian(f, sparse=True, format="dense"))(jnp.asarray(xs))
    np.testing.assert_allclose(dense, ref, rtol=1e-12)
    tdense = torch.func.vmap(derivs.jacobian(f, sparse=True, format="dense"))(torch.as_tensor(xs))
    np.testing.assert_allclose(tdense.numpy(), ref, rtol=1e-12)


def test_jax_pattern_follows_what_f_reads():
    """A closed-over value that changes which entries are structurally zero: the
    prepared pattern is detected again (it used to drop the new entries)."""
    import jax
    import jax.numpy as jnp

    c = [0.0]
    w = {"w": jnp.zeros(6)}
    mask = np.zeros(6)

    def f(v):
        return (v * jnp.roll(v, 1) * c[0] + jnp.roll(v, -1) * w["w"]
                + v * jnp.asarray(mask) + jnp.sin(v))

    x = jnp.linspace(-1.0, 1.0, 6)
    J = derivs.jacobian(f, sparse=True)

    def check():
        np.testing.assert_allclose(np.asarray(J(x).todense()), np.asarray(jax.jacrev(f)(x)),
                                   atol=1e-12)

    check()
    c[0] = 1.0
    check()
    w["w"] = jnp.full(6, 2.0)
    check()
    mask[2] = 3.0
    check()


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_a_failing_rule_gives_the_dense_pattern(fw, monkeypatch):
    """A detection rule that raises never leaves a pattern short: f is taken as dense
    over its input, with a SparsityWarning, or an error under unknown='error'."""
    from derivs import SparsityWarning
    from derivs._sparsity import _jax_detect, _torch_detect

    detector = (_jax_detect if fw == "jax" else _torch_detect).Detector

    def broken(self, *a, **k):
        raise IndexError("a broken rule")

    monkeypatch.setattr(detector, "rule", broken)
    f = P.fd1d(ns(fw))
    x = array(fw, np.linspace(-1, 1, 8))
    with pytest.warns(SparsityWarning, match="f as a whole"):
        pattern = derivs.sparsity(f, x)
    assert pattern.nnz == pattern.shape[0] * pattern.shape[1]
    with pytest.raises(ValueError, match="no rule"):
        derivs.sparsity(f, x, unknown="error")


@pytest.mark.parametrize("make", [derivs.jacobian, derivs.hessian])
def test_sparse_only_options_need_sparse_true(make):
    f = lambda x: (x ** 3).sum()  # noqa: E731
    with pytest.raises(ValueError, match=r"format='scipy' applies to sparse results only"):
        make(f, format="scipy")
    with pytest.raises(ValueError, match="check=True applies to sparse results only"):
        make(f, check=True)
    with pytest.raises(TypeError, match="sparse must be True or False"):
        make(f, sparse="true")


@pytest.mark.parametrize("reach", ["guarded", "unguardable"])
def test_jax_eager_program_never_keeps_stale_closure_values(reach):
    """Eager JAX calls run one compiled program, which keeps the values f closed over
    when it was traced. A change to that state must show in the next call: a guarded
    f is prepared (and traced) again; an f that reaches too much to guard (a list
    longer than the guards' limit) runs uncompiled. Oracle: jax.jacfwd of f now."""
    from derivs.backends import _guards

    size = 4 if reach == "guarded" else _guards.MAX_PLACES + 10
    scale = np.ones(size)  # a NumPy array guarded by contents; a long list is not
    scale = scale if reach == "guarded" else list(scale)
    f = lambda v: jnp.sin(v) * scale[0] + v[::-1] ** 2  # noqa: E731
    jac = derivs.jacobian(f, sparse=True, format="dense")
    x = jnp.linspace(0.1, 0.9, 8)
    np.testing.assert_allclose(jac(x), jax.jacfwd(f)(x), rtol=1e-12)
    scale[0] = 3.0  # in place: same pattern, other values
    np.testing.assert_allclose(jac(x), jax.jacfwd(f)(x), rtol=1e-12)
