"""The tree shows the architecture: imports run one way (web/ and tasks/, then services/, then
engine/, persistence/ and adapters/), nothing imports a layer above it, and no import is
deferred into a function to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "engine": {"engine"},
    "persistence": {"engine", "persistence", "config"},
    "adapters": {"engine", "adapters", "config"},
    "simulators": {"simulators"},
    "config": {"config"},
    "services": {"engine", "persistence", "adapters", "config", "services"},
    "tasks": {"engine", "persistence", "adapters", "config", "services", "tasks"},
    "web": {"engine", "persistence", "adapters", "config", "services", "tasks", "web"},
}
FIRST_PARTY = set(LAYERS) | {"demo", "bench", "tests", "migrations"}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(first-party package imported, whether the import sits inside a function)."""
    found = []
    tree = ast.parse(path.read_text())
    nested = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            if root in FIRST_PARTY:
                found.append((root, id(node) in nested))
    return found


def modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def test_every_layer_imports_only_the_layers_below_it():
    offenders = {
        str(path.relative_to(ROOT)): sorted({root for root, _ in imports(path)} - allowed)
        for layer, allowed in LAYERS.items()
        for path in modules(layer)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_first_party_import_is_deferred_into_a_function():
    deferred = {
        str(path.relative_to(ROOT)): sorted({root for root, inside in imports(path) if inside})
        for layer in LAYERS
        for path in modules(layer)
    }
    assert {k: v for k, v in deferred.items() if v} == {}
