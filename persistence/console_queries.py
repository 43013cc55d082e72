"""Read queries of the operator console and the metrics gauges. Each walks an index (migration
0005 adds the ones the console's filters need) and pages by key (``before_id``), never by
OFFSET, so a page costs the same with a million rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, literal_column, select
from sqlalchemy.orm import Session, sessionmaker

from engine.revenuecat import PROVIDER
from persistence.models import (
    AuditEntry,
    Grant,
    Identity,
    InboxEvent,
    InboxEventUser,
    LedgerTransaction,
    SinkOutboxRow,
    Subscriber,
    UnknownProduct,
)

NOT_FINAL = ("received", "processing", "retrying")
INBOX_STATUSES = ("received", "processing", "retrying", "processed", "degraded", "ignored", "malformed", "dead")
# Audit rows a webhook's processing wrote name it as "<TYPE>:<event id>".
EVENT_CAUSES = ("event", "degraded")


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes (stored in UTC)
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Backlog:
    rows: int
    oldest_ms: int | None  # None: nothing waits
    now_ms: int

    @property
    def oldest_age_s(self) -> float:
        return 0.0 if self.oldest_ms is None else max(0.0, (self.now_ms - self.oldest_ms) / 1000)


def inbox_backlog(factory: sessionmaker[Session], *, now_ms: int) -> Backlog:
    """Webhooks not final yet, and when the oldest of them arrived."""
    with factory() as session:
        rows, oldest = session.execute(
            select(func.count(), func.min(InboxEvent.received_at)).where(InboxEvent.status.in_(NOT_FINAL))
        ).one()
    return Backlog(int(rows), to_ms(oldest), now_ms)


def outbox_backlog(factory: sessionmaker[Session], *, now_ms: int) -> Backlog:
    with factory() as session:
        rows, oldest = session.execute(
            select(func.count(), func.min(SinkOutboxRow.created_ms)).where(SinkOutboxRow.status == "pending")
        ).one()
    return Backlog(int(rows), None if oldest is None else int(oldest), now_ms)


def unknown_product_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(UnknownProduct)) or 0)


def unknown_products(factory: sessionmaker[Session], *, limit: int = 20) -> list[UnknownProduct]:
    with factory() as session:
        return list(session.scalars(select(UnknownProduct).order_by(UnknownProduct.last_seen_ms.desc()).limit(limit)))


def inbox_window_counts(factory: sessionmaker[Session], *, since_ms: int, until_ms: int) -> dict[str, int]:
    """Webhooks received in the window, by status: one range of the (status, received_at) index
    per status, where a GROUP BY would read every row of the window."""
    since, until = _instant(since_ms), _instant(until_ms)
    counts: dict[str, int] = {}
    with factory() as session:
        for status in INBOX_STATUSES:
            counts[status] = int(
                session.scalar(
                    select(func.count())
                    .select_from(InboxEvent)
                    .where(InboxEvent.status == status, InboxEvent.received_at >= since, InboxEvent.received_at < until)
                )
                or 0
            )
    return counts


def inbox_hourly_counts(factory: sessionmaker[Session], *, since_ms: int, until_ms: int) -> dict[int, dict[str, int]]:
    """Webhooks received in [since, until) by hour (its start, ms) and status, in one pass
    over the (status, received_at) index; ``since`` and ``until`` fall on whole hours."""
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            hour = func.date_trunc("hour", func.timezone("UTC", InboxEvent.received_at))
        else:  # SQLite keeps UTC text
            hour = func.strftime("%Y-%m-%d %H:00:00", InboxEvent.received_at)
        rows = session.execute(
            select(hour, InboxEvent.status, func.count())
            .where(
                InboxEvent.status.in_(INBOX_STATUSES),
                InboxEvent.received_at >= _instant(since_ms),
                InboxEvent.received_at < _instant(until_ms),
            )
            .group_by(hour, InboxEvent.status)
        ).all()
    counts: dict[int, dict[str, int]] = {}
    for start, status, n in rows:
        moment = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
        counts.setdefault(to_ms(moment) or 0, {})[str(status)] = int(n)
    return counts


def event_grant_latencies_ms(
    factory: sessionmaker[Session], *, since_ms: int, until_ms: int, sample: int = 500
) -> list[int]:
    """Purchase-to-access of the latest ``sample`` grants a webhook caused in the window: from
    the webhook's ``received_at`` to its grant's audit time (one query for the grants, one
    through the (provider, event_id) unique index for the webhooks)."""
    with factory() as session:
        grants = session.execute(
            select(AuditEntry.at_ms, AuditEntry.cause_ref)
            .where(
                AuditEntry.at_ms >= since_ms,
                AuditEntry.at_ms < until_ms,
                AuditEntry.action == "grant",
                AuditEntry.cause_kind.in_(EVENT_CAUSES),
            )
            .order_by(AuditEntry.at_ms.desc())
            .limit(sample)
        ).all()
        by_event: dict[str, list[int]] = {}
        for at_ms, ref in grants:
            _type, sep, event_id = str(ref).partition(":")
            if sep and event_id:
                by_event.setdefault(event_id, []).append(int(at_ms))
        latencies: list[int] = []
        ids = sorted(by_event)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for event_id, received in session.execute(
                select(InboxEvent.event_id, InboxEvent.received_at).where(
                    InboxEvent.provider == PROVIDER, InboxEvent.event_id.in_(chunk)
                )
            ):
                received_ms = to_ms(received)
                if received_ms is not None:
                    latencies += [max(0, at - received_ms) for at in by_event[str(event_id)]]
    return sorted(latencies)


def drift_series(
    factory: sessionmaker[Session], *, since_ms: int, until_ms: int, bucket_ms: int
) -> list[tuple[int, str, int]]:
    """(bucket start, drift kind, repairs) for the drift repaired in the window."""
    # Integers inlined: the same text in SELECT and GROUP BY (bound parameters would differ on
    # PostgreSQL's server-side binding); integer division on both dialects.
    bucket = (AuditEntry.at_ms - literal_column(str(int(since_ms)))) // literal_column(str(int(bucket_ms)))
    with factory() as session:
        rows = session.execute(
            select(bucket, AuditEntry.drift_kind, func.count())
            .where(AuditEntry.drift_kind.is_not(None), AuditEntry.at_ms >= since_ms, AuditEntry.at_ms < until_ms)
            .group_by(bucket, AuditEntry.drift_kind)
        ).all()
    return sorted((since_ms + int(b) * bucket_ms, str(kind), int(n)) for b, kind, n in rows)


def drift_rows(
    factory: sessionmaker[Session],
    *,
    since_ms: int,
    until_ms: int,
    kind: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Drift repairs in the window (of one kind), newest first, a page at a time."""
    stmt = select(AuditEntry).where(AuditEntry.at_ms >= since_ms, AuditEntry.at_ms < until_ms)
    stmt = stmt.where(AuditEntry.drift_kind == kind) if kind else stmt.where(AuditEntry.drift_kind.is_not(None))
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    with factory() as session:
        return list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)))


