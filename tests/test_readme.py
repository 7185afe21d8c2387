"""Every ``python`` block of the README runs as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has python blocks"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "strategy" in printed  # the explain calls printed their plans
    assert [round(float(v)) for v in namespace["jax"].vmap(namespace["derivs"].partial(
        namespace["jnp"].prod, (0, 2, 4)))(namespace["x"])] == [8, 63, 168, 323, 528, 783]


def test_readme_cites_no_file_outside_the_repository():
    text = README.read_text()
    assert "../" not in text and "PROBLEMS.md" not in text
    for path in re.findall(r"`((?:docs|src|tests|benchmarks|examples)/[\w/.\-]+)`", text):
        if path.startswith("benchmarks/out"):
            continue  # where benchmark runs write (ignored by git)
        assert (README.parent / path).exists(), path


def test_every_derivs_name_the_readme_calls_exists():
    """The README (its "coming from" table included) names only what derivs has."""
    import derivs

    text = README.read_text()
    names = set(re.findall(r"derivs\.([a-z_]\w*)\(", text))
    assert {"laplacian", "value_and_jacobian", "hutchinson_laplacian"} <= names
    missing = sorted(n for n in names if not hasattr(derivs, n))
    assert not missing, missing
