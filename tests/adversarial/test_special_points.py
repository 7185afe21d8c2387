"""Attacks at special points and on odd inputs, each against an independent
oracle (closed forms, the framework's own reverse-over-forward derivatives) or
the clear derivs error the situation calls for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

XT = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)


def test_inf_at_the_seeded_coordinate_stays_there():
    """sqrt'(0) = inf along the seeded coordinate; the other outputs have derivative
    0 (a one-hot tangent densified by multiplying gave inf * 0 = nan there)."""
    torch.testing.assert_close(derivs.partial(torch.sqrt, (0,))(XT),
                               torch.tensor([np.inf, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(derivs.partial(torch.sqrt, (0, 0))(XT),
                               torch.tensor([-np.inf, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 6])  # unrolled coordinate groups and the stacked family
def test_where_hides_the_branch_it_does_not_take(n):
    x = torch.linspace(0.0, 4.0, n, dtype=torch.float64)
    f = lambda z: torch.where(z > 0, torch.sqrt(z), z ** 2)  # noqa: E731
    want = torch.where(x > 0, -0.25 * x.clamp_min(1e-300) ** -1.5, torch.full_like(x, 2.0))
    torch.testing.assert_close(derivs.laplacian(f)(x), want)
    torch.testing.assert_close(derivs.hessian_diagonal(lambda z: f(z).sum())(x), want)


LAYOUTS = {
    "transposed": lambda: torch.randn(4, 4, dtype=torch.float64).t(),
    "sliced": lambda: torch.randn(5, 4, dtype=torch.float64).t()[1:],
    "stepped": lambda: torch.randn(12, dtype=torch.float64)[::3].reshape(2, 2),
    "offset": lambda: torch.randn(20, dtype=torch.float64)[3:].as_strided((2, 3), (1, 5)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_storage_reading_f_on_strided_inputs(layout):
    """f reads storage (as_strided) and views its input: the captured graph must
    mean what f means for this layout (a contiguous example once gave other
    elements, and views of non-contiguous inputs crashed)."""
    torch.manual_seed(0)
    y = LAYOUTS[layout]()
    fs = [lambda x: (torch.as_strided(x, (2,), (2,)) ** 4).sum() + (x ** 3).sum(),
          lambda x: (x.reshape(-1)[:3] ** 4).sum() * x.flatten()[1]]
    n = y.numel()
    for f in fs:
        H = torch.func.hessian(f)(y).reshape(n, n)
        T = torch.func.jacfwd(torch.func.hessian(f))(y).reshape(n, n, n)
        for mi in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 0, 1), (1, 1, 1)]:
            want = H[mi] if len(mi) == 2 else T[mi]
            torch.testing.assert_close(derivs.partial(f, mi)(y), want)


@pytest.mark.parametrize("op", ["laplacian", "hessian_diagonal"])
def test_reverse_strategy_refuses_vector_outputs(op):
    f = lambda x: jnp.stack([jnp.sum(x ** 3), jnp.sum(x ** 2 * x[0])])  # noqa: E731
    with pytest.raises(ValueError, match="strategy='reverse'"):
        getattr(derivs, op)(f, strategy="reverse")(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(derivs.laplacian(f)(jnp.array([1.0, 2.0])), [18.0, 8.0])


def test_python_branch_on_a_value_at_first_order():
    def f(x):
        return x[0] ** 2 if x[1] > 0 else x[0] ** 3
    assert float(derivs.partial(f, 0)(jnp.array([1.0, 2.0]))) == 2.0
    assert float(derivs.partial(f, 0)(jnp.array([2.0, -1.0]))) == 12.0


def test_clear_errors_for_what_cannot_be_differentiated():
    cb = lambda x: jax.pure_callback(  # noqa: E731
        lambda v: v * 2, jax.ShapeDtypeStruct((2,), jnp.float64), x).sum()
    with pytest.raises(ValueError, match="pure_callback"):
        derivs.partial(cb, (0,))(jnp.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="written with torch"):
        derivs.partial(torch.prod, 0)(jnp.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="written with jax"):
        derivs.partial(jnp.sin, 0)(XT)
    bn = torch.nn.BatchNorm1d(3).double()
    with pytest.raises(derivs.StateError, match="eval"):
        derivs.jacobian(lambda x: bn(x).sum(0), sparse=True)(torch.randn(4, 3, dtype=torch.float64))


@jax.custom_vjp
def _reverse_only(x):
    return jnp.sin(x)


_reverse_only.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.cos(x) * g,))


def test_custom_vjp_operators_take_reverse_mode():
    """A custom_vjp function defines reverse mode only: the operators take Hessian-
    vector products through it (as jax.hessian does); forward-mode requests say so."""
    f = lambda x: jnp.sum(_reverse_only(x) * x)  # noqa: E731
    x = jnp.array([1.0, 2.0, 0.5])
    H = jax.hessian(f)(x)
    np.testing.assert_allclose(derivs.laplacian(f)(x), jnp.trace(H), rtol=1e-12)
    np.testing.assert_allclose(derivs.hessian_diagonal(f)(x), jnp.diag(H), rtol=1e-12)
    assert derivs.explain(derivs.laplacian(f), x).strategy == "reverse"
    with pytest.raises(ValueError, match="custom_vjp"):
        derivs.partial(f, (0, 0))(x)


def test_old_framework_versions_are_named():
    """jax and torch are optional: pip accepts any installed version beside derivs,
    so the first use checks it and names the version needed."""
    from derivs import backends

    with pytest.raises(ImportError, match=r"jax>=0\.9\.2.*0\.9\.1"):
        backends.check_version("jax", "0.9.1")
    with pytest.raises(ImportError, match=r"torch>=2\.13"):
        backends.check_version("torch", "2.12.1+cpu")
    backends.check_version("jax", "0.10.2")
    backends.check_version("torch", "2.13.0+cpu")
    backends.check_version("jax", "0.9.2")


def test_minimum_versions_match_the_declared_floors():
    import pathlib
    import re

    from derivs import backends

    text = (pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text()
    for name, need in backends.MINIMUM.items():
        floors = set(re.findall(rf'"{name}>=([0-9.]+)"', text))
        assert floors == {".".join(map(str, need))}, (name, floors)


def test_jacobian_mode_follows_what_f_supports():
    """A tall Jacobian through a custom_vjp function (reverse only) and a wide one
    through a custom_linear_solve without transpose_solve (forward only): the mode
    the shape prefers raises, the other one works (issue 32.3)."""
    tall = lambda v: jnp.concatenate([_reverse_only(v), _reverse_only(v) * 2, v ** 2])  # noqa
    x = jnp.linspace(0.1, 0.9, 3)
    want = jax.jacrev(tall)(x)
    np.testing.assert_allclose(derivs.jacobian(tall)(x), want)
    np.testing.assert_allclose(derivs.jacobian(tall, sparse=True)(x).todense(), want)
    A = jnp.eye(6) * 3 + 0.1

    def wide(v):
        s = jax.lax.custom_linear_solve(lambda u: A @ u, v,
                                        lambda mv, r: jnp.linalg.solve(A, r))
        return jnp.stack([jnp.sum(s), jnp.sum(s * v)])

    y = jnp.linspace(0.1, 0.9, 6)
    want = jax.jacfwd(wide)(y)
    np.testing.assert_allclose(derivs.jacobian(wide)(y), want, rtol=1e-12)
    np.testing.assert_allclose(derivs.jacobian(wide, sparse=True)(y).todense(), want,
                               rtol=1e-12)
    # explain tells the mode that runs, before any call, and why
    for f, arg, runs in ((tall, x, "reverse"), (wide, y, "forward")):
        dense = str(derivs.explain(derivs.jacobian(f), arg))
        assert f"{runs} mode" in dense.splitlines()[1] and "f refuses" in dense, dense
        sparse = str(derivs.explain(derivs.jacobian(f, sparse=True), arg))
        assert f"colored {runs} mode" in sparse and "f refuses" in sparse, sparse
    plain = str(derivs.explain(derivs.jacobian(lambda v: v ** 2), x))
    assert "forward mode" in plain and "refuses" not in plain, plain


def test_special_functions():
    """jax.scipy.special through the operators: a vmapped while_loop with a batched
    predicate (hyp1f1) is exact; where JAX itself cannot differentiate (exp1), a
    derivs error; where JAX's own derivative is NaN (spence), derivs matches the
    closed form."""
    from jax.scipy import special as S

    x = jnp.array([0.6, 0.9, 1.3])
    f = lambda v: jnp.sum(S.hyp1f1(0.5, 1.5, v))  # noqa: E731
    H = jax.jit(jax.jacfwd(jax.jacfwd(f)))(x)
    np.testing.assert_allclose(jax.jit(derivs.laplacian(f))(x), jnp.trace(H), rtol=1e-10)
    with pytest.raises(ValueError, match="leaks a tracer"):
        derivs.laplacian(lambda v: jnp.sum(S.exp1(v)))(x)
    # spence(x) = Li2(1 - x): f'' = (1/x (1 - x) + log x) / (1 - x)^2
    xs = np.asarray(x)
    want = np.sum((1 / xs * (1 - xs) + np.log(xs)) / (1 - xs) ** 2)
    np.testing.assert_allclose(derivs.laplacian(lambda v: jnp.sum(S.spence(v)))(x), want,
                               rtol=1e-9)


def test_out_of_memory_messages_become_memory_errors():
    from derivs import backends

    for text in ("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 1099511627776 bytes.",
                 "INTERNAL: Error dispatching computation: allocation of 1e12 bytes failed",
                 "YNNPACK operation failed", "RESOURCE_EXHAUSTED: Out of memory"):
        def run(text=text):
            raise RuntimeError(text)
        with pytest.raises(MemoryError, match="batch_size"):
            backends.checked_call(lambda x: x, (XT,), "derivs.partial", run)


def test_large_sparse_positions_are_int64():
    """A gather position color * n + row past 2**31 would wrap in int32."""
    from derivs._sparsity._jax import positions

    a = np.array([0, 2**31 + 5])
    assert positions(a[:1], 10).dtype == np.int32
    assert positions(a, int(a.max())).dtype == np.int64  # the tests run with x64
    np.testing.assert_array_equal(positions(a, int(a.max())), a)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            positions(a, int(a.max()))
    finally:
        jax.config.update("jax_enable_x64", True)


def test_smooth_functions_decomposed_through_kinks():
    """log_sigmoid's decomposition min(0, x) - log1p(exp(-|x|)) and xlog1py's
    where(x == 0, 0, ...) are smooth functions written through kinks: at exactly
    0 their derivatives came out 0 (NOTE [smooth decompositions])."""
    import torch.nn.functional as F

    W = torch.tensor([[1.0, -2.0], [0.5, 1.0], [2.0, 0.3]], dtype=torch.float64)
    f = lambda x: F.logsigmoid(x @ W).sum()  # noqa: E731
    x = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(derivs.partial(f, 0)(x), torch.func.grad(f)(x)[0])
    torch.testing.assert_close(derivs.laplacian(f)(x), torch.func.hessian(f)(x).trace())
    W6 = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f6 = lambda v: F.logsigmoid(v @ W6).sum()  # noqa: E731
    x6 = torch.zeros(6, dtype=torch.float64)
    torch.testing.assert_close(derivs.laplacian(f6)(x6), torch.func.hessian(f6)(x6).trace())
    g = lambda h: torch.special.xlog1py(h, h).sum()  # noqa: E731
    torch.testing.assert_close(derivs.laplacian(g)(x), torch.func.hessian(g)(x).trace())
    # (not at -1, where xlogy(v, v + 1) is infinite: PyTorch's own forward formulas
    # give 0 there, derivs' product rule inf * 0 = nan)
    y = torch.tensor([0.0, 0.5, -0.5, 2.0, float("nan")], dtype=torch.float64)
    for fn in (torch.special.xlog1py, torch.xlogy):
        got = derivs.partial(lambda v: fn(v, v + 1) * v, (1,))(y)
        torch.testing.assert_close(got, torch.func.jacfwd(lambda v: fn(v, v + 1) * v)(y)[:, 1],
                                   equal_nan=True)


def test_maximum_and_minimum_share_ties():
    """At ties PyTorch's derivative of maximum / minimum is the mean of both
    arguments' (as for amax); derivs once took the first's."""
    for n in (3, 6):
        h = torch.zeros(n, dtype=torch.float64)
        for f in (lambda x: (torch.maximum(x, -x) * x).sum(),
                  lambda x: torch.maximum(x, torch.zeros_like(x)).sum() * x.sum(),
                  lambda x: (torch.minimum(x, 2 * x) ** 2).sum()):
            torch.testing.assert_close(derivs.partial(f, (0,))(h), torch.func.grad(f)(h)[0])
            torch.testing.assert_close(derivs.laplacian(f)(h), torch.func.hessian(f)(h).trace())


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_padding_modes_in_the_family_layout(mode):
    """F.pad's circular, reflect and replicate modes write into slices of a fresh
    buffer (copy_, slice_scatter): the Laplacian family (D > 4) must follow them."""
    x = torch.linspace(0.1, 0.9, 7, dtype=torch.float64)
    f = lambda v: (torch.nn.functional.pad(v[None, None], (2, 3), mode=mode) ** 3).sum()  # noqa: E731
    torch.testing.assert_close(derivs.laplacian(f)(x), torch.func.hessian(f)(x).trace())
    torch.testing.assert_close(derivs.hessian_diagonal(f)(x),
                               torch.func.hessian(f)(x).diagonal())


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("api", ["laplacian", "hessian_diagonal", "sparse_jacobian",
                                 "hutchinson_laplacian"])
def test_arguments_without_elements_are_refused(framework, api):
    """A zero-element argument has no coordinate to differentiate along: a clear
    ValueError, not an empty result or a framework's shape error."""
    z = torch.zeros(0, dtype=torch.float64) if framework == "torch" else jnp.zeros(0)
    call = {"laplacian": lambda: derivs.laplacian(lambda v: v.sum())(z),
            "hessian_diagonal": lambda: derivs.hessian_diagonal(lambda v: v.sum())(z),
            "sparse_jacobian": lambda: derivs.jacobian(lambda v: v * 2, sparse=True)(z),
            "hutchinson_laplacian": lambda: derivs.hutchinson_laplacian(
                lambda v: v.sum(), samples=2)(0, z)}[api]
    with pytest.raises(ValueError, match="has no elements"):
        call()
