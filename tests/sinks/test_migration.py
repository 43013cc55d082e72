"""Migration 0002 creates exactly the sink tables the models describe (both dialects)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from persistence.database import make_engine
from persistence.models import Base

SINK_TABLES = {"course_mappings", "lms_users", "sink_outbox"}


def _table_of(diff) -> str | None:
    entry = diff[0] if isinstance(diff, list) else diff
    for part in entry[1:]:
        name = getattr(part, "name", None) if not isinstance(part, str) else None
        table = getattr(part, "table", None)
        if table is not None and getattr(table, "name", None):
            return table.name
        if name in SINK_TABLES:
            return name
        if isinstance(part, str) and part in SINK_TABLES:
            return part
    return None


def test_sink_models_match_the_migrated_schema(base_settings):
    engine = make_engine(base_settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diffs = [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in SINK_TABLES]
    finally:
        engine.dispose()
    assert diffs == []
