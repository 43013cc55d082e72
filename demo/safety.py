"""The demo empties the database and the Redis database it runs on: only ones it may empty.

Its own (the SQLite file and embedded Redis under instance/demo) always; one named by
DATABASE_URL or REDIS_URL only when it holds nothing yet, or when the operator says --force.
"""

from __future__ import annotations

import redis
from sqlalchemy import Engine, MetaData, func, inspect, select

from adapters.embedded_redis import redis_url
from config.settings import Settings, mask_url
from persistence.database import make_engine

# Alembic's bookkeeping: a migrated database with no rows is still empty.
_BOOKKEEPING = {"alembic_version"}


class DemoRefused(Exception):
    """The demo would delete data it did not make; the message says what and how to proceed."""


def ensure_disposable(settings: Settings, *, force: bool) -> None:
    """Raise DemoRefused unless the database and the Redis database of ``settings`` are empty
    (or ``force``). Reads only: nothing is created, migrated or deleted here."""
    if force:
        return
    problems = []
    engine = make_engine(settings)
    try:
        tables = _tables_with_rows(engine)
    finally:
        engine.dispose()
    if tables:
        shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        problems.append(f"the database {engine.url.render_as_string(hide_password=True)} has rows in {shown}")
    client = redis.Redis.from_url(redis_url(settings), socket_connect_timeout=2)
    try:
        keys = client.dbsize()
    finally:
        client.close()
    if keys:
        problems.append(f"the Redis database {mask_url(settings.redis_url or '(embedded)')} holds {keys} keys")
    if problems:
        raise DemoRefused(
            "demo: refusing to run: "
            + "; ".join(problems)
            + ". The demo deletes every row and flushes Redis: point DATABASE_URL / REDIS_URL at empty "
            "ones, unset them to use the demo's own, or pass --force to delete that data."
        )


def _tables_with_rows(engine: Engine) -> list[str]:
    names = [n for n in inspect(engine).get_table_names() if n not in _BOOKKEEPING]
    if not names:
        return []
    metadata = MetaData()
    metadata.reflect(engine, only=names)
    with engine.connect() as conn:
        return [
            table.name
            for table in metadata.sorted_tables
            if conn.scalar(select(func.count()).select_from(select(1).select_from(table).limit(1).subquery()))
        ]
