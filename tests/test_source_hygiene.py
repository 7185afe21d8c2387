"""No module of derivs binds a top-level function or class name twice (pyflakes'
F811): a second ``def one_hot`` in a backend module once replaced the engine's
``one_hot`` seed helper with an unrelated function of the same name, and every
nested-forward partial in that framework failed."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "derivs"


def _top_level_bindings(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, node.lineno, True
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.lineno, False
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.value is not None:
            yield node.target.id, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield alias.asname or alias.name, node.lineno, False


def test_no_top_level_function_or_class_is_bound_twice():
    clashes = []
    for path in sorted(SRC.rglob("*.py")):
        seen: dict[str, tuple[int, bool]] = {}
        for name, line, is_def in _top_level_bindings(ast.parse(path.read_text())):
            if name in seen and (is_def or seen[name][1]):
                clashes.append(f"{path.relative_to(SRC)}:{line}: {name} (first bound on line "
                               f"{seen[name][0]})")
            seen[name] = (line, is_def)
    assert not clashes, "\n".join(clashes)
