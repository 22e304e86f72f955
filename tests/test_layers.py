"""The package tree is its architecture: every import points down a layer, and no module
imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import graftune

PACKAGE = Path(graftune.__file__).parent

# Lower numbers sit lower; a module may import its own layer or a lower one.
LAYERS = {
    "core": 0,
    "config": 1,
    "models": 1,
    "data": 1,
    "training": 2,
    "population": 3,
    "tracking": 4,
    "commands": 5,
    "run": 6,
    "tune": 6,
    "reproduce": 6,
    "soup": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graftune_imports(path: Path) -> set[str]:
    """graftune modules that ``path`` imports, lazily inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("graftune.")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graftune")
        ):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (
                    (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                )
                found.add(candidate if is_module else node.module)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    assert len(parts) >= 2, module
    return LAYERS[parts[1]]


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): graftune_imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in import_graph() if m != "graftune"} <= set(LAYERS)


def test_imports_point_down():
    upward = [
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        if src != "graftune"
        for dst in targets
        if dst != "graftune" and layer(dst) > layer(src)
    ]
    assert upward == []


def test_core_is_pure_torch():
    for path in (PACKAGE / "core").rglob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import mlflow" not in text, path
        assert all(m.startswith("graftune.core") for m in graftune_imports(path)), path


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ importing its own children is how packages export; drop those edges.
    edges = {s: {d for d in ts if not d.startswith(s + ".")} for s, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in edges:
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The walk above must be able to fail: a fake package with both faults."""
    pkg = tmp_path / "graftune"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from graftune.core import b\nimport graftune.tracking.x\n")
    (pkg / "core" / "b.py").write_text("from graftune.core import a\n")
    (pkg / "tracking").mkdir()
    (pkg / "tracking" / "__init__.py").write_text("")
    (pkg / "tracking" / "x.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    import pytest

    with pytest.raises(AssertionError):
        test_imports_point_down()
    with pytest.raises(AssertionError):
        test_no_import_cycles()
