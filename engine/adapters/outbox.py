"""The sink outbox: grant changes written with the grant, sent to the LMS after commit.

* ``enqueue_grant_changes`` runs inside ``SqlLedgerStore.apply`` (the grant's transaction): one
  row per change of a mapped course resource whose desired enrollment changes.
* ``drain_outbox`` sends pending rows after commit: per (customer, resource) strictly in id
  order, one row at a time, each claimed with a lease so that concurrent drainers never send
  one group out of order; no DB transaction is open during an LMS call. A transient failure
  puts the group back with exponential backoff and jitter, for as long as the LMS stays down;
  a terminal one marks the row failed (alerted) and the group moves on.
* ``repair_lms_drift`` (called by the sweep per customer) reads enrollments back and enqueues
  a repair, with an audit row carrying the drift kind, where the LMS differs from the grants.
* ``enqueue_expired_mappings`` revokes paid access to course runs whose mapping expired.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.access import Access
from engine.adapters.course_catalog import holders_of, lms_username, mappings_for, to_mapping
from engine.adapters.models import AuditEntry, CourseMappingRow, Grant, SinkOutboxRow, Subscriber
from engine.errors import EngineError, TerminalError, TransientError
from engine.plan import Action
from engine.ports import Cause
from engine.sinks.enrollment import CourseMapping, desired_enrollment, lms_drift_kind, retry_delay_ms, revocation_state
from engine.sinks.ports import CourseSink, EnrollmentState, SinkAuthError

log = logging.getLogger(__name__)

# Rows go to "the course sink" (Open edX today); the column leaves room for other kinds.
COURSE_SINK = "course"
LEASE_MS = 5 * 60 * 1000  # longer than the LMS calls one row can make (timeouts included)
# Consecutive transient failures after which one drain run stops: the LMS is down, and the
# other groups would only spend a connect timeout each to learn the same thing.
MAX_CONSECUTIVE_FAILURES = 3


def _grant_access(row: Grant | None) -> Access | None:
    if row is None:
        return None
    return Access(row.resource, row.mode, row.expires_ms, tuple(json.loads(row.sources or "[]")))


def _add_row(session: Session, customer_id: str, mapping: CourseMapping, desired: EnrollmentState, *,
             now_ms: int, cause_kind: str, cause_ref: str) -> None:
    session.add(
        SinkOutboxRow(
            sink=COURSE_SINK, customer_id=customer_id, resource=mapping.resource, course_run_id=mapping.course_run_id,
            mode=desired.mode, is_active=desired.is_active, status="pending", attempts=0, next_attempt_ms=now_ms,
            cause_kind=cause_kind, cause_ref=cause_ref[:255], created_ms=now_ms,
        )
    )


def enqueue_grant_changes(session: Session, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> int:
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
        _add_row(session, customer_id, mapping, after, now_ms=now_ms, cause_kind=cause.kind, cause_ref=cause.ref)
        written += 1
    if written:
        session.flush()
    return written


def _lock_customer(session: Session, customer_id: str) -> None:
    """The same row lock reconcile takes: outbox rows of one customer are written one writer at
    a time, so their ids follow commit order (SQLite serialises every writer anyway)."""
    stmt = select(Subscriber.customer_id).where(Subscriber.customer_id == customer_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    session.execute(stmt)


def enqueue_for_holders(session: Session, mapping: CourseMapping, *, now_ms: int, ref: str, revoke: bool = False) -> int:
    """Re-send ``mapping`` to every customer holding its resource (new or changed mapping);
    ``revoke``: send the revocation instead (the old course run of a moved mapping)."""
    written = 0
    for customer_id in holders_of(session, mapping.resource):
        _lock_customer(session, customer_id)
        grant = session.get(Grant, (customer_id, mapping.resource))
        desired = revocation_state(mapping.on_revoke) if revoke else desired_enrollment(_grant_access(grant), mapping, now_ms)
        if desired is None:
            continue
        _add_row(session, customer_id, mapping, desired, now_ms=now_ms, cause_kind="operator", cause_ref=ref)
        written += 1
    session.flush()
    return written


def enqueue_expired_mappings(factory: sessionmaker[Session], *, now_ms: int) -> int:
    """Revoke paid access to course runs whose mapping expired (once per expiry)."""
    with factory() as session, session.begin():
        rows = list(session.scalars(
            select(CourseMappingRow)
            .where(CourseMappingRow.active.is_(True), CourseMappingRow.expires_ms.is_not(None),
                   CourseMappingRow.expires_ms <= now_ms, CourseMappingRow.expiry_enqueued.is_(False))
            .with_for_update()
        ))
        written = 0
        for row in rows:
            written += enqueue_for_holders(session, to_mapping(row), now_ms=now_ms, ref="mapping-expired")
            row.expiry_enqueued = True
    return written


# -- draining -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    id: int
    customer_id: str
    resource: str
    course_run_id: str
    desired: EnrollmentState
    attempts: int
    username: str | None


@dataclass
class DrainResult:
    sent: int = 0  # rows applied in the LMS
    failed: int = 0  # rows given up (terminal error), alerted
    deferred: int = 0  # groups waiting for a retry after a transient failure
    next_attempt_ms: int | None = None  # earliest retry still pending (None: nothing waits)
    auth_error: str | None = None  # the LMS refused our credentials: the run stopped


def _pending_groups(factory: sessionmaker[Session], *, customer_id: str | None, now_ms: int, limit: int) -> list[tuple[str, str]]:
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


def _claim_head(factory: sessionmaker[Session], customer_id: str, resource: str, *, now_ms: int, lease_ms: int) -> _Claim | None:
    """Lease the group's oldest pending row, if it is due and nobody holds it."""
    with factory() as session, session.begin():
        row = session.scalars(
            select(SinkOutboxRow)
            .where(SinkOutboxRow.status == "pending", SinkOutboxRow.customer_id == customer_id, SinkOutboxRow.resource == resource)
            .order_by(SinkOutboxRow.id)
            .limit(1)
        ).first()
        if row is None or row.next_attempt_ms > now_ms:
            return None
        if row.leased_until_ms is not None and row.leased_until_ms > now_ms:
            return None  # another drainer is sending it
        claimed = session.execute(
            update(SinkOutboxRow)
            .where(SinkOutboxRow.id == row.id, SinkOutboxRow.status == "pending",
                   (SinkOutboxRow.leased_until_ms.is_(None)) | (SinkOutboxRow.leased_until_ms <= now_ms))
            .values(leased_until_ms=now_ms + lease_ms, attempts=SinkOutboxRow.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None
        return _Claim(row.id, customer_id, resource, row.course_run_id, EnrollmentState(row.mode, row.is_active),
                      row.attempts + 1, lms_username(session, customer_id))


def _finish(factory: sessionmaker[Session], claim: _Claim, *, status: str, now_ms: int, error: str | None = None) -> None:
    with factory() as session, session.begin():
        session.execute(
            update(SinkOutboxRow).where(SinkOutboxRow.id == claim.id)
            .values(status=status, done_ms=now_ms, leased_until_ms=None, last_error=error, username=claim.username)
        )


def _put_back(factory: sessionmaker[Session], claim: _Claim, *, retry_at_ms: int, error: str) -> None:
    """Release the row and hold its whole group until ``retry_at_ms`` (order is kept)."""
    with factory() as session, session.begin():
        session.execute(
            update(SinkOutboxRow).where(SinkOutboxRow.id == claim.id)
            .values(leased_until_ms=None, last_error=error[:2000], username=claim.username)
        )
        session.execute(
            update(SinkOutboxRow)
            .where(SinkOutboxRow.status == "pending", SinkOutboxRow.customer_id == claim.customer_id,
                   SinkOutboxRow.resource == claim.resource, SinkOutboxRow.next_attempt_ms < retry_at_ms)
            .values(next_attempt_ms=retry_at_ms)
        )


def drain_outbox(
    factory: sessionmaker[Session],
    sink: CourseSink,
    *,
    clock_ms: Callable[[], int],
    customer_id: str | None = None,
    max_groups: int = 500,
    lease_ms: int = LEASE_MS,
    backoff_cap_ms: int = 300_000,
    jitter: Callable[[], float] = random.random,
) -> DrainResult:
    """Send due outbox rows (of one customer, or of everyone) to ``sink``, in order per group."""
    result = DrainResult()
    consecutive_failures = 0
    for group_customer, resource in _pending_groups(factory, customer_id=customer_id, now_ms=clock_ms(), limit=max_groups):
        while True:
            now = clock_ms()
            claim = _claim_head(factory, group_customer, resource, now_ms=now, lease_ms=lease_ms)
            if claim is None:
                break
            if claim.username is None:
                _finish(factory, claim, status="failed", now_ms=now, error="no LMS username for this customer")
                log.error("outbox row %s: no LMS username for customer %s (map one)", claim.id, claim.customer_id)
                result.failed += 1
                continue
            try:
                sink.apply(claim.username, claim.course_run_id, claim.desired)
            except SinkAuthError as exc:
                _put_back(factory, claim, retry_at_ms=clock_ms() + backoff_cap_ms, error=str(exc))
                log.error("LMS refuses the engine's credentials; outbox paused: %s", exc)
                result.auth_error = str(exc)
                result.next_attempt_ms = _earliest_pending(factory, customer_id)
                return result
            except TransientError as exc:
                delay = retry_delay_ms(claim.attempts, jitter=jitter(), cap_ms=backoff_cap_ms)
                if exc.retry_after_s is not None:
                    delay = max(delay, int(exc.retry_after_s * 1000))
                _put_back(factory, claim, retry_at_ms=clock_ms() + delay, error=str(exc))
                log.warning("outbox row %s (attempt %d) will be retried in %d ms: %s", claim.id, claim.attempts, delay, exc)
                result.deferred += 1
                consecutive_failures += 1
                break
            except TerminalError as exc:
                _finish(factory, claim, status="failed", now_ms=clock_ms(), error=str(exc)[:2000])
                log.error("outbox row %s failed for good (%s %s → %s): %s", claim.id, claim.username,
                          claim.course_run_id, claim.desired, exc)
                result.failed += 1
                continue
            _finish(factory, claim, status="done", now_ms=clock_ms())
            result.sent += 1
            consecutive_failures = 0
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            break
    result.next_attempt_ms = _earliest_pending(factory, customer_id)
    return result


def _earliest_pending(factory: sessionmaker[Session], customer_id: str | None) -> int | None:
    with factory() as session:
        stmt = select(func.min(SinkOutboxRow.next_attempt_ms)).where(SinkOutboxRow.status == "pending")
        if customer_id is not None:
            stmt = stmt.where(SinkOutboxRow.customer_id == customer_id)
        return session.scalar(stmt)


def outbox_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    """Outbox rows by status (metrics, operators)."""
    with factory() as session:
        return {s: int(n) for s, n in session.execute(select(SinkOutboxRow.status, func.count()).group_by(SinkOutboxRow.status))}


# -- LMS drift ----------------------------------------------------------------------------


@dataclass
class LmsDriftResult:
    checked: int = 0  # enrollments read back
    drift: dict[str, int] = field(default_factory=dict)  # drift kind -> repairs enqueued
    unreadable: int = 0  # reads that failed (transient): looked at again next sweep

    @property
    def repairs(self) -> int:
        return sum(self.drift.values())


def _course_targets(session: Session, customer_id: str, now_ms: int) -> dict[str, tuple[CourseMapping, EnrollmentState]]:
    """Mapped courses of a customer (granted now, or sent to the LMS before) and what the LMS
    should hold for each."""
    grants = {g.resource: g for g in session.scalars(select(Grant).where(Grant.customer_id == customer_id))}
    sent = set(session.scalars(select(SinkOutboxRow.resource).where(SinkOutboxRow.customer_id == customer_id).distinct()))
    targets: dict[str, tuple[CourseMapping, EnrollmentState]] = {}
    for resource, mapping in mappings_for(session, set(grants) | sent).items():
        desired = desired_enrollment(_grant_access(grants.get(resource)), mapping, now_ms)
        if desired is not None:
            targets[resource] = (mapping, desired)
    return targets


def _state_json(state: EnrollmentState | None) -> str | None:
    return None if state is None else json.dumps({"mode": state.mode, "is_active": state.is_active})


def repair_lms_drift(
    factory: sessionmaker[Session], sink: CourseSink, customer_id: str, *, now_ms: int, cause_ref: str = "sweep"
) -> LmsDriftResult:
    """Read back the LMS enrollments of one customer and enqueue a repair for each that differs
    from the grants, with an audit row whose ``drift_kind`` is ``lms_missing``,
    ``lms_inactive``, ``lms_wrong_mode`` or ``lms_not_deactivated``.

    LMS reads happen with no DB transaction open; the repair is then decided again under the
    customer's lock, skipping courses whose grant changed meanwhile or that still have rows in
    flight (those are converging already, not drifting). The caller drains after this commits.
    """
    result = LmsDriftResult()
    with factory() as session:
        targets = _course_targets(session, customer_id, now_ms)
        username = lms_username(session, customer_id) if targets else None
    if not targets or username is None:
        return result
    observed: dict[str, EnrollmentState | None] = {}
    for resource, (mapping, _desired) in sorted(targets.items()):
        try:
            observed[resource] = sink.read(username, mapping.course_run_id)
            result.checked += 1
        except EngineError as exc:
            result.unreadable += 1
            log.warning("could not read %s's enrollment in %s: %s", username, mapping.course_run_id, exc)
            if isinstance(exc, SinkAuthError):
                break
    with factory() as session, session.begin():
        _lock_customer(session, customer_id)
        fresh = _course_targets(session, customer_id, now_ms)
        in_flight = set(session.scalars(
            select(SinkOutboxRow.resource).where(SinkOutboxRow.customer_id == customer_id, SinkOutboxRow.status == "pending")
        ))
        for resource, current in observed.items():
            if resource in in_flight or fresh.get(resource) != targets[resource]:
                continue
            mapping, desired = targets[resource]
            kind = lms_drift_kind(current, desired)
            if kind is None:
                continue
            _add_row(session, customer_id, mapping, desired, now_ms=now_ms, cause_kind="sweep", cause_ref=f"lms-drift:{cause_ref}")
            session.add(AuditEntry(
                at_ms=now_ms, customer_id=customer_id, resource=resource, action="lms_repair",
                before=_state_json(current), after=_state_json(desired), cause_kind="sweep",
                cause_ref=f"lms-drift:{cause_ref}"[:255], drift_kind=kind,
            ))
            result.drift[kind] = result.drift.get(kind, 0) + 1
    if result.drift:
        log.warning("LMS drift repaired for %s: %s", customer_id, result.drift)
    return result
