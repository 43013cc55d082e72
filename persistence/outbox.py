"""The sink outbox table: grant changes written with the grant, claimed with leases, finished.

* ``enqueue_grant_changes`` runs in the grant's transaction: one row per change of a mapped
  course resource whose desired enrollment changes.
* Rows are claimed one group (customer, resource) head at a time with a lease, so concurrent
  drainers never send one group out of order; no transaction stays open during an LMS call.
* ``enqueue_expired_mappings`` revokes paid access to course runs whose mapping expired.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.access import Access
from engine.enrollment import CourseMapping, desired_enrollment, revocation_state
from engine.plan import Action
from engine.ports import Cause, EnrollmentState
from persistence.course_mappings import holders_of, lms_username, mappings_for, to_mapping
from persistence.models import AuditEntry, CourseMappingRow, Grant, SinkOutboxRow, Subscriber

COURSE_SINK = "course"
LEASE_MS = 5 * 60 * 1000  # longer than the LMS calls one row can make (timeouts included)
# Consecutive transient failures after which one drain run stops: the LMS is down, and the
# other groups would only spend a connect timeout each to learn the same thing.
MAX_CONSECUTIVE_FAILURES = 3


def grant_access(row: Grant | None) -> Access | None:
    if row is None:
        return None
    return Access(row.resource, row.mode, row.expires_ms, tuple(json.loads(row.sources or "[]")))


def add_row(
    session: Session,
    customer_id: str,
    mapping: CourseMapping,
    desired: EnrollmentState,
    *,
    now_ms: int,
    cause_kind: str,
    cause_ref: str,
) -> None:
    session.add(
        SinkOutboxRow(
            sink=COURSE_SINK,
            customer_id=customer_id,
            resource=mapping.resource,
            course_run_id=mapping.course_run_id,
            mode=desired.mode,
            is_active=desired.is_active,
            status="pending",
            attempts=0,
            next_attempt_ms=now_ms,
            cause_kind=cause_kind,
            cause_ref=cause_ref[:255],
            created_ms=now_ms,
        )
    )


def enqueue_grant_changes(
    session: Session, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int
) -> int:
    """Write an outbox row for each action on a mapped course whose LMS enrollment must change.

    Runs in the caller's transaction, under the customer's lock (``SqlLedgerStore.apply``).
    """
    mappings = mappings_for(session, [a.resource for a in actions])
    written = 0
    for action in actions:
        mapping = mappings.get(action.resource)
        if mapping is None:
            continue
        after = desired_enrollment(action.after, mapping, now_ms)
        if after is None:
            continue  # mapping inactive: the engine leaves this course alone
        if action.before is not None and desired_enrollment(action.before, mapping, now_ms) == after:
            continue  # e.g. an extension: the LMS has nothing to change
        add_row(session, customer_id, mapping, after, now_ms=now_ms, cause_kind=cause.kind, cause_ref=cause.ref)
        written += 1
    if written:
        session.flush()
    return written


def lock_customer_row(session: Session, customer_id: str) -> None:
    """The same row lock reconcile takes: outbox rows of one customer are written one writer at
    a time, so their ids follow commit order (SQLite serialises every writer anyway)."""
    stmt = select(Subscriber.customer_id).where(Subscriber.customer_id == customer_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    session.execute(stmt)


def enqueue_for_holders(
    session: Session, mapping: CourseMapping, *, now_ms: int, ref: str, revoke: bool = False
) -> int:
    """Re-send ``mapping`` to every customer holding its resource (new or changed mapping);
    ``revoke``: send the revocation instead (the old course run of a moved mapping)."""
    written = 0
    for customer_id in holders_of(session, mapping.resource):
        lock_customer_row(session, customer_id)
        grant = session.get(Grant, (customer_id, mapping.resource))
        desired = (
            revocation_state(mapping.on_revoke) if revoke else desired_enrollment(grant_access(grant), mapping, now_ms)
        )
        if desired is None:
            continue
        add_row(session, customer_id, mapping, desired, now_ms=now_ms, cause_kind="operator", cause_ref=ref)
        written += 1
    session.flush()
    return written


def enqueue_expired_mappings(factory: sessionmaker[Session], *, now_ms: int) -> int:
    """Revoke paid access to course runs whose mapping expired (once per expiry)."""
    with factory() as session, session.begin():
        rows = list(
            session.scalars(
                select(CourseMappingRow)
                .where(
                    CourseMappingRow.active.is_(True),
                    CourseMappingRow.expires_ms.is_not(None),
                    CourseMappingRow.expires_ms <= now_ms,
                    CourseMappingRow.expiry_enqueued.is_(False),
                )
                .with_for_update()
            )
        )
        written = 0
        for row in rows:
            written += enqueue_for_holders(session, to_mapping(row), now_ms=now_ms, ref="mapping-expired")
            row.expiry_enqueued = True
    return written


@dataclass(frozen=True)
class Claim:
    id: int
    customer_id: str
    resource: str
    course_run_id: str
    desired: EnrollmentState
    attempts: int
    username: str | None


def pending_groups(
    factory: sessionmaker[Session], *, customer_id: str | None, now_ms: int, limit: int
) -> list[tuple[str, str]]:
    """(customer, resource) groups whose rows are due, oldest head first."""
    with factory() as session:
        stmt = (
            select(SinkOutboxRow.customer_id, SinkOutboxRow.resource, func.min(SinkOutboxRow.id).label("head"))
            .where(SinkOutboxRow.status == "pending", SinkOutboxRow.next_attempt_ms <= now_ms)
            .group_by(SinkOutboxRow.customer_id, SinkOutboxRow.resource)
            .order_by("head")
            .limit(limit)
        )
        if customer_id is not None:
            stmt = stmt.where(SinkOutboxRow.customer_id == customer_id)
        return [(c, r) for c, r, _ in session.execute(stmt).all()]


def claim_head(
    factory: sessionmaker[Session], customer_id: str, resource: str, *, now_ms: int, lease_ms: int
) -> Claim | None:
    """Lease the group's oldest pending row, if it is due and nobody holds it."""
    with factory() as session, session.begin():
        row = session.scalars(
            select(SinkOutboxRow)
            .where(
                SinkOutboxRow.status == "pending",
                SinkOutboxRow.customer_id == customer_id,
                SinkOutboxRow.resource == resource,
            )
            .order_by(SinkOutboxRow.id)
            .limit(1)
        ).first()
        if row is None or row.next_attempt_ms > now_ms:
            return None
        if row.leased_until_ms is not None and row.leased_until_ms > now_ms:
            return None  # another drainer is sending it
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(SinkOutboxRow)
                .where(
                    SinkOutboxRow.id == row.id,
                    SinkOutboxRow.status == "pending",
                    (SinkOutboxRow.leased_until_ms.is_(None)) | (SinkOutboxRow.leased_until_ms <= now_ms),
                )
                .values(leased_until_ms=now_ms + lease_ms, attempts=SinkOutboxRow.attempts + 1)
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        if claimed != 1:
            return None
        return Claim(
            row.id,
            customer_id,
            resource,
            row.course_run_id,
            EnrollmentState(row.mode, row.is_active),
            row.attempts + 1,
            lms_username(session, customer_id),
        )


