"""Inbox rows as they are processed: claimed with a lease, marked with their fate, retried,
redriven when their message is lost, listed and replayed by operators (dead letters).

A row is ``received``, ``processing`` or ``retrying`` until it is final: ``processed``,
``degraded`` (the provider stayed unreachable; the customers are left dirty for the sweep),
``ignored``, ``malformed`` or ``dead`` (a dead letter, kept with its error; never retried on its
own, replayed by an operator).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Table, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import InboxEvent, InboxEventUser

FINAL_STATUSES = frozenset({"processed", "degraded", "ignored", "malformed", "dead"})
# Longer than a processing task may run (its hard time limit): a row whose lease lapsed has no
# worker left on it, so taking it again never processes it twice at once.
PROCESSING_LEASE_MS = 180_000


# Rows are read and written with Core statements on the tables: the ORM would also load an
# object per row and, for an UPDATE by WHERE, look for it among the session's loaded objects;
# that was most of what a row's bookkeeping cost a worker per event.
_INBOX = cast(Table, InboxEvent.__table__)
_INBOX_USERS = cast(Table, InboxEventUser.__table__)


@dataclass(frozen=True)
class ClaimedRow:
    """An inbox row taken for processing."""

    inbox_id: int
    body: bytes
    attempts: int  # this one included
    done_users: tuple[str, ...]  # users already read by an earlier attempt (resumable reads)
    received_ms: int


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a row: ``claimed`` (``row`` set), ``final`` (nothing left to
    do) or ``held`` (another worker's lease is still running)."""

    outcome: str
    row: ClaimedRow | None = None
    retry_in_ms: int | None = None  # held: when its lease lapses


def claim_row(
    factory: sessionmaker[Session],
    inbox_id: int,
    *,
    now_ms: int,
    holder: str,
    holder_gone: Callable[[str], bool],
    lease_ms: int = PROCESSING_LEASE_MS,
) -> Claim:
    """Take the row for processing (one attempt more, leased to ``holder`` until
    ``now_ms + lease_ms``). A lease still running is respected unless ``holder_gone`` says its
    holder is known to be dead (a killed worker on this host: its message comes back at once).

    Raises LookupError when no such row exists."""
    c = _INBOX.c
    with factory() as session, session.begin():
        stmt = select(c.status, c.attempts, c.lease_until_ms, c.lease_holder, c.progress, c.received_at, c.body)
        stmt = stmt.where(c.id == inbox_id)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = session.execute(stmt).first()
        if row is None:
            raise LookupError(f"inbox row {inbox_id} does not exist")
        if row.status in FINAL_STATUSES:
            return Claim("final")
        leased = row.lease_until_ms is not None and row.lease_until_ms > now_ms
        if row.status == "processing" and leased and not (row.lease_holder and holder_gone(row.lease_holder)):
            return Claim("held", retry_in_ms=(row.lease_until_ms or now_ms) - now_ms)
        attempts = row.attempts + 1
        session.execute(
            update(_INBOX)
            .where(c.id == inbox_id)
            .values(
                status="processing",
                attempts=attempts,
                lease_until_ms=now_ms + lease_ms,
                lease_holder=holder,
                next_attempt_ms=None,
            )
        )
        done = tuple(json.loads(row.progress)) if row.progress else ()
        received_ms = _epoch_ms(row.received_at) or now_ms
        return Claim("claimed", ClaimedRow(inbox_id, bytes(row.body), attempts, done, received_ms))


def _epoch_ms(at: datetime | None) -> int | None:
    """A stored timestamp as epoch ms (SQLite hands back naive datetimes, in UTC)."""
    return None if at is None else int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


def mark_row(factory: sessionmaker[Session], inbox_id: int, **values: object) -> None:
    """Record a row's fate (status, last_error, processed_at...); its lease ends."""
    with factory() as session, session.begin():
        session.execute(
            update(_INBOX).where(_INBOX.c.id == inbox_id).values(lease_until_ms=None, lease_holder=None, **values)
        )


def record_progress(factory: sessionmaker[Session], inbox_id: int, done_users: Sequence[str]) -> None:
    """The users of a row already read: a retry goes on from there instead of starting over."""
    with factory() as session, session.begin():
        session.execute(update(_INBOX).where(_INBOX.c.id == inbox_id).values(progress=json.dumps(list(done_users))))


