"""Database engine, sessions and migrations (SQLite file by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from config.settings import PROJECT_ROOT, Settings


def make_engine(settings: Settings, **overrides: object) -> Engine:
    """An Engine for ``settings.database_url``; SQLite gets WAL and a busy timeout so that
    web, worker and beat processes can share the file."""
    url = settings.database_url
    # Error messages and logs never show statement parameters: they hold webhook bodies,
    # provider answers and ids (a failed INSERT would otherwise print a whole body).
    overrides.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **overrides)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take over
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # IMMEDIATE takes the write lock up front: no upgrade deadlocks between processes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options: dict[str, object] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    options.update(overrides)
    return create_engine(url, **options)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(settings: Settings):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return cfg


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply the Alembic migrations (the explicit ``migrate`` command, the demo and the tests)."""
    from alembic import command

    if settings.database_url.startswith("sqlite"):
        path = settings.database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)
