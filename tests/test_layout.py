"""The package's module graph: no import circles (issue 13).

Every ``import`` of a derivs module counts, module-level or inside a function (a
function-local import only hides a circle from Python's loader; the layers still
depend on each other both ways). Package ``__init__`` re-exports are edges too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in (SRC / "derivs").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges[name].add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names)
    return {m: {t for t in e if t in modules and t != m} for m, e in edges.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_circles():
    """The check can fail: a two-module and a three-module circle are found."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(edges)) == [["a", "b"], ["c", "d", "e"]]
    graph = _graph()
    assert "derivs._api" in graph["derivs"]  # the graph sees the package's re-exports


_ENGINES = ("derivs.backends.jax_engine", "derivs.backends.torch_engine")


def _private_engine_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports of an engine's private modules from outside that engine."""
    return sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                  for engine in _ENGINES
                  if t.startswith(engine + "._") and not (m == engine or
                                                          m.startswith(engine + ".")))


def test_engines_are_used_through_their_package():
    """Each engine's ``__init__`` is its written interface (the capture helpers the
    sparse side shares, the family program the operators run): nothing outside an
    engine imports its private modules, so its internals can move freely."""
    assert _private_engine_imports(_graph()) == []
    fixture = {"derivs._x": {"derivs.backends.torch_engine._capture"},
               "derivs.backends.torch_engine": {"derivs.backends.torch_engine._capture"}}
    assert _private_engine_imports(fixture) == [
        "derivs._x -> derivs.backends.torch_engine._capture"]


# The framework layer: the adapters and engines (backends/) and each framework's
# sparse side; the CLI demo only asks which frameworks are installed.
_FRAMEWORK_LAYER = ("derivs/backends/", "derivs/_sparsity/_jax", "derivs/_sparsity/_torch",
                    "derivs/_demo.py")
_NAME_TEST = re.compile(r"""[=!]=\s*["'](jax|torch)["']|["'](jax|torch)["']\s*[=!]=|"""
                        r"""\bin\s*[(\[{]\s*["'](jax|torch)["']""")


def test_no_framework_name_tests_outside_the_framework_layer():
    """Partials, operators, estimators and sparse transforms ask the adapter
    (``backends/_protocol.py``), never ``backend.name == "jax"``."""
    found = []
    for path in (SRC / "derivs").rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(_FRAMEWORK_LAYER):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _NAME_TEST.search(line.split("#")[0]):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []
    assert _NAME_TEST.search('if backend.name == "jax":')  # the pattern can match
    assert _NAME_TEST.search("name in ('torch', 'jax')")


def test_the_public_sparsity_function_shadows_no_package():
    import importlib

    import derivs

    coloring = importlib.import_module("derivs._sparsity._coloring")
    assert callable(derivs.sparsity) and coloring.Coloring is derivs.Coloring


def _rule_tables(path: Path) -> list[str]:
    """Module-level dicts and sets whose name says they hold rules."""
    names = []
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Name) and "RULES" in t.id.upper() and isinstance(
                    node.value, (ast.Dict, ast.Set, ast.Call)):
                names.append(t.id)
    return names


def test_each_engine_keeps_its_rules_in_one_registry():
    """A rule for an op is found in the engine's ``_registry.py`` and nowhere else."""
    for engine in ("jax_engine", "torch_engine"):
        tables = {p.name: _rule_tables(p)
                  for p in (SRC / "derivs" / "backends" / engine).glob("*.py")}
        assert tables.pop("_registry.py"), engine
        assert not any(tables.values()), (engine, tables)


def test_the_rule_table_finder_finds_tables(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("_SEQUENCE_RULES = {1: 2}\nrules: dict = {}\nOTHER = {}\n")
    assert _rule_tables(p) == ["_SEQUENCE_RULES", "rules"]
