"""Collapsed operators over families of directions (``derivs.bilaplacian``,
``derivs.diffusion_operator``, and ``differential_operator``'s second- and
fourth-order term sets) against independent oracles: dense float64 nested
``torch.func`` / ``jax`` Hessians, sympy, and NumPy tensor algebra for the
direction sets."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
import torch

import derivs
from derivs import _collapsed
from derivs.core import _directions, _stacked


D = 3
_RNG = np.random.default_rng(21)
_W = _RNG.normal(size=(D, 5)) / 2
_X = _RNG.normal(size=(4, D)) / 2


def _fns(fw):
    """Functions of x (D,), batch-aware over leading axes, in framework ``fw``:
    the PyTorch family's rules (and its torch.func fallback: atan, div)."""
    if fw == "jax":
        m, W = jnp, jnp.asarray(_W)
        return {
            "mlp": lambda x: m.tanh(m.tanh(x @ W) @ W.T).sum(-1),
            "sigmoid-log-exp": lambda x: (m.log(1 + m.exp(x @ W)).sum(-1)
                                          * jax.nn.sigmoid(x).mean(-1)),
            "sin-cos-pow": lambda x: ((m.sin(x) ** 3).sum(-1)
                                      + m.cos(x[..., 0] * x[..., 2]) * x[..., 1] ** 2),
            "atan-div": lambda x: (m.arctan(x[..., 0] / (2 + x[..., 1] ** 2))
                                   + (x @ W).prod(-1)),
            "vector": lambda x: m.stack([(x ** 4).sum(-1), m.tanh(x @ W).prod(-1)], -1),
            "square-divisor": lambda x: _square_divisor(m.tanh, x, W),
            "nonlinear-products": lambda x: _nonlinear_products(m, x, W),
        }
    W = torch.as_tensor(_W)
    return {
        "mlp": lambda x: torch.tanh(torch.tanh(x @ W) @ W.T).sum(-1),
        "sigmoid-log-exp": lambda x: (torch.log(1 + torch.exp(x @ W)).sum(-1)
                                      * torch.sigmoid(x).mean(-1)),
        "sin-cos-pow": lambda x: ((torch.sin(x) ** 3).sum(-1)
                                  + torch.cos(x[..., 0] * x[..., 2]) * x[..., 1] ** 2),
        "atan-div": lambda x: (torch.atan(x[..., 0] / (2 + x[..., 1] ** 2))
                               + (x @ W).prod(-1)),
        "vector": lambda x: torch.stack([(x ** 4).sum(-1), torch.tanh(x @ W).prod(-1)], -1),
        "square-divisor": lambda x: _square_divisor(torch.tanh, x, W),
        "nonlinear-products": lambda x: _nonlinear_products(torch, x, W),
    }


def _square_divisor(tanh, x, W):
    """One intermediate times itself and as a divisor: the stacked program must keep
    its rows (they were dropped once: silently wrong)."""
    t = tanh(x @ W)
    return (t * t).sum(-1) + (W[0] / (2 + t)).sum(-1)


def _nonlinear_products(m, x, W):
    """Products (elementwise and matmul) of two intermediates with curvature,
    fed to another nonlinearity: every cross term of a bilinear rule reaches the
    result (NOTE [contracted Bi-Laplacian])."""
    t, u = m.tanh(x @ W), m.cos(x @ W)
    inner = (t[..., None, :] @ u[..., :, None])[..., 0, 0]
    return m.sin((t * u).sum(-1)) + m.tanh(inner)


def _dense(fw, f, xs, C4=None, C2=None, b=None, c0=0.0):
    """Per sample of ``xs``: ``sum C4_ij T_iijj + sum C2_ij H_ij + b . grad + c0 f``
    per output, from nested dense derivatives (jacfwd of jacrev; T: three jacfwd).
    ``C2``, ``b``, ``c0`` may be functions of the sample."""
    at = lambda v, x: v(x) if callable(v) else v  # noqa: E731
    if fw == "jax":
        def parts(x):
            return (jax.jacfwd(jax.jacfwd(jax.jacfwd(jax.jacrev(f))))(x),
                    jax.jacfwd(jax.jacrev(f))(x), jax.jacrev(f)(x), f(x))
        T, H, g, v = map(np.asarray, jax.jit(jax.vmap(parts))(jnp.asarray(xs)))
    else:
        fj = torch.func

        def parts(x):
            return (fj.jacfwd(fj.jacfwd(fj.jacfwd(fj.jacrev(f))))(x),
                    fj.jacfwd(fj.jacrev(f))(x), fj.jacrev(f)(x), f(x))
        T, H, g, v = (t.numpy() for t in fj.vmap(parts)(torch.as_tensor(xs)))
    out = []
    for k, x in enumerate(xs):
        o = at(c0, x) * v[k]
        if C4 is not None:
            o = o + np.einsum("...iijj,ij->...", T[k], C4)
        if C2 is not None:
            o = o + np.einsum("...ij,ij->...", H[k], at(C2, x))
        if b is not None:
            o = o + np.einsum("...i,i->...", g[k], at(b, x))
        out.append(o)
    return np.stack(out)


