"""The LMS outbox drained, and LMS drift read back and repaired.

* ``drain_outbox`` sends pending rows after commit: per (customer, resource) strictly in id
  order, one row at a time, each claimed with a lease; no DB transaction is open during an LMS
  call. A transient failure puts the group back with exponential backoff and jitter, for as long
  as the LMS stays down; a terminal one marks the row failed (alerted) and the group moves on.
  A change the LMS refuses for good (a deadline passed for every configured credential, no such
  user or course) fails its row with the refusal kind, alerts, counts it and audits it, so the
  drift report shows it. An LMS that throttles us (429, or our own budget for it spent) stops
  the run: the row waits for the budget, its backoff unchanged. Refused credentials or a wrong
  LMS URL pause the whole outbox (every row kept) and alert.
* ``repair_lms_drift`` (called by the sweep per customer) reads enrollments back and enqueues
  a repair, with an audit row carrying the drift kind, where the LMS differs from the grants.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from adapters.metrics import Metrics
from adapters.rate_budget import BudgetExhausted
from config.observability import report_lms_refusal, report_sink_paused
from engine.backoff import backoff_ms
from engine.enrollment import LmsRefusal, lms_drift_kind
from engine.errors import EngineError, SinkAuthError, TerminalError, TransientError
from engine.ports import CourseSink, EnrollmentState
from persistence.course_mappings import lms_username
from persistence.outbox import (
    LEASE_MS,
    MAX_CONSECUTIVE_FAILURES,
    Claim,
    claim_head,
    course_targets,
    earliest_pending,
    finish_row,
    lock_customer_row,
    pending_groups,
    pending_resources,
    put_back,
    recently_failed,
    record_lms_repair,
    refuse_row,
)

log = logging.getLogger(__name__)

RETRY_BASE_MS = 2_000  # the first retry of an outbox row after 1-2 s

# A change the LMS failed for good is not enqueued again as drift before this long: it was
# alerted once; a fix on the LMS side (a deadline moved, a credential added) is picked up then.
FAILED_RECHECK_MS = 24 * 3600 * 1000


@dataclass
class DrainResult:
    sent: int = 0  # rows applied in the LMS
    failed: int = 0  # rows given up (terminal error, refusals included), alerted
    refused: dict[str, int] = field(default_factory=dict)  # LMS refusal kind -> rows
    deferred: int = 0  # groups waiting for a retry after a transient failure
    next_attempt_ms: int | None = None  # earliest retry still pending (None: nothing waits)
    auth_error: str | None = None  # the LMS refused our credentials or is not at its URL: the run stopped
    throttled: bool = False  # the LMS's rate budget is spent (or it answered 429): the run stopped


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
    metrics: Metrics | None = None,
) -> DrainResult:
    """Send due outbox rows (of one customer, or of everyone) to ``sink``, in order per group."""
    result = DrainResult()
    consecutive_failures = 0
    for group_customer, resource in pending_groups(
        factory, customer_id=customer_id, now_ms=clock_ms(), limit=max_groups
    ):
        while True:
            now = clock_ms()
            claim = claim_head(factory, group_customer, resource, now_ms=now, lease_ms=lease_ms)
            if claim is None:
                break
            if claim.username is None:
                finish_row(factory, claim, status="failed", now_ms=now, error="no LMS username for this customer")
                log.error("outbox row %s: no LMS username for customer %s (map one)", claim.id, claim.customer_id)
                result.failed += 1
                continue
            try:
                sink.apply(claim.username, claim.course_run_id, claim.desired)
            except SinkAuthError as exc:
                put_back(factory, claim, retry_at_ms=clock_ms() + backoff_cap_ms, error=str(exc))
                log.warning("the LMS sink is paused (every row kept): %s", exc)
                report_sink_paused(sink.name, str(exc))
                result.auth_error = str(exc)
                result.next_attempt_ms = earliest_pending(factory, customer_id)
                return result
            except LmsRefusal as exc:
                _refused(factory, claim, exc, result, metrics, now_ms=clock_ms())
                continue
            except TransientError as exc:
                throttled = isinstance(exc, BudgetExhausted) or exc.status == 429
                delay = (
                    0
                    if throttled
                    else backoff_ms(claim.attempts, base_ms=RETRY_BASE_MS, cap_ms=backoff_cap_ms, jitter=jitter())
                )
                if exc.retry_after_s is not None:
                    delay = max(delay, int(exc.retry_after_s * 1000))
                # Waiting for the budget is pacing, not a failure: the row keeps its backoff.
                put_back(
                    factory,
                    claim,
                    retry_at_ms=clock_ms() + max(delay, 1),
                    error=str(exc),
                    count_attempt=not isinstance(exc, BudgetExhausted),
                )
                log.warning(
                    "outbox row %s (attempt %d) will be retried in %d ms: %s", claim.id, claim.attempts, delay, exc
                )
                result.deferred += 1
                if throttled:  # every other row would wait for the same budget
                    result.throttled = True
                    result.next_attempt_ms = earliest_pending(factory, customer_id)
                    return result
                consecutive_failures += 1
                break
            except TerminalError as exc:
                finish_row(factory, claim, status="failed", now_ms=clock_ms(), error=str(exc)[:2000])
                log.error(
                    "outbox row %s failed for good (%s %s → %s): %s",
                    claim.id,
                    claim.username,
                    claim.course_run_id,
                    claim.desired,
                    exc,
                )
                result.failed += 1
                continue
            finish_row(factory, claim, status="done", now_ms=clock_ms())
            result.sent += 1
            consecutive_failures = 0
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            break
    result.next_attempt_ms = earliest_pending(factory, customer_id)
    return result


def _refused(
    factory: sessionmaker[Session],
    claim: Claim,
    exc: LmsRefusal,
    result: DrainResult,
    metrics: Metrics | None,
    *,
    now_ms: int,
) -> None:
    """A change the LMS will not take: a failed row saying why, an audit row with the kind, an
    alert and a count. The group moves on (a later change may still go through)."""
    refuse_row(factory, claim, kind=exc.kind, error=str(exc), now_ms=now_ms)
    log.warning("outbox row %s refused by the LMS (%s): %s", claim.id, exc.kind, exc)
    report_lms_refusal(claim.customer_id, claim.resource, exc.kind, str(exc))
    if metrics is not None:
        metrics.incr("engine_lms_refusals_total", {"kind": exc.kind})
    result.failed += 1
    result.refused[exc.kind] = result.refused.get(exc.kind, 0) + 1


@dataclass
class LmsDriftResult:
    checked: int = 0  # enrollments read back
    drift: dict[str, int] = field(default_factory=dict)  # drift kind -> repairs enqueued
    unreadable: int = 0  # reads that failed (transient): looked at again next sweep

    @property
    def repairs(self) -> int:
        return sum(self.drift.values())


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
        targets = course_targets(session, customer_id, now_ms)
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
        lock_customer_row(session, customer_id)
        fresh = course_targets(session, customer_id, now_ms)
        in_flight = pending_resources(session, customer_id)
        failed = recently_failed(session, customer_id, since_ms=now_ms - FAILED_RECHECK_MS)
        for resource, current in observed.items():
            if resource in in_flight or fresh.get(resource) != targets[resource]:
                continue
            mapping, desired = targets[resource]
            if failed.get(resource) == desired:
                continue  # the LMS refused this very change lately: alerted already, not new drift
            kind = lms_drift_kind(current, desired)
            if kind is None:
                continue
            record_lms_repair(
                session,
                customer_id,
                mapping,
                current,
                desired,
                drift_kind=kind,
                now_ms=now_ms,
                cause_ref=f"lms-drift:{cause_ref}",
            )
            result.drift[kind] = result.drift.get(kind, 0) + 1
    if result.drift:
        log.warning("LMS drift repaired for %s: %s", customer_id, result.drift)
    return result
