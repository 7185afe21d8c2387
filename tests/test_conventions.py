"""``argnums`` (with the ``argnum`` alias) and ``has_aux`` on every operator and
estimator, in both frameworks, against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs
from tests._frameworks import FRAMEWORKS, array, to_numpy

jax.config.update("jax_enable_x64", True)

X = np.array([0.5, -1.0, 2.0])
A = 1.5


def _f(fw):
    """``f(a, x) = a * (sum x^3 + x0 x1^2)``: Laplacian in x ``a (6 sum x + 2 x0)``,
    Hessian diagonal ``a (6 x + [0, 2 x0, 0])``, Bi-Laplacian 0."""
    s = jnp.sum if fw == "jax" else torch.sum
    return lambda a, x: a * (s(x ** 3) + x[0] * x[1] ** 2)


LAP = A * (6 * X.sum() + 2 * X[0])
DIAG = A * (6 * X + np.array([0.0, 2 * X[0], 0.0]))


def _key(fw):
    return jax.random.key(0) if fw == "jax" else torch.Generator().manual_seed(0)


def _makers(fw):
    """(name, make(f, **conventions), expected, leading arguments of the call)."""
    eye = array(fw, np.eye(3))
    return [
        ("laplacian", lambda f, **k: derivs.laplacian(f, **k), LAP, ()),
        ("hessian_diagonal", lambda f, **k: derivs.hessian_diagonal(f, **k), DIAG, ()),
        ("bilaplacian", lambda f, **k: derivs.bilaplacian(f, **k), 0.0, ()),
        ("diffusion_operator", lambda f, **k: derivs.diffusion_operator(f, eye, **k), LAP, ()),
        ("differential_operator", lambda f, **k: derivs.differential_operator(
            f, [(1.0, (i, i)) for i in range(3)], **k), LAP, ()),
        # x^3 and x0 x1^2 have a Hessian whose off-diagonal part is 2 x1 (entries
        # (0, 1) and (1, 0)): with +-1 directions the estimate is exact only
        # without it, so the estimators get f without the cross term
        ("hutchinson_laplacian", lambda f, **k: derivs.hutchinson_laplacian(
            _diagonal(f, fw), samples=4, **k), A * 6 * X.sum(), (_key(fw),)),
        ("hutchinson_diffusion", lambda f, **k: derivs.hutchinson_diffusion(
            _diagonal(f, fw), eye, samples=4, **k), A * 6 * X.sum(), (_key(fw),)),
        ("hutchinson_bilaplacian", lambda f, **k: derivs.hutchinson_bilaplacian(
            _diagonal(f, fw), samples=4, **k), 0.0, (_key(fw),)),
    ]


def _diagonal(f, fw):
    """f's user spelling kept (arguments, aux), its cross term removed."""

    def g(a, x):
        out = f(a, x)
        cross = a * x[0] * x[1] ** 2
        if isinstance(out, tuple):
            return out[0] - cross, out[1]
        return out - cross
    return g


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_argnums_and_its_alias_agree_with_the_closed_form(fw):
    f = _f(fw)
    a, x = array(fw, A), array(fw, X)
    for name, make, want, lead in _makers(fw):
        for conv in ({"argnums": 1}, {"argnum": 1}, {"argnums": 1, "argnum": 1}):
            got = make(f, **conv)(*lead, a, x)
            np.testing.assert_allclose(to_numpy(got), want, rtol=1e-10, atol=1e-10,
                                       err_msg=f"{name} {conv}")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_has_aux_returns_the_operator_and_fs_aux(fw):
    base = _f(fw)

    def f(a, x):
        return base(a, x), {"value": base(a, x), "tag": "aux"}

    a, x = array(fw, A), array(fw, X)
    for name, make, want, lead in _makers(fw):
        result, aux = make(f, argnums=1, has_aux=True)(*lead, a, x)
        np.testing.assert_allclose(to_numpy(result), want, rtol=1e-10, atol=1e-10,
                                   err_msg=name)
        assert aux["tag"] == "aux", name
        # f's aux at the point (the estimators' wrapper passes it on unchanged)
        np.testing.assert_allclose(to_numpy(aux["value"]), to_numpy(base(a, x)), rtol=1e-12,
                                   err_msg=name)


def test_has_aux_under_jit_with_a_batch_axis():
    f = _f("jax")
    XB = np.stack([X, 2 * X])

    def g(x):
        return jax.vmap(lambda z: f(A, z))(x), x * 2

    lap, aux = jax.jit(derivs.laplacian(g, batch_axis=0, has_aux=True))(jnp.asarray(XB))
    np.testing.assert_allclose(lap, [A * (6 * z.sum() + 2 * z[0]) for z in XB], rtol=1e-12)
    np.testing.assert_allclose(aux, 2 * XB)


def test_has_aux_with_an_nn_module_and_with_stderr():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    xb = torch.randn(4, 3, dtype=torch.float64)
    net = net.double()

    def g(z):
        return net(z).squeeze(-1), net[0].weight.sum()

    lap, aux = derivs.laplacian(g, has_aux=True, batch_axis=0)(xb)
    want = torch.stack([torch.func.hessian(lambda z: net(z).squeeze(-1))(z).trace() for z in xb])
    torch.testing.assert_close(lap, want)
    torch.testing.assert_close(aux, net[0].weight.sum())
    (mean, stderr), aux = derivs.hutchinson_laplacian(g, samples=8, has_aux=True,
                                                      with_stderr=True)(
        torch.Generator().manual_seed(0), xb[0])
    assert mean.shape == () and stderr.shape == () and aux.shape == ()


def test_explain_sees_through_has_aux():
    f = _f("jax")
    op = derivs.laplacian(lambda x: (f(A, x), 0), has_aux=True)
    assert derivs.explain(op, jnp.asarray(X)).strategy == \
        derivs.explain(derivs.laplacian(lambda x: f(A, x)), jnp.asarray(X)).strategy


def test_convention_errors_name_the_fix():
    f = _f("jax")
    with pytest.raises(TypeError, match="pass one"):
        derivs.laplacian(f, argnums=1, argnum=0)
    with pytest.raises(TypeError, match="pass one"):  # an explicit 0 is not the default
        derivs.laplacian(f, argnums=0, argnum=1)
    with pytest.raises(TypeError, match="derivs.laplacian: .*foo"):
        derivs.laplacian(f, foo=1)
    with pytest.raises(TypeError, match="one argument"):
        derivs.laplacian(f, argnums=(0, 1))
    with pytest.raises(TypeError, match="True or False"):
        derivs.hessian_diagonal(f, has_aux=1)
    with pytest.raises(TypeError, match=r"return \(output, aux\)"):
        derivs.laplacian(lambda x: f(A, x), has_aux=True)(jnp.asarray(X))
    with pytest.raises(TypeError, match=r"return \(output, aux\)"):
        derivs.hutchinson_laplacian(lambda x: (f(A, x),), has_aux=True)(
            jax.random.key(0), jnp.asarray(X))
    with pytest.raises(TypeError, match="callable"):
        derivs.bilaplacian(3, has_aux=True)