def finish_row(
    factory: sessionmaker[Session], claim: Claim, *, status: str, now_ms: int, error: str | None = None
) -> None:
    with factory() as session, session.begin():
        session.execute(
            update(SinkOutboxRow)
            .where(SinkOutboxRow.id == claim.id)
            .values(status=status, done_ms=now_ms, leased_until_ms=None, last_error=error, username=claim.username)
        )


def put_back(
    factory: sessionmaker[Session], claim: Claim, *, retry_at_ms: int, error: str, count_attempt: bool = True
) -> None:
    """Release the row and hold its whole group until ``retry_at_ms`` (order is kept).

    ``count_attempt`` False: the row was never tried (it waited for the LMS's rate budget), so
    its backoff does not grow."""
    attempts = SinkOutboxRow.attempts if count_attempt else SinkOutboxRow.attempts - 1
    with factory() as session, session.begin():
        session.execute(
            update(SinkOutboxRow)
            .where(SinkOutboxRow.id == claim.id)
            .values(leased_until_ms=None, last_error=error[:2000], username=claim.username, attempts=attempts)
        )
        session.execute(
            update(SinkOutboxRow)
            .where(
                SinkOutboxRow.status == "pending",
                SinkOutboxRow.customer_id == claim.customer_id,
                SinkOutboxRow.resource == claim.resource,
                SinkOutboxRow.next_attempt_ms < retry_at_ms,
            )
            .values(next_attempt_ms=retry_at_ms)
        )