def _arr(fw, x):
    return jnp.asarray(x) if fw == "jax" else torch.as_tensor(x)


def _np(v):
    return v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


LAYOUTS = ["coordinate groups", "stacked pairs", "stacked"]


def _force_layout(layout, monkeypatch):
    monkeypatch.setattr(_collapsed, "mixed_layout", lambda fw, device, contracted: layout)


@pytest.mark.parametrize("fw", ["jax", "torch"])
@pytest.mark.parametrize("case", ["mlp", "sigmoid-log-exp", "sin-cos-pow", "atan-div",
                                  "vector", "square-divisor", "nonlinear-products"])
def test_bilaplacian_equals_nested_dense(fw, case):
    f = _fns(fw)[case]
    want = _dense(fw, f, _X, C4=np.ones((D, D)))
    op = derivs.bilaplacian(f, batch_axis=0)
    np.testing.assert_allclose(_np(op(_arr(fw, _X))), want, rtol=1e-10, atol=1e-10)
    unbatched = derivs.bilaplacian(f)
    np.testing.assert_allclose(_np(unbatched(_arr(fw, _X[0]))), want[0], rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ["mlp", "sin-cos-pow", "atan-div", "vector", "square-divisor",
                                  "nonlinear-products"])
def test_torch_bilaplacian_layouts(layout, case, monkeypatch):
    """Every PyTorch layout of mixed fourth-order terms (NOTE [mixed-term layout]),
    including the stacked rules' torch.func fallback (atan, div) at order 4."""
    _force_layout(layout, monkeypatch)
    f = _fns("torch")[case]
    want = _dense("torch", f, _X, C4=np.ones((D, D)))
    op = derivs.bilaplacian(f, batch_axis=0)
    assert derivs.explain(op, torch.as_tensor(_X)).layout == layout
    np.testing.assert_allclose(_np(op(torch.as_tensor(_X))), want, rtol=1e-10, atol=1e-10)
    chunked = derivs.bilaplacian(f, batch_axis=0, chunk_size=4)
    np.testing.assert_allclose(_np(chunked(torch.as_tensor(_X))), want, rtol=1e-10,
                               atol=1e-10)


def test_merged_rows():
    """NOTE [merged rows]: the Bi-Laplacian's third-level rows d_i^2 d_j merge into
    D rows d_j (Laplacian); rows whose top entries differ stay apart."""
    n = 6
    bilap = [(1.0, (i, i, j, j)) for i in range(n) for j in range(n)]
    layout = _stacked.Layout(n, bilap)
    assert layout.size == n + n * (n + 1) // 2 + n
    for j in range(n):  # d_j (Laplacian): every d_i^2 d_j, i = j included
        row = layout.index[(j, j, j)]
        assert sorted(layout.members[row]) == sorted(tuple(sorted((i, i, j)))
                                                     for i in range(n))
    weights = _RNG.uniform(1, 2, size=(n, n))
    uneven = _stacked.Layout(n, [(float(weights[i, j]), (i, i, j, j))
                                 for i in range(n) for j in range(n)])
    assert uneven.size == n + n * (n + 1) // 2 + n * n
    assert all(len(m) == 1 for m in uneven.members)
    hessian_diagonal_read = _stacked.Layout(n, bilap, read=[(0, 0)])
    assert hessian_diagonal_read.size == n + n * (n + 1) // 2 + n * n


