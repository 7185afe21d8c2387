"""derivs.explain reports the plan that derivs executes."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
import torch

import derivs


def test_explain_request_form_reports_strategy_passes_cost():
    e = derivs.explain(jnp.prod, [(0,), (0, 2), (0, 2, 4), (1, 1)], jnp.ones(5),
                       strategy="nested-forward")
    assert e.strategy == "nested-forward" and e.backend == "jax"
    assert [p.directions for p in e.passes] == [((0, 0), (0, 2), (0, 4)), ((0, 1), (0, 1))]
    assert e.estimated_cost == 27 + 9
    text = str(e)
    assert "pass 0: 3 level(s) [x0, x2, x4]" in text and "serves (0,), (0, 2), (0, 2, 4)" in text
    assert "arg0: (5,)" in text


def test_explain_transformed_function_and_torch_backend():
    fn = derivs.partials(lambda a, b: (a * b).sum(), [((0, 1), (1, 1))], argnums=(0, 1))
    e = derivs.explain(fn, torch.ones(3), torch.ones(3))
    assert e.backend == "torch" and len(e.passes) == 1
    assert "arg0[1], arg1[1]" in str(e)


def test_explain_without_arguments_and_range_check():
    e = derivs.explain(jnp.sin, (0, 0))
    assert e.backend is None and e.estimated_cost == 9
    try:
        derivs.explain(jnp.sin, (0, 9), jnp.ones(3))
    except IndexError as err:
        assert "out of range" in str(err)
    else:
        raise AssertionError("explain did not check the index range")


def test_explain_jet_plan_is_one_pass_sharing_lower_coefficients():
    """The jet engines compute every request in one lazy pass: the union of the
    requests' lower sets, each coefficient once."""
    e = derivs.explain(jnp.prod, [(0,), (0, 2), (0, 2, 4), (1, 1)], jnp.ones(5))
    assert e.strategy == "traced-jet" and len(e.passes) == 1
    # keys over (x0, x1, x2, x4): lower set of (1,0,1,1) has 8 keys with 27 Leibniz
    # terms; (0,2,0,0) adds (0,1,0,0) and (0,2,0,0): 2 + 3 terms
    assert e.estimated_cost == 27 + 5


def test_every_transform_explains_itself_through_one_hook():
    """derivs.explain calls the object's own ``__derivs_explain__``; every report
    shares one base (``_report.Report``) whose str and repr are the report."""
    import jax.numpy as jnp

    import derivs
    from derivs import _report

    u = lambda z: jnp.sin(z).sum()  # noqa: E731
    x = jnp.linspace(0.1, 0.9, 6)
    made = [derivs.partial(u, (0, 1)), derivs.partials(u, [(0,), (1, 1)]),
            derivs.laplacian(u), derivs.hessian_diagonal(u), derivs.bilaplacian(u),
            derivs.differential_operator(u, [(1.0, (0, 0)), (0.5, (1, 1))]),
            derivs.jacobian(jnp.sin, sparse=True)]
    for op in made:
        report = derivs.explain(op, x)
        assert isinstance(report, _report.Report), op
        assert str(report) == repr(report) and str(report)
        assert type(op.explain(x)) is type(report)  # the public spelling, same hook
    plain = derivs.explain(u, (0, 1), x)  # a plain function: the request form
    assert isinstance(plain, derivs.Explanation) and plain.strategy


# Every public callable that returns a callable, with the arguments to make one and
# the example arguments to explain it (key first for the estimators).
def _makers(fw):
    import jax
    import jax.numpy as jnp
    import torch

    lib = jnp if fw == "jax" else torch
    u = lambda z: lib.sin(z).sum()  # noqa: E731
    v = lambda z: lib.sin(z) * z[0]  # noqa: E731
    x = jnp.linspace(0.1, 0.9, 6) if fw == "jax" else torch.linspace(0.1, 0.9, 6)
    key = jax.random.key(0) if fw == "jax" else 0
    eye = jnp.eye(6) if fw == "jax" else torch.eye(6)
    return {
        "partial": (lambda: __import__("derivs").partial(u, (0, 1)), (x,)),
        "partials": (lambda: __import__("derivs").partials(u, [(0,), (1, 1)]), (x,)),
        "value_and_partials": (lambda: __import__("derivs").value_and_partials(u, [(0,)]),
                               (x,)),
        "laplacian": (lambda: __import__("derivs").laplacian(u), (x,)),
        "hessian_diagonal": (lambda: __import__("derivs").hessian_diagonal(u), (x,)),
        "bilaplacian": (lambda: __import__("derivs").bilaplacian(u), (x,)),
        "differential_operator": (lambda: __import__("derivs").differential_operator(
            u, [(1.0, (0, 0)), (0.5, (1, 1))]), (x,)),
        "diffusion_operator": (lambda: __import__("derivs").diffusion_operator(u, eye), (x,)),
        "hutchinson_laplacian": (lambda: __import__("derivs").hutchinson_laplacian(
            u, samples=4), (key, x)),
        "hutchinson_bilaplacian": (lambda: __import__("derivs").hutchinson_bilaplacian(
            u, samples=4), (key, x)),
        "hutchinson_diffusion": (lambda: __import__("derivs").hutchinson_diffusion(
            u, eye, samples=4), (key, x)),
        "jacobian": (lambda: __import__("derivs").jacobian(v), (x,)),
        "jacobian sparse": (lambda: __import__("derivs").jacobian(v, sparse=True), (x,)),
        "jacobian argnums": (lambda: __import__("derivs").jacobian(
            lambda a, b: a * b, argnums=(0, 1), sparse=True), (x, x)),
        "hessian": (lambda: __import__("derivs").hessian(u), (x,)),
        "hessian sparse": (lambda: __import__("derivs").hessian(u, sparse=True), (x,)),
        "value_and_jacobian": (lambda: __import__("derivs").value_and_jacobian(
            v, sparse=True), (x,)),
        "value_and_hessian": (lambda: __import__("derivs").value_and_hessian(u), (x,)),
    }


TRANSFORMS = ("partial", "partials", "value_and_partials", "laplacian", "hessian_diagonal",
              "bilaplacian", "differential_operator", "diffusion_operator",
              "hutchinson_laplacian", "hutchinson_bilaplacian", "hutchinson_diffusion",
              "jacobian", "hessian", "value_and_jacobian", "value_and_hessian")


def test_every_public_transform_is_listed():
    """Iterating derivs.__all__: every public function that returns a callable is
    covered by the explain test below (a new one must be added there)."""
    import inspect

    import derivs

    functions = {n for n in derivs.__all__ if inspect.isfunction(getattr(derivs, n))}
    functions -= {"explain", "sparsity"}  # they return reports and patterns
    assert functions == set(TRANSFORMS)
    assert set(TRANSFORMS) <= {k.split()[0] for k in _makers("jax")}


@pytest.mark.parametrize("fw", ["jax", "torch"])
def test_explain_works_on_everything_derivs_returns(fw):
    from derivs import _report

    import derivs

    for name, (make, args) in _makers(fw).items():
        op = make()
        report = derivs.explain(op, *args)
        assert isinstance(report, _report.Report), name
        assert str(report) and getattr(report, "strategy", None), name
