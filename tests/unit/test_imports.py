"""The package's import graph points one way: each package imports only from itself and the packages
below it in the pipeline, and no module imports another that (directly or not) imports it back.

Read from the source with ast, lazy (function-level) imports included: an import inside a function is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "runner"
# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = ["errors", "registry", "config", "data", "spec", "model", "run", "init", "prepare", "training", "sweep",
          "api", "cli evaluate inspect report __main__ __init__"]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer.split()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The runner modules `path` imports (a `from runner.pkg import name` counts runner.pkg.name when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "runner"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runner" and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK["__init__" if len(parts) == 1 else parts[1]]


def test_every_module_sits_in_a_layer():
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in RANK for m in MODULES), sorted(m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] not in RANK)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_pipeline(module):
    upward = sorted(target for target in GRAPH[module] if target in MODULES and _layer(target) > _layer(module))
    assert not upward, f"{module} ({LAYERS[_layer(module)]}) imports from a later step: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module] & MODULES.keys()):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The graph is read, not assumed: a planted upward import is found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from runner.training.loop import run_training\n")
    assert "runner.training.loop" in _imports(planted)