def test_bilaplacian_sympy():
    """An exact Bi-Laplacian from sympy, at a rational point, in both frameworks."""
    xs = sp.symbols("x0:3")
    expr = sp.sin(xs[0]) * sp.exp(xs[1] / 2) * xs[2] ** 3 + (xs[0] * xs[1]) ** 4
    lap = lambda e: sum(sp.diff(e, v, 2) for v in xs)  # noqa: E731
    point = {xs[0]: sp.Rational(1, 3), xs[1]: sp.Rational(-1, 2), xs[2]: sp.Rational(2, 5)}
    want = float(lap(lap(expr)).subs(point))
    x = np.array([1 / 3, -1 / 2, 2 / 5])
    fj = lambda z: jnp.sin(z[0]) * jnp.exp(z[1] / 2) * z[2] ** 3 + (z[0] * z[1]) ** 4  # noqa: E731
    ft = lambda z: torch.sin(z[0]) * torch.exp(z[1] / 2) * z[2] ** 3 + (z[0] * z[1]) ** 4  # noqa: E731
    assert float(derivs.bilaplacian(fj)(jnp.asarray(x))) == pytest.approx(want, rel=1e-12)
    assert float(derivs.bilaplacian(ft)(torch.as_tensor(x))) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("fw", ["jax", "torch"])
