"""The LMS outbox as operators see it (CLI ``outbox list|retry`` and the console): rows listed
newest first a page at a time, failed rows put back in line.

A failed row is retried only while it is still its (learner, course) group's latest row: rows
are applied in id order per group, so re-sending an older desire after a newer one was applied
would undo it (an enrollment revoked since would come back). Such rows are reported as
superseded and left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import SinkOutboxRow

OUTBOX_STATUSES = ("pending", "done", "failed")


@dataclass(frozen=True)
class OutboxFilter:
    """Which outbox rows an operator means: every field left None matches everything."""

    status: str | None = None
    customer_id: str | None = None
    ids: tuple[int, ...] | None = None


def _where(f: OutboxFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if f.status is not None:
        clauses.append(SinkOutboxRow.status == f.status)
    if f.customer_id is not None:
        clauses.append(SinkOutboxRow.customer_id == f.customer_id)
    if f.ids is not None:
        clauses.append(SinkOutboxRow.id.in_(list(f.ids)))
    return clauses


def list_outbox(
    factory: sessionmaker[Session], f: OutboxFilter, *, before_id: int | None = None, limit: int = 50
) -> list[SinkOutboxRow]:
    """Rows matching ``f``, newest first, ``limit`` at a time below ``before_id``."""
    stmt = select(SinkOutboxRow).where(*_where(f))
    if before_id is not None:
        stmt = stmt.where(SinkOutboxRow.id < before_id)
    with factory() as session:
        return list(session.scalars(stmt.order_by(SinkOutboxRow.id.desc()).limit(limit)))


@dataclass(frozen=True)
class Retried:
    retried: list[int]  # put back to pending, due now
    superseded: list[int]  # a later row of the same learner and course exists: left failed
    customers: list[str]  # whose drains to enqueue


def retry_failed(factory: sessionmaker[Session], f: OutboxFilter, *, now_ms: int, limit: int = 10_000) -> Retried:
    """Put the failed rows matching ``f`` back in line (attempts from zero, due now), those that
    are still the latest of their group."""
    with factory() as session, session.begin():
        stmt = (
            select(SinkOutboxRow.id, SinkOutboxRow.customer_id, SinkOutboxRow.resource)
            .where(SinkOutboxRow.status == "failed", *_where(f))
            .order_by(SinkOutboxRow.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = session.execute(stmt).all()
        latest = _latest_ids(session, {(c, r) for _, c, r in rows})
        retried = [i for i, c, r in rows if latest.get((c, r)) == i]
        superseded = [i for i, c, r in rows if latest.get((c, r)) != i]
        if retried:
            session.execute(
                update(SinkOutboxRow)
                .where(SinkOutboxRow.id.in_(retried))
                .values(status="pending", attempts=0, next_attempt_ms=now_ms, leased_until_ms=None, done_ms=None)
            )
        customers = sorted({c for i, c, _ in rows if i in set(retried)})
    return Retried(retried, superseded, customers)


def _latest_ids(session: Session, groups: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    latest: dict[tuple[str, str], int] = {}
    for customer_id in sorted({c for c, _ in groups}):
        rows = session.execute(
            select(SinkOutboxRow.resource, func.max(SinkOutboxRow.id))
            .where(SinkOutboxRow.customer_id == customer_id)
            .group_by(SinkOutboxRow.resource)
        )
        for resource, top in rows:
            latest[(customer_id, str(resource))] = int(top)
    return latest


def outbox_rows_by_id(factory: sessionmaker[Session], ids: Sequence[int]) -> list[SinkOutboxRow]:
    with factory() as session:
        return list(session.scalars(select(SinkOutboxRow).where(SinkOutboxRow.id.in_(list(ids)))))