def refuse_row(factory: sessionmaker[Session], claim: Claim, *, kind: str, error: str, now_ms: int) -> None:
    """The LMS will not take this row's change: the row fails with ``kind`` first in its error,
    and an audit row carries ``kind`` as its drift kind (the drift report shows it)."""
    with factory() as session, session.begin():
        session.execute(
            update(SinkOutboxRow)
            .where(SinkOutboxRow.id == claim.id)
            .values(
                status="failed",
                done_ms=now_ms,
                leased_until_ms=None,
                last_error=f"{kind}: {error}"[:2000],
                username=claim.username,
            )
        )
        session.add(
            AuditEntry(
                at_ms=now_ms,
                customer_id=claim.customer_id,
                resource=claim.resource,
                action="lms_refused",
                before=None,
                after=state_json(claim.desired),
                cause_kind="sink",
                cause_ref=f"outbox:{claim.id}",
                drift_kind=kind,
            )
        )


def recently_failed(session: Session, customer_id: str, *, since_ms: int) -> dict[str, EnrollmentState]:
    """Resources of a customer whose latest outbox row failed since ``since_ms``, with the state
    it asked for: a known, alerted failure, not new drift."""
    latest = (
        select(SinkOutboxRow.resource, func.max(SinkOutboxRow.id).label("last"))
        .where(SinkOutboxRow.customer_id == customer_id)
        .group_by(SinkOutboxRow.resource)
        .subquery()
    )
    rows = session.execute(
        select(SinkOutboxRow.resource, SinkOutboxRow.mode, SinkOutboxRow.is_active)
        .join(latest, SinkOutboxRow.id == latest.c.last)
        .where(SinkOutboxRow.status == "failed", SinkOutboxRow.done_ms >= since_ms)
    )
    return {resource: EnrollmentState(mode, is_active) for resource, mode, is_active in rows}


def earliest_pending(factory: sessionmaker[Session], customer_id: str | None) -> int | None:
    with factory() as session:
        stmt = select(func.min(SinkOutboxRow.next_attempt_ms)).where(SinkOutboxRow.status == "pending")
        if customer_id is not None:
            stmt = stmt.where(SinkOutboxRow.customer_id == customer_id)
        return session.scalar(stmt)


def outbox_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    """Outbox rows by status (metrics, operators)."""
    with factory() as session:
        return {
            s: int(n)
            for s, n in session.execute(select(SinkOutboxRow.status, func.count()).group_by(SinkOutboxRow.status))
        }


def course_targets(session: Session, customer_id: str, now_ms: int) -> dict[str, tuple[CourseMapping, EnrollmentState]]:
    """Mapped courses of a customer (granted now, or sent to the LMS before) and what the LMS
    should hold for each."""
    grants = {g.resource: g for g in session.scalars(select(Grant).where(Grant.customer_id == customer_id))}
    sent = set(
        session.scalars(select(SinkOutboxRow.resource).where(SinkOutboxRow.customer_id == customer_id).distinct())
    )
    targets: dict[str, tuple[CourseMapping, EnrollmentState]] = {}
    for resource, mapping in mappings_for(session, set(grants) | sent).items():
        desired = desired_enrollment(grant_access(grants.get(resource)), mapping, now_ms)
        if desired is not None:
            targets[resource] = (mapping, desired)
    return targets


def state_json(state: EnrollmentState | None) -> str | None:
    return None if state is None else json.dumps({"mode": state.mode, "is_active": state.is_active})


def record_lms_repair(
    session: Session,
    customer_id: str,
    mapping: CourseMapping,
    current: EnrollmentState | None,
    desired: EnrollmentState,
    *,
    drift_kind: str,
    now_ms: int,
    cause_ref: str,
) -> None:
    """An outbox row repairing LMS drift, and its audit row carrying the drift kind."""
    add_row(session, customer_id, mapping, desired, now_ms=now_ms, cause_kind="sweep", cause_ref=cause_ref)
    session.add(
        AuditEntry(
            at_ms=now_ms,
            customer_id=customer_id,
            resource=mapping.resource,
            action="lms_repair",
            before=state_json(current),
            after=state_json(desired),
            cause_kind="sweep",
            cause_ref=cause_ref[:255],
            drift_kind=drift_kind,
        )
    )


def pending_resources(session: Session, customer_id: str) -> set[str]:
    """Resources of a customer with outbox rows still in flight."""
    return set(
        session.scalars(
            select(SinkOutboxRow.resource).where(
                SinkOutboxRow.customer_id == customer_id, SinkOutboxRow.status == "pending"
            )
        )
    )