def test_bilaplacian_nested_strategy_and_float32(fw):
    f = _fns(fw)["mlp"]
    want = _dense(fw, f, _X, C4=np.ones((D, D)))
    nested = derivs.bilaplacian(f, batch_axis=0, strategy="nested-forward")
    np.testing.assert_allclose(_np(nested(_arr(fw, _X))), want, rtol=1e-10, atol=1e-10)
    x32 = _arr(fw, _X.astype(np.float32))
    if fw == "torch":
        W = torch.as_tensor(_W, dtype=torch.float32)
        f = lambda x: torch.tanh(torch.tanh(x @ W) @ W.T).sum(-1)  # noqa: E731
    else:
        W = jnp.asarray(_W, jnp.float32)
        f = lambda x: jnp.tanh(jnp.tanh(x @ W) @ W.T).sum(-1)  # noqa: E731
    got = derivs.bilaplacian(f, batch_axis=0)(x32)
    assert got.dtype == x32.dtype
    np.testing.assert_allclose(_np(got), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_jax_bilaplacian_composes():
    f = _fns("jax")["mlp"]
    x = jnp.asarray(_X)
    want = jax.vmap(derivs.bilaplacian(f, strategy="nested-forward"))(x)
    np.testing.assert_allclose(jax.jit(jax.vmap(derivs.bilaplacian(f)))(x), want, rtol=1e-11)
    np.testing.assert_allclose(jax.jit(derivs.bilaplacian(f, batch_axis=0))(x), want,
                               rtol=1e-11)

    def loss(w):  # a biharmonic PINN loss, differentiated in the weights
        g = lambda z: jnp.tanh(jnp.tanh(z @ w) @ w.T).sum(-1)  # noqa: E731
        return (derivs.bilaplacian(g, batch_axis=0)(x) ** 2).sum()

    def nested_loss(w):
        g = lambda z: jnp.tanh(jnp.tanh(z @ w) @ w.T).sum(-1)  # noqa: E731
        lap = lambda h: (lambda z: jnp.trace(jax.hessian(h)(z)))  # noqa: E731
        return (jax.vmap(lap(lap(g)))(x) ** 2).sum()

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(jnp.asarray(_W)),
                               jax.jit(jax.grad(nested_loss))(jnp.asarray(_W)), rtol=1e-9)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_bilaplacian_trains_module(layout, monkeypatch):
    """A biharmonic PINN loss on an nn.Module: the gradients reach the parameters
    and equal those of the nested dense loss."""
    _force_layout(layout, monkeypatch)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1),
                              ).double()
    x = torch.as_tensor(_X)
    op = derivs.bilaplacian(lambda z: net(z).squeeze(-1), batch_axis=0)
    (op(x) ** 2).sum().backward()
    ours = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    params = dict(net.named_parameters())

    def u(z):
        return torch.func.functional_call(net, params, (z,)).squeeze(-1)

    lap = lambda h: (lambda z: torch.func.hessian(h)(z).diagonal().sum())  # noqa: E731
    (torch.func.vmap(lap(lap(u)))(x) ** 2).sum().backward()
    for a, p in zip(ours, net.parameters()):  # None: no dependence (the output bias)
        want = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(torch.zeros_like(p) if a is None else a, want, rtol=1e-9,
                                   atol=1e-11)
    with torch.no_grad():  # weights read live: an update changes the operator
        net[0].weight.mul_(1.5)
    torch.testing.assert_close(op(x), torch.func.vmap(lap(lap(u)))(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fw", ["jax", "torch"])
@pytest.mark.parametrize("coefficients", ["random", "uniform off the diagonal"])
def test_fourth_order_term_sets(fw, coefficients, monkeypatch):
    """``differential_operator`` with arbitrary d^4 / dx_i^2 dx_j^2 coefficients (not
    symmetric, some zero), or ones with twice the pure terms (the stacked layout
    merges some third-level rows, not all: NOTE [merged rows]): every layout."""
    C = _RNG.normal(size=(D, D))
    C[0, 2] = C[2, 0] = 0.0
    if coefficients != "random":
        C = np.ones((D, D)) + np.eye(D)
    terms = [(float(C[i, j]), (i, i, j, j)) for i in range(D) for j in range(D) if C[i, j]]
    f = _fns(fw)["sin-cos-pow"]
    want = _dense(fw, f, _X, C4=C)
    for layout in (LAYOUTS if fw == "torch" else LAYOUTS[:1]):
        _force_layout(layout, monkeypatch)
        op = derivs.differential_operator(f, terms, batch_axis=0)
        np.testing.assert_allclose(_np(op(_arr(fw, _X))), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fw", ["jax", "torch"])
def test_second_order_term_sets(fw):
    """A dense second-order operator with drift terms, D = 5 (> the unrolled limit):
    the eigenvector family with signed weights."""
    n = 5
    rng = np.random.default_rng(5)
    C = rng.normal(size=(n, n))
    W = rng.normal(size=(n, 4)) / 2
    if fw == "jax":
        f = lambda x: jnp.tanh(x @ jnp.asarray(W)).prod(-1) + jnp.sin(x).sum(-1)  # noqa: E731
    else:
        Wt = torch.as_tensor(W)
        f = lambda x: torch.tanh(x @ Wt).prod(-1) + torch.sin(x).sum(-1)  # noqa: E731
    terms = [(float(C[i, j]), (i, j)) for i in range(n) for j in range(n)]
    terms += [(0.3 * (i + 1), i) for i in range(n)]
    xs = rng.normal(size=(3, n))
    want = _dense(fw, f, xs, C2=C, b=0.3 * np.arange(1, n + 1))
    op = derivs.differential_operator(f, terms, batch_axis=0)
    assert derivs.explain(op, _arr(fw, xs)).layout in ("stacked", "family")
    np.testing.assert_allclose(_np(op(_arr(fw, xs))), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fw", ["jax", "torch"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_diffusion_operator_equals_dense(fw, per_sample):
    """tr(S S^T H) + b . grad f + c f with S of rank 2 < D, constant or a function of
    x (per sample), against the dense Hessian."""
    f = _fns(fw)["mlp"]
    S = _RNG.normal(size=(D, 2))
    b = _RNG.normal(size=D)
    m = jnp if fw == "jax" else torch
    St, bt = _arr(fw, S), _arr(fw, b)
    if per_sample:
        sigma = lambda x: m.sin(x)[..., :, None] * St  # noqa: E731
        drift = lambda x: m.cos(x) * bt  # noqa: E731
        reaction = lambda x: (x ** 2).sum(-1)  # noqa: E731
        S_of = lambda x: np.sin(x)[:, None] * S  # noqa: E731
        b_of = lambda x: np.cos(x) * b  # noqa: E731
        c_of = lambda x: float((x ** 2).sum())  # noqa: E731
    else:
        sigma, drift, reaction = St, bt, -0.7
        S_of, b_of, c_of = (lambda x: S), (lambda x: b), (lambda x: -0.7)
    want = _dense(fw, f, _X, C2=lambda x: S_of(x) @ S_of(x).T, b=b_of, c0=c_of)
    op = derivs.diffusion_operator(f, sigma, drift, reaction, batch_axis=0)
    np.testing.assert_allclose(_np(op(_arr(fw, _X))), want, rtol=1e-10, atol=1e-10)
    one = derivs.diffusion_operator(f, sigma, drift, reaction)
    np.testing.assert_allclose(_np(one(_arr(fw, _X[1]))), want[1], rtol=1e-10, atol=1e-10)
    nested = derivs.diffusion_operator(f, sigma, drift, reaction, batch_axis=0,
                                       strategy="nested-forward", chunk_size=1)
    np.testing.assert_allclose(_np(nested(_arr(fw, _X))), want, rtol=1e-10, atol=1e-10)


def test_diffusion_operator_cost_grows_with_rank():
    """One pass of r directions: the PyTorch program carries r stacked rows."""
    f = _fns("torch")["mlp"]
    for r in (1, 2, 5):
        op = derivs.diffusion_operator(f, torch.ones(D, r, dtype=torch.float64))
        text = str(derivs.explain(op, torch.as_tensor(_X[0])))
        assert f"{r} stacked coefficient rows" in text


def test_errors():
    f = _fns("torch")["mlp"]
    x = torch.as_tensor(_X)
    with pytest.raises(ValueError, match=r"x.shape \+ \(r,\)"):
        derivs.diffusion_operator(f, lambda z: z, batch_axis=0)(x)
    with pytest.raises(ValueError, match="sample_shape"):
        derivs.diffusion_operator(f, torch.ones(D + 1, 2), batch_axis=0)(x)
    with pytest.raises(ValueError, match="drift must have"):
        derivs.diffusion_operator(f, torch.ones(D, 2), drift=torch.ones(7))(x[0])
    with pytest.raises(TypeError, match="sigma is required"):
        derivs.diffusion_operator(f, None)
    with pytest.raises(ValueError, match="strategy"):
        derivs.bilaplacian(f, strategy="reverse")
    with pytest.raises(ValueError, match="chunk_size"):
        derivs.bilaplacian(f, chunk_size=0)
    with pytest.raises(ValueError, match="jax.jit"):
        derivs.bilaplacian(_fns("jax")["mlp"], torch_compile=True)(jnp.asarray(_X[0]))
    with pytest.raises(ValueError, match="vmap"):  # samples coupled: batch_axis refused
        derivs.bilaplacian(lambda z: (z ** 2).sum() * z[:, 0], batch_axis=0)(x)


def test_explain_tells_the_layout(monkeypatch):
    f = _fns("torch")["mlp"]
    x = torch.as_tensor(_X)
    e = derivs.explain(derivs.bilaplacian(f, batch_axis=0), x)
    assert e.layout == "stacked"  # every device (NOTE [mixed-term layout])
    assert f"{D + D * (D + 1) // 2 + D} stacked coefficient rows" in str(e)
    assert "NOTE [contracted Bi-Laplacian]" in str(e)
    C = np.arange(1.0, D * D + 1).reshape(D, D)  # uneven: no contraction, tables
    e = derivs.explain(derivs.differential_operator(
        f, [(float(C[i, j]), (i, i, j, j)) for i in range(D) for j in range(D)],
        batch_axis=0), x)
    assert e.layout == "coordinate groups"  # CPU
    assert "coordinate groups run as traced-jet" in str(e)
    _force_layout("stacked", monkeypatch)
    e = derivs.explain(derivs.differential_operator(
        f, [(float(C[i, j]), (i, i, j, j)) for i in range(D) for j in range(D)],
        batch_axis=0), x)
    assert "contracted" not in str(e)
    _force_layout("stacked pairs", monkeypatch)
    e = derivs.explain(derivs.bilaplacian(f, batch_axis=0), x)
    assert f"{3 * D * D} stacked coefficient rows" in str(e)
    e = derivs.explain(derivs.bilaplacian(f, strategy="nested-forward"), x[0])
    assert e.layout == "nested" and e.strategy == "nested-forward"


# -- the direction sets and tables, against NumPy tensor algebra -------------------------
def _random_symmetric4(n, rng):
    T = rng.normal(size=(n,) * 4)
    return sum(np.transpose(T, p) for p in itertools.permutations(range(4))) / 24


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_pair_interpolation_exact(n):
    rng = np.random.default_rng(n)
    T = _random_symmetric4(n, rng)
    c = rng.normal(size=(n, n))
    s = _directions.fourth_order_pairs(c)
    got = sum(w * np.einsum("ijkl,i,j,k,l->", T, v, v, v, v) for v, w in zip(s.rows, s.weights))
    assert got == pytest.approx(np.einsum("iijj,ij->", T, c), rel=1e-12)
    # D units (weight 1 - (D - 1) / 3, zero at D = 4) and D (D - 1) pairs
    assert _directions.fourth_order_pairs(np.ones((n, n))).size == n * n - (n if n == 4 else 0)


def test_second_order_directions_exact():
    rng = np.random.default_rng(1)
    H = rng.normal(size=(6, 6))
    H = H + H.T
    C = rng.normal(size=(6, 3)) @ rng.normal(size=(3, 6))  # rank 3, not symmetric
    s = _directions.second_order(C)
    assert s.size == 3 or s.size == 6
    got = sum(w * v @ H @ v for v, w in zip(s.rows, s.weights))
    assert got == pytest.approx(np.sum(C * H), rel=1e-10)


def test_partition_tables():
    """Set partitions: counts per multi-index are Bell numbers; Faa di Bruno's
    coefficients match sympy's derivative of a composition."""
    for k, bell in [(1, 1), (2, 2), (3, 5), (4, 15), (5, 52)]:
        assert sum(c for _, c in _stacked._partitions(tuple(range(k)))) == bell
        assert sum(c for _, c in _stacked._partitions((0,) * k)) == bell
    t = sp.Symbol("t")
    phi, a = sp.Function("phi"), sp.Function("a")
    for k in range(1, 6):
        want = sp.expand(sp.diff(phi(a(t)), t, k))
        # one group k times: the blocks' sizes are the parts of a partition of k
        got = sum(m * sp.Subs(sp.Derivative(phi(sp.Symbol("y")), sp.Symbol("y"), len(blocks)),
                              sp.Symbol("y"), a(t)).doit()
                  * math.prod(sp.diff(a(t), t, len(b)) for b in blocks)
                  for blocks, m in _stacked._partitions((0,) * k))
        assert sp.simplify(want - sp.expand(got)) == 0


def test_torch_compile_graph_is_keyed_on_repeated_axes():
    """The compiled family pass is traced with Python branches on stride-0 axes
    (repeated rows are multiplied once): a sigma that returns an expanded tensor on
    one call and a dense one of the same shape on the next must not reuse the
    first graph (a silent wrong value before the key held the repeated axes)."""
    W = torch.as_tensor(_W)
    u = lambda x: torch.tanh(x @ W).sum(-1)  # noqa: E731
    S0 = torch.as_tensor(_RNG.normal(size=(D, 2)))
    state = {"expand": True}

    def sigma(z):
        if state["expand"]:
            return S0.expand(z.shape[0], D, 2)
        return torch.stack([S0 * (i + 1) for i in range(z.shape[0])])

    x = torch.as_tensor(_X)
    compiled = derivs.diffusion_operator(u, sigma, batch_axis=0, torch_compile=True)
    for expand in (True, False):
        state["expand"] = expand
        S = sigma(x).numpy()
        want = np.stack([_dense("torch", u, _X[k:k + 1], C2=S[k] @ S[k].T)[0]
                         for k in range(len(_X))])
        np.testing.assert_allclose(_np(compiled(x)), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", [None, "stacked", "stacked pairs"])
def test_stacked_tables_are_made_once(layout, monkeypatch):
    """NOTE [device constants]: a second call makes no tensor from NumPy (on a GPU
    each would be a blocking copy that drains the launch queue), and stays exact."""
    if layout is not None:
        _force_layout(layout, monkeypatch)
    f = _fns("torch")["nonlinear-products"]
    C = np.ones((D, D)) if layout is None else np.arange(1.0, D * D + 1).reshape(D, D)
    op = derivs.differential_operator(
        f, [(float(C[i, j]), (i, i, j, j)) for i in range(D) for j in range(D)],
        batch_axis=0)
    x = torch.as_tensor(_X)
    want = _dense("torch", f, _X, C4=C)
    op(x)
    made = []
    as_tensor = torch.as_tensor

    def counting(data, *args, **kwargs):
        if isinstance(data, np.ndarray):
            made.append(data.shape)
        return as_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", counting)
    got = op(x)
    monkeypatch.setattr(torch, "as_tensor", as_tensor)
    assert derivs.explain(op, x).layout == (layout or "stacked")
    assert made == []
    np.testing.assert_allclose(_np(got), want, rtol=1e-10, atol=1e-10)
