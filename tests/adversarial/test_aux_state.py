"""Attacks on ``has_aux`` (review of the conventions): f without its aux must stay
f to the state guards, the batch-axis proof and the capture. Each test failed when
the aux wrapper was a closure in a derivs module (walked as library code)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import derivs
from tests._frameworks import FRAMEWORKS, array, to_numpy

X = np.array([0.5, -1.0, 2.0])

SCALE = 1.0


def _scaled(z):
    """Reads a module-level number: a change must reach the next call."""
    return SCALE * (z ** 3).sum(-1), z.sum()


def test_has_aux_sees_a_global_that_changes_between_calls(monkeypatch):
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    op = derivs.laplacian(_scaled, batch_axis=0, has_aux=True)
    for scale in (1.0, 3.0):
        monkeypatch.setattr(sys.modules[__name__], "SCALE", scale)
        lap, aux = op(x)
        torch.testing.assert_close(lap, scale * 6 * x.sum(-1))
        torch.testing.assert_close(aux, x.sum())


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_has_aux_reproves_the_batch_axis_when_f_changes(fw):
    """f starts mixing the samples after the first call: the cached proof that the
    samples are independent must not be reused (it was, behind the aux wrapper)."""
    state = {"mix": False}
    mean = (lambda h: h.mean(0, keepdims=True)) if fw == "jax" else \
        (lambda h: h.mean(0, keepdim=True))

    def f(z):
        h = z ** 3
        if state["mix"]:
            h = h - mean(h)
        return h.sum(-1), 0

    x = array(fw, np.stack([X, 2 * X]))
    op = derivs.laplacian(f, batch_axis=0, has_aux=True)
    np.testing.assert_allclose(to_numpy(op(x)[0]), 6 * to_numpy(x).sum(-1), rtol=1e-12)
    state["mix"] = True
    with pytest.raises(ValueError, match="batch_axis=0 is wrong"):
        op(x)


def test_has_aux_keeps_a_module_on_the_traced_path_and_converts_numbers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).double()
    op = derivs.laplacian(lambda z: (net(z).squeeze(-1), 1), batch_axis=0, has_aux=True)
    xb = torch.randn(4, 3, dtype=torch.float64)
    op(xb)
    assert "nested forward" not in str(derivs.explain(op, xb))
    # a Python number at argnums is converted for f's aux call as for the operator
    w = torch.tensor(2.0, dtype=torch.float64)
    lap, aux = derivs.laplacian(lambda x, w: (torch.sin(x) * x * w, torch.cos(x)),
                                has_aux=True)(0.5, w)
    torch.testing.assert_close(lap, 2 * torch.tensor(2 * np.cos(0.5) - 0.5 * np.sin(0.5),
                                                     dtype=lap.dtype))
    torch.testing.assert_close(aux, torch.cos(torch.tensor(0.5, dtype=aux.dtype)))
