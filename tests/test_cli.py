"""The command line, the demo with one framework missing, the install hints, and
the public namespace (release-quality checks, independent of the math)."""

from __future__ import annotations

import importlib.util
import types

import pytest

import derivs
from derivs import __main__ as cli
from derivs import _demo


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        cli._main(["--help"])
    assert e.value.code == 0 and "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # help of the command, without running it
        cli._main(["demo", "--help"])
    assert e.value.code == 0 and "usage: python -m derivs demo" in capsys.readouterr().out
    assert cli._main([]) == 2


@pytest.mark.parametrize("missing", ["jax", "torch"])
def test_demo_runs_the_installed_framework(missing, monkeypatch, capsys):
    """The demo says what it skipped and checks the rest (timings stubbed: this
    test is about which parts run)."""
    monkeypatch.setattr(_demo, "_installed",
                        lambda: {"jax": missing != "jax", "torch": missing != "torch"})
    monkeypatch.setattr(_demo, "interleaved_medians", lambda fns, **k: dict.fromkeys(fns, 1.0))
    monkeypatch.setattr(_demo, "_problem1",
                        lambda steps, repeats: ([], {"derivs": 0.0}, [], True))
    assert _demo.main([]) == 0
    out = capsys.readouterr().out
    assert f"pip install 'derivs[{missing}]'" in out and "values match: True" in out
    present = "JAX: jit" if missing == "torch" else "PyTorch: derivs.partial"
    assert present in out


def test_missing_framework_error_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(TypeError, match=r"pip install 'derivs\[torch\]'"):
        derivs.partial(lambda x: x ** 2, 0)(3.0)


def test_public_namespace_is_all():
    public = {n for n, v in vars(derivs).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(derivs.__all__)
    assert all(callable(getattr(derivs, n)) for n in derivs.__all__)


def test_mixed_frameworks_get_a_derivs_error():
    import jax.numpy as jnp
    import torch

    def torch_f(x):
        return torch.tanh(x).sum()

    def jax_f(x):
        return jnp.tanh(x).sum()

    with pytest.raises(TypeError, match=r"written with torch .* jax.Array .* torch.as_tensor"):
        derivs.partial(torch_f, 0)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"written with jax .* torch.Tensor .* jnp.asarray"):
        derivs.laplacian(jax_f)(torch.ones(3))
    with pytest.raises(TypeError, match=r"written with torch"):
        derivs.bilaplacian(torch_f)(jnp.ones(3))


def test_sparse_mixed_frameworks_get_a_derivs_error():
    import jax.numpy as jnp
    import torch

    def torch_residual(x):
        return torch.sin(x[1:]) - x[:-1]

    with pytest.raises(TypeError, match=r"written with torch .* jax.Array"):
        derivs.jacobian(torch_residual, sparse=True)(jnp.ones(5))


def test_out_of_memory_names_the_knobs():
    import jax.numpy as jnp

    def f(x):
        raise MemoryError("simulated: RESOURCE_EXHAUSTED while allocating")

    with pytest.raises(MemoryError, match=r"derivs.laplacian: ran out of memory.*batch_size"):
        derivs.laplacian(f)(jnp.ones(3))
    with pytest.raises(MemoryError, match=r"derivs.partial: ran out of memory"):
        derivs.partial(f, 0)(jnp.ones(3))


def test_version_is_written_once(capsys):
    """``--version``, the installed metadata, CITATION.cff and the changelog's newest
    section all give ``derivs.__version__`` (written in ``_version.py`` only)."""
    import importlib.metadata
    import pathlib
    import re

    with pytest.raises(SystemExit) as e:
        cli._main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"derivs {derivs.__version__}"
    assert importlib.metadata.version("derivs") == derivs.__version__
    root = pathlib.Path(__file__).resolve().parents[1]
    cff = (root / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", cff, re.M).group(1) == derivs.__version__
    newest = re.search(r"^## \[([^\]]+)\]", (root / "CHANGELOG.md").read_text(), re.M)
    assert newest.group(1) == derivs.__version__
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "derivs._version.__version__" }' in pyproject
