"""Bad input gets a clear error that names the argument and the fix, in both frameworks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import derivs

from ._frameworks import FRAMEWORKS, array

f = lambda x: (x**2).sum()


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_index_out_of_range_names_shape_and_range(fw):
    with pytest.raises(IndexError, match=r"index 6 is out of range for argument 0 of shape "
                                         r"\(2, 3\) \(6 elements\).*0 to 5"):
        derivs.partial(f, (0, 6))(array(fw, np.ones((2, 3))))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_zero_d_argument_has_single_index(fw):
    with pytest.raises(IndexError, match="single index 0"):
        derivs.partial(f, 1)(array(fw, 1.0))


def test_negative_index():
    with pytest.raises(IndexError, match="negative"):
        derivs.partial(f, (0, -1))


def test_empty_multi_index_for_partial_points_to_partials():
    with pytest.raises(ValueError, match="order 0.*value_and_partials"):
        derivs.partial(f, ())


@pytest.mark.parametrize("bad", [1.5, "0", (0, 1.0), True, None])
def test_non_integer_index(bad):
    with pytest.raises(TypeError, match="must be an int"):
        derivs.partial(f, bad)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_argnums_out_of_range(fw):
    with pytest.raises(ValueError, match=r"argnums=2 selects argument 2.*called with 1"):
        derivs.partial(f, 0, argnums=2)(array(fw, np.ones(3)))


@pytest.mark.parametrize("bad,err", [(-1, ValueError), ((), ValueError), ((0, 0), ValueError),
                                     ("0", TypeError), ((0, 1.0), TypeError)])
def test_bad_argnums(bad, err):
    with pytest.raises(err, match="argnums"):
        derivs.partial(f, 0, argnums=bad)


def test_pairs_required_with_tuple_argnums():
    with pytest.raises(TypeError, match=r"\(argnum, flat_index\) pairs"):
        derivs.partial(f, (0, 1), argnums=(0, 1))
    with pytest.raises(ValueError, match="not in argnums"):
        derivs.partial(f, ((2, 0),), argnums=(0, 1))


@pytest.mark.parametrize("fw,x,kind", [
    ("jax", jnp.arange(3), "integer"), ("jax", jnp.ones(3, bool), "boolean"),
    ("torch", torch.arange(3), "integer"), ("torch", torch.ones(3, dtype=torch.bool), "boolean"),
])
def test_integer_and_bool_inputs(fw, x, kind):
    with pytest.raises(TypeError, match=f"argument 0 has {kind} dtype.*floating-point"):
        derivs.partial(f, 0)(x)


@pytest.mark.parametrize("x", [jnp.ones(3, jnp.complex64), torch.ones(3, dtype=torch.complex64)])
def test_complex_inputs_say_what_is_supported(x):
    with pytest.raises(TypeError, match="complex dtype.*real and imaginary parts"):
        derivs.partial(f, 0)(x)


def test_non_callable_f():
    with pytest.raises(TypeError, match="f must be callable"):
        derivs.partial(jnp.ones(3), 0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_non_floating_output(fw):
    g = (lambda x: jnp.argmax(x)) if fw == "jax" else (lambda x: torch.argmax(x))
    with pytest.raises(TypeError, match="floating-point outputs.*has_aux"):
        derivs.partial(g, 0)(array(fw, np.ones(3)))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_has_aux_requires_pair(fw):
    with pytest.raises(TypeError, match="has_aux=True requires f to return a pair"):
        derivs.partial(f, 0, has_aux=True)(array(fw, np.ones(3)))


def test_no_framework_array_and_mixed_frameworks():
    with pytest.raises(TypeError, match="cannot tell the framework.*jnp.asarray"):
        derivs.partial(f, 0)(np.ones(3))
    with pytest.raises(TypeError, match="mix jax.Array and torch.Tensor"):
        derivs.partial(lambda a, b: a.sum(), 0)(jnp.ones(3), torch.ones(3))


def test_ambiguous_and_empty_request_lists():
    with pytest.raises(TypeError, match="ambiguous"):
        derivs.partials(f, (0, 2))
    with pytest.raises(ValueError, match="requests is empty"):
        derivs.partials(f, [])
    with pytest.raises(TypeError, match="list of indices"):
        derivs.partials(f, 0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_axis_must_exist(fw):
    with pytest.raises(ValueError, match="batch_axis=1 does not exist in argument 0"):
        derivs.partial(f, 0, batch_axis=1)(array(fw, np.ones(3)))
    with pytest.raises(TypeError, match="batch_axis must be None or an int"):
        derivs.partial(f, 0, batch_axis=1.0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_axis_index_counts_within_a_sample(fw):
    with pytest.raises(IndexError, match=r"per-sample shape \(3,\)"):
        derivs.partial(f, 3, batch_axis=0)(array(fw, np.ones((4, 3))))


def test_container_argument():
    with pytest.raises(TypeError, match="argument 0 is a dict"):
        derivs.partial(lambda d: d["a"], 0)({"a": jnp.ones(2)})


def test_import_needs_no_framework():
    """`import derivs` imports neither JAX nor PyTorch: a JAX-only or a PyTorch-only
    install works, and frameworks load only when their arrays are passed."""
    import subprocess
    import sys

    code = "import sys, derivs; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
