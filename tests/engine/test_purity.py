"""The pure engine imports only itself and the standard library, and reads no clock (design.md)."""

import ast
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def engine_modules() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_domain_modules_are_in_the_engine():
    names = {p.stem for p in engine_modules()}
    assert {"facts", "projection", "plan", "catalog", "revenuecat", "reconcile", "enrollment", "ports"} <= names


def test_engine_imports_only_itself_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"engine", "__future__"}
    offenders = {str(p.relative_to(ENGINE)): sorted(imported_roots(p) - allowed) for p in engine_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_reading_the_clock_is_left_to_the_edges():
    for p in engine_modules():
        source = p.read_text()
        assert "time.time(" not in source and "datetime.now(" not in source and "time.monotonic(" not in source, p
