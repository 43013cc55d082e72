"""The inbox at intake: webhooks stored durably before they are answered, one at a time or many
with one statement. Processing state lives in persistence/inbox_rows.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from engine.revenuecat import PROVIDER, RECONCILE_EVENT_TYPES
from persistence.models import InboxEvent


@dataclass(frozen=True)
class Stored:
    """The outcome of storing one webhook: its row, and whether it should be enqueued now."""

    inbox_id: int | None
    duplicate: bool
    enqueue: bool
    status: str


def _status_for(event_type: str | None, malformed_reason: str | None) -> str:
    if malformed_reason is not None:
        return "malformed"
    if event_type in RECONCILE_EVENT_TYPES:
        return "received"
    return "ignored"  # unknown or informational type: kept, answered 200, not processed


def _row(body: bytes, event_id: str | None, event_type: str | None, status: str, error: str | None = None) -> dict:
    """A new inbox row's values (attempts start at the column's default, 0)."""
    row = {"provider": PROVIDER, "event_id": event_id, "event_type": event_type, "status": status, "body": body}
    if error is not None:
        row["last_error"] = error
    return row


# PostgreSQL: the INSERT ... ON CONFLICT DO NOTHING RETURNING as SQL text, built once per row
# count and columns, run with exec_driver_sql. The ON CONFLICT construct has no cache key, so
# SQLAlchemy would compile it on every call (the intake's largest CPU cost before this).
_pg_sql: dict[tuple[int, tuple[str, ...]], str] = {}


def _pg_statement(rows: int, columns: tuple[str, ...]) -> str:
    sql = _pg_sql.get((rows, columns))
    if sql is None:
        values = ", ".join([f"({', '.join(['%s'] * len(columns))})"] * rows)
        sql = _pg_sql[(rows, columns)] = (
            f"INSERT INTO inbox_events ({', '.join(columns)}) VALUES {values}"
            " ON CONFLICT DO NOTHING RETURNING id, event_id"
        )
    return sql


def _insert_pg(conn: Connection, rows: Sequence[dict]) -> dict[str | None, int]:
    """Insert the rows (all with the same columns); the ids of those that were new, by event id."""
    columns = tuple(rows[0])
    params = tuple(row[c] for row in rows for c in columns)
    return {event_id: row_id for row_id, event_id in conn.exec_driver_sql(_pg_statement(len(rows), columns), params)}


def _insert_sqlite(conn: Connection, rows: Sequence[dict]) -> dict[str | None, int]:
    new: dict[str | None, int] = {}
    for row in rows:
        stmt = sqlite.insert(InboxEvent).values(**row).on_conflict_do_nothing().returning(InboxEvent.id)
        row_id = conn.execute(stmt).scalar_one_or_none()
        if row_id is not None:
            new[row["event_id"]] = row_id
    return new


def _insert(engine: Engine, rows: Sequence[dict]) -> dict[str | None, int]:
    """Insert the rows in one transaction and commit (on the intake's AUTOCOMMIT engine, the one
    statement commits by itself). A pooled connection found dead (the server restarted; the
    intake's engine does not ping on checkout) is tried again once on a fresh one: SQLAlchemy
    has discarded the pool's older connections, and the statement is idempotent."""
    insert = _insert_pg if engine.dialect.name == "postgresql" else _insert_sqlite
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                new = insert(conn, rows)
                conn.commit()
            return new
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def store_webhook(
    engine: Engine, body: bytes, event_id: str | None, event_type: str | None, *, malformed_reason: str | None = None
) -> Stored:
    """Insert the raw webhook and commit before anything else (a duplicate inserts nothing).
    Raises SQLAlchemy's error when it cannot be stored."""
    status = _status_for(event_type, malformed_reason)
    new = _insert(engine, [_row(body, event_id, event_type, status, malformed_reason)])
    if not new:
        return Stored(None, True, False, "duplicate")
    return Stored(next(iter(new.values())), False, status == "received", status)


def store_webhooks(engine: Engine, webhooks: Sequence[tuple[bytes, str, str]]) -> list[Stored]:
    """Store well-formed webhooks (body, event id, event type) with one statement and one commit,
    answering for each what ``store_webhook`` would have answered for it alone (the first of
    two with one event id is stored, the other is its duplicate). All or nothing."""
    first_index: dict[str, int] = {}
    for index, (_body, event_id, _type) in enumerate(webhooks):
        first_index.setdefault(event_id, index)
    # in event id order: two processes' batches that share ids take their locks in one order
    unique = sorted((webhooks[i] for i in first_index.values()), key=lambda w: w[1])
    new = _insert(engine, [_row(body, event_id, kind, _status_for(kind, None)) for body, event_id, kind in unique])
    answers = []
    for index, (_body, event_id, event_type) in enumerate(webhooks):
        row_id = new.get(event_id) if first_index[event_id] == index else None
        if row_id is None:
            answers.append(Stored(None, True, False, "duplicate"))
        else:
            status = _status_for(event_type, None)
            answers.append(Stored(row_id, False, status == "received", status))
    return answers