def iter_drift_rows(
    factory: sessionmaker[Session], *, since_ms: int, until_ms: int, kind: str | None = None, page: int = 1000
) -> Iterator[AuditEntry]:
    """Every drift repair of the window, newest first, read a page at a time (CSV export)."""
    before: int | None = None
    while True:
        rows = drift_rows(factory, since_ms=since_ms, until_ms=until_ms, kind=kind, before_id=before, limit=page)
        yield from rows
        if len(rows) < page:
            return
        before = rows[-1].id


def audit_caused_by(factory: sessionmaker[Session], cause_refs: Sequence[str], *, limit: int = 200) -> list[AuditEntry]:
    """Access changes whose cause names one of ``cause_refs`` (a webhook's reconciles)."""
    with factory() as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.cause_ref.in_(list(cause_refs)))
                .order_by(AuditEntry.id)
                .limit(limit)
            )
        )


# --- one learner ---------------------------------------------------------------------------


def customer_of(factory: sessionmaker[Session], app_user_id: str) -> str | None:
    """The customer an app_user_id belongs to, when the engine knows it."""
    with factory() as session:
        known = session.scalar(select(Identity.customer_id).where(Identity.app_user_id == app_user_id))
        if known is not None:
            return str(known)
        return app_user_id if session.get(Subscriber, app_user_id) is not None else None


def learners_from(factory: sessionmaker[Session], start: str, *, limit: int = 50) -> list[Subscriber]:
    """Customers in id order from ``start`` on (the learners list and its next pages)."""
    with factory() as session:
        return list(
            session.scalars(
                select(Subscriber).where(Subscriber.customer_id >= start).order_by(Subscriber.customer_id).limit(limit)
            )
        )


@dataclass(frozen=True)
class LearnerRecord:
    subscriber: Subscriber | None
    aliases: list[str]
    grants: list[Grant]
    transactions: list[LedgerTransaction]


def learner_record(factory: sessionmaker[Session], customer_id: str) -> LearnerRecord:
    with factory() as session:
        return LearnerRecord(
            subscriber=session.get(Subscriber, customer_id),
            aliases=sorted(
                str(a) for a in session.scalars(select(Identity.app_user_id).where(Identity.customer_id == customer_id))
            ),
            grants=list(
                session.scalars(select(Grant).where(Grant.customer_id == customer_id).order_by(Grant.resource))
            ),
            transactions=list(
                session.scalars(
                    select(LedgerTransaction)
                    .where(LedgerTransaction.owner == customer_id)
                    .order_by(LedgerTransaction.purchased_ms.desc())
                    .limit(200)
                )
            ),
        )


def learner_audit(
    factory: sessionmaker[Session], customer_id: str, *, before_id: int | None = None, limit: int = 50
) -> list[AuditEntry]:
    stmt = select(AuditEntry).where(AuditEntry.customer_id == customer_id)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    with factory() as session:
        return list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)))


def webhooks_naming(
    factory: sessionmaker[Session], app_user_ids: Sequence[str], *, before_id: int | None = None, limit: int = 50
) -> list[InboxEvent]:
    """Webhooks that named any of these app_user_ids, newest first."""
    named = select(InboxEventUser.inbox_id).where(InboxEventUser.app_user_id.in_(list(app_user_ids)))
    if before_id is not None:
        named = named.where(InboxEventUser.inbox_id < before_id)
    ids = named.order_by(InboxEventUser.inbox_id.desc()).limit(limit)
    with factory() as session:
        return list(session.scalars(select(InboxEvent).where(InboxEvent.id.in_(ids)).order_by(InboxEvent.id.desc())))


def learner_outbox(factory: sessionmaker[Session], customer_id: str, *, limit: int = 50) -> list[SinkOutboxRow]:
    with factory() as session:
        return list(
            session.scalars(
                select(SinkOutboxRow)
                .where(SinkOutboxRow.customer_id == customer_id)
                .order_by(SinkOutboxRow.id.desc())
                .limit(limit)
            )
        )