def record_users(factory: sessionmaker[Session], inbox_id: int, app_user_ids: Sequence[str]) -> None:
    """The users a webhook names (once its body is parsed), for filters and learner histories."""
    names = sorted(set(app_user_ids))
    if not names:
        return
    with factory() as session, session.begin():
        # an earlier attempt (or the attempt before a replay) may have recorded them
        known = set(session.scalars(select(_INBOX_USERS.c.app_user_id).where(_INBOX_USERS.c.inbox_id == inbox_id)))
        missing = [{"inbox_id": inbox_id, "app_user_id": u} for u in names if u not in known]
        if missing:
            session.execute(insert(_INBOX_USERS), missing)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rows_to_redrive(factory: sessionmaker[Session], *, now_ms: int, older_than_s: int, limit: int = 1000) -> list[int]:
    """Rows that are not final and whose message may be lost: re-enqueue them.

    * ``received``: not taken within ``older_than_s`` of arriving (or of its last re-enqueue;
      the broker was down at intake, or Redis restarted empty);
    * ``retrying``: its retry was due ``older_than_s`` ago and has not started;
    * ``processing``: its lease lapsed (the worker was killed).
    Marks them re-enqueued now, so a backlog is re-sent at most once per ``older_than_s``.
    """
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    cutoff = now - timedelta(seconds=older_than_s)
    not_sent_since = or_(InboxEvent.enqueued_at.is_(None), InboxEvent.enqueued_at < cutoff)
    due = or_(
        and_(InboxEvent.status == "received", InboxEvent.received_at < cutoff),
        and_(InboxEvent.status == "retrying", InboxEvent.next_attempt_ms < now_ms - older_than_s * 1000),
        and_(InboxEvent.status == "processing", InboxEvent.lease_until_ms < now_ms),
    )
    with factory() as session, session.begin():
        ids = list(
            session.scalars(select(InboxEvent.id).where(due, not_sent_since).order_by(InboxEvent.id).limit(limit))
        )
        if ids:
            session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids)).values(enqueued_at=now))
    return ids


def inbox_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            status: int(n)
            for status, n in session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))
        }


def statuses(factory: sessionmaker[Session], ids: Sequence[int]) -> dict[int, str]:
    with factory() as session:
        return {
            int(row_id): str(status)
            for row_id, status in session.execute(
                select(InboxEvent.id, InboxEvent.status).where(InboxEvent.id.in_(list(ids)))
            )
        }


@dataclass(frozen=True)
class RowFilter:
    """Which inbox rows an operator means: every field left None matches everything."""

    status: str | None = None
    event_type: str | None = None
    app_user_id: str | None = None
    since_ms: int | None = None  # received at or after
    until_ms: int | None = None  # received before
    ids: tuple[int, ...] | None = None


def _where(f: RowFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if f.ids is not None:
        clauses.append(InboxEvent.id.in_(list(f.ids)))
    if f.status is not None:
        clauses.append(InboxEvent.status == f.status)
    if f.event_type is not None:
        clauses.append(InboxEvent.event_type == f.event_type)
    if f.app_user_id is not None:
        named = select(InboxEventUser.inbox_id).where(InboxEventUser.app_user_id == f.app_user_id)
        clauses.append(InboxEvent.id.in_(named))
    if f.since_ms is not None:
        clauses.append(InboxEvent.received_at >= datetime.fromtimestamp(f.since_ms / 1000, UTC))
    if f.until_ms is not None:
        clauses.append(InboxEvent.received_at < datetime.fromtimestamp(f.until_ms / 1000, UTC))
    return clauses


def list_rows(
    factory: sessionmaker[Session], f: RowFilter, *, before_id: int | None = None, limit: int = 50
) -> list[InboxEvent]:
    """Rows matching ``f``, newest first, ``limit`` at a time below ``before_id`` (keyset pages)."""
    stmt = select(InboxEvent).where(*_where(f))
    if before_id is not None:
        stmt = stmt.where(InboxEvent.id < before_id)
    with factory() as session:
        return list(session.scalars(stmt.order_by(InboxEvent.id.desc()).limit(limit)))


def get_row(factory: sessionmaker[Session], inbox_id: int) -> InboxEvent | None:
    with factory() as session:
        return session.get(InboxEvent, inbox_id)


def users_of(factory: sessionmaker[Session], inbox_id: int) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(InboxEventUser.app_user_id)
                .where(InboxEventUser.inbox_id == inbox_id)
                .order_by(InboxEventUser.app_user_id)
            )
        )


def reset_for_replay(factory: sessionmaker[Session], f: RowFilter, *, now_ms: int, limit: int = 10_000) -> list[int]:
    """Put dead letters matching ``f`` back to ``received`` (attempts from zero, one replay more,
    their last error kept until they are processed again): the ids to enqueue."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    with factory() as session, session.begin():
        stmt = select(InboxEvent.id).where(InboxEvent.status == "dead", *_where(f)).order_by(InboxEvent.id).limit(limit)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        ids = list(session.scalars(stmt))
        if ids:
            session.execute(
                update(InboxEvent)
                .where(InboxEvent.id.in_(ids))
                .values(
                    status="received",
                    attempts=0,
                    replays=InboxEvent.replays + 1,
                    lease_until_ms=None,
                    next_attempt_ms=None,
                    progress=None,
                    processed_at=None,
                    enqueued_at=now,
                )
            )
    return ids
