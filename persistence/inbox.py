"""The inbox table: webhooks stored durably at intake (single and batched inserts on the hot
path), rows claimed and marked as they are processed, and the redrive's selection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from engine.revenuecat import PROVIDER, RECONCILE_EVENT_TYPES
from persistence.models import InboxEvent

_inbox = InboxEvent.__table__


@dataclass(frozen=True)
class Stored:
    """The outcome of storing one webhook: its row, and whether it should be enqueued now."""

    inbox_id: int | None
    duplicate: bool
    enqueue: bool
    status: str


_STORE_COLUMNS = ("provider", "event_id", "event_type", "status", "attempts", "last_error", "body")
_store_sql: dict[tuple[str, str, str], str] = {}


def _store_statement(engine: Engine) -> str:
    """The INSERT … ON CONFLICT DO NOTHING RETURNING id of store_webhook, compiled once per
    dialect. The ON CONFLICT construct has no cache key, so SQLAlchemy would otherwise compile
    it again on every call (most of the intake's CPU time before this)."""
    dialect = engine.dialect
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    sql = _store_sql.get(key)
    if sql is None:
        stmt = postgresql.insert(_inbox).on_conflict_do_nothing().returning(_inbox.c.id)
        sql = _store_sql[key] = stmt.compile(dialect=dialect, column_keys=list(_STORE_COLUMNS)).string
    return sql


def _on_raw_connection(
    engine: Engine, sql: str, values: dict[str, object] | list[object], fetch: Callable[[object], object]
) -> object:
    """Run one statement on a pooled DBAPI connection and return ``fetch(cursor)``. The DBAPI
    directly, not a Core Connection, whose bookkeeping cost as much CPU as the statement
    itself; its errors are wrapped as SQLAlchemy's would be (DBAPIError, a dead connection
    invalidated and flagged), and a connection that is not in autocommit mode (an engine other
    than the intake's) is committed here."""
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()
    except dbapi_error as exc:
        raise DBAPIError.instance(sql, values, exc, dbapi_error, dialect=dialect) from exc
    cursor = None
    try:
        cursor = raw.cursor()
        cursor.execute(sql, values)
        result = fetch(cursor)
        if not getattr(raw.driver_connection, "autocommit", False):
            raw.commit()
        return result
    except dbapi_error as exc:
        disconnect = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
        if disconnect:  # as a Core Connection does: this one and all older ones are discarded
            engine.pool._invalidate(raw, exc)
        raise DBAPIError.instance(
            sql, values, exc, dbapi_error, connection_invalidated=disconnect, dialect=dialect
        ) from exc
    finally:
        if cursor is not None:
            with contextlib.suppress(dbapi_error):
                cursor.close()
        raw.close()  # back to the pool (rolled back there if a transaction is still open)


def _first_id(cursor) -> int | None:
    row = cursor.fetchone()
    return None if row is None else row[0]


def _retrying_once(
    engine: Engine, sql: str, values: dict[str, object] | list[object], fetch: Callable[[object], object]
) -> object:
    """A pooled connection found dead (the server restarted: the intake's engine does not ping
    on checkout) is retried once on a fresh one; the intake's statements are idempotent."""
    for attempt in (1, 2):
        try:
            return _on_raw_connection(engine, sql, values, fetch)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def _insert_sqlite(conn: Connection, values: dict[str, object]) -> int | None:
    """The new row's id, or None when (provider, event id) is already stored."""
    stmt = sqlite.insert(_inbox).values(**values).on_conflict_do_nothing().returning(_inbox.c.id)
    return conn.execute(stmt).scalar_one_or_none()


def _status_for(event_type: str | None, malformed_reason: str | None) -> str:
    if malformed_reason is not None:
        return "malformed"
    if event_type in RECONCILE_EVENT_TYPES:
        return "received"
    return "ignored"  # unknown or informational type: kept, answered 200, not processed


def store_webhook(
    engine: Engine, body: bytes, event_id: str | None, event_type: str | None, *, malformed_reason: str | None = None
) -> Stored:
    """Insert the raw webhook and commit before anything else (duplicates insert nothing).

    Not the ORM: this is the intake's hot path. On PostgreSQL the one precompiled INSERT …
    ON CONFLICT DO NOTHING RETURNING goes to the DBAPI connection; on the intake's engine
    (AUTOCOMMIT) that is a single round trip, and the row is committed (WAL flushed, per
    synchronous_commit) before the server answers it, so before this returns; on another
    engine it is committed explicitly. A pooled connection found dead (the server restarted:
    the intake's engine does not ping on checkout) is retried once on a fresh one; the
    statement is idempotent.
    """
    status = _status_for(event_type, malformed_reason)
    values = {
        "provider": PROVIDER,
        "event_id": event_id,
        "event_type": event_type,
        "status": status,
        "attempts": 0,
        "body": body,
        "last_error": malformed_reason,
    }
    if engine.dialect.name == "postgresql":
        inserted = _retrying_once(engine, _store_statement(engine), values, _first_id)
    else:
        with engine.begin() as conn:
            inserted = _insert_sqlite(conn, values)
    if inserted is None:
        return Stored(None, True, False, "duplicate")
    return Stored(inserted, False, status == "received", status)


# Many webhooks in one multi-row INSERT, its text built once per row count (psycopg prepares
# each after a few uses). Measured against arrays through unnest(): psycopg dumps a bytea[]
# in Python, and that cost more than the round trip saved. Rows named twice in one batch are
# left out before it is sent (the first is stored, the others are duplicates), so RETURNING
# maps back to the batch by event id.
_store_many_sql: dict[int, str] = {}


def _store_many_statement(rows: int) -> str:
    sql = _store_many_sql.get(rows)
    if sql is None:
        sql = _store_many_sql[rows] = (
            "INSERT INTO inbox_events (provider, event_id, event_type, status, attempts, body) VALUES "
            + ", ".join(["(%s, %s, %s, %s, 0, %s)"] * rows)
            + " ON CONFLICT DO NOTHING RETURNING id, event_id"
        )
    return sql


def store_webhooks(engine: Engine, webhooks: Sequence[tuple[bytes, str, str]]) -> list[Stored]:
    """Store well-formed webhooks (body, event id, event type) with one INSERT and one commit
    on PostgreSQL (the intake's group commit), answering for each what ``store_webhook`` would
    have answered for it alone. All or nothing: an error stores none of them."""
    first_index: dict[str, int] = {}
    for index, (_body, event_id, _type) in enumerate(webhooks):
        first_index.setdefault(event_id, index)
    # in event id order: two processes' batches that share ids take their locks in one order
    unique = sorted((webhooks[i] for i in first_index.values()), key=lambda w: w[1])
    statuses = [_status_for(event_type, None) for _body, _id, event_type in unique]
    inserted: dict[str, int] = {}
    if engine.dialect.name == "postgresql":
        params: list[object] = []
        for (body, event_id, event_type), status in zip(unique, statuses, strict=False):
            params += (PROVIDER, event_id, event_type, status, body)
        returned = _retrying_once(engine, _store_many_statement(len(unique)), params, lambda cursor: cursor.fetchall())
        inserted = {event_id: row_id for row_id, event_id in returned}
    else:  # one transaction too, a statement per row
        with engine.begin() as conn:
            for (body, event_id, event_type), status in zip(unique, statuses, strict=False):
                row_id = _insert_sqlite(
                    conn,
                    {
                        "provider": PROVIDER,
                        "event_id": event_id,
                        "event_type": event_type,
                        "status": status,
                        "attempts": 0,
                        "body": body,
                    },
                )
                if row_id is not None:
                    inserted[event_id] = row_id
    status_of = {event_id: status for (_body, event_id, _type), status in zip(unique, statuses, strict=False)}
    answers = []
    for index, (_body, event_id, _type) in enumerate(webhooks):
        row_id = inserted.get(event_id) if first_index[event_id] == index else None
        if row_id is None:
            answers.append(Stored(None, True, False, "duplicate"))
        else:
            status = status_of[event_id]
            answers.append(Stored(row_id, False, status == "received", status))
    return answers


FINAL_STATUSES = frozenset({"processed", "ignored", "malformed", "failed"})


@dataclass(frozen=True)
class ClaimedRow:
    """An inbox row taken for processing: its body and how many attempts it has had."""

    inbox_id: int
    body: bytes
    attempts: int
    received_ms: int | None = None  # when the intake stored it: bounds the event's own time


def _epoch_ms(at: datetime | None) -> int | None:
    """A stored timestamp as epoch ms (SQLite hands back naive datetimes, in UTC)."""
    return None if at is None else int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


def claim_row(factory: sessionmaker[Session], inbox_id: int) -> ClaimedRow | None:
    """Mark the row ``processing`` (one attempt more); None when it is final already.

    Raises LookupError when no such row exists."""
    with factory() as session, session.begin():
        row = session.get(InboxEvent, inbox_id)
        if row is None:
            raise LookupError(f"inbox row {inbox_id} does not exist")
        if row.status in FINAL_STATUSES:
            return None
        row.status, row.attempts = "processing", row.attempts + 1
        return ClaimedRow(inbox_id, row.body, row.attempts, _epoch_ms(row.received_at))


def mark_row(factory: sessionmaker[Session], inbox_id: int, **values: object) -> None:
    """Record a row's fate (status, last_error, processed_at...)."""
    with factory() as session, session.begin():
        session.execute(update(InboxEvent).where(InboxEvent.id == inbox_id).values(**values))


def utcnow() -> datetime:
    return datetime.now(UTC)


def rows_to_redrive(
    factory: sessionmaker[Session], *, older_than_s: int, stuck_processing_s: int, now: datetime, limit: int = 1000
) -> list[int]:
    """Inbox rows whose task was lost (broker down at intake, worker killed): re-enqueue them.

    Marks them re-enqueued now, so a backlog is re-sent at most once per ``older_than_s``.
    """
    cutoff = now - timedelta(seconds=older_than_s)
    stuck_cutoff = now - timedelta(seconds=stuck_processing_s)
    waiting_since = InboxEvent.enqueued_at
    with factory() as session, session.begin():
        ids = list(
            session.scalars(
                select(InboxEvent.id)
                .where(
                    or_(
                        and_(
                            InboxEvent.status == "received",
                            InboxEvent.received_at < cutoff,
                            or_(waiting_since.is_(None), waiting_since < cutoff),
                        ),
                        and_(
                            InboxEvent.status == "processing",
                            InboxEvent.received_at < stuck_cutoff,
                            or_(waiting_since.is_(None), waiting_since < stuck_cutoff),
                        ),
                    )
                )
                .order_by(InboxEvent.id)
                .limit(limit)
            )
        )
        if ids:
            session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids)).values(enqueued_at=now))
    return ids


def inbox_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    from sqlalchemy import func

    with factory() as session:
        return dict(session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status)).all())  # type: ignore[arg-type]


def statuses(factory: sessionmaker[Session], ids: Sequence[int]) -> dict[int, str]:
    with factory() as session:
        return dict(session.execute(select(InboxEvent.id, InboxEvent.status).where(InboxEvent.id.in_(list(ids)))).all())  # type: ignore[arg-type]
