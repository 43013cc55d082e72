"""LMS tasks: drain the sink outbox (one learner's rows after their change, or all that are
due), and read learners' enrollments back to repair LMS drift."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery, Task

from config.observability import beat_check_in
from engine.reconcile import ReconcileOutcome
from persistence.outbox import enqueue_expired_mappings
from services.clock import wall_clock_ms
from services.outbox import drain_outbox, repair_lms_drift
from services.wiring import Wiring
from tasks.declare import every_s, task, wiring_of
from tasks.names import LMS_DRAIN, LMS_REPAIR

log = logging.getLogger(__name__)


def drain_after_commit(app: Celery, wiring: Wiring, outcomes: Iterable[ReconcileOutcome]) -> None:
    """Send the LMS the changes just committed (their outbox rows); the beat drain is the net."""
    if wiring.course_sink is None:
        return
    for customer_id in sorted({o.customer_id for o in outcomes if o.actions}):
        try:
            app.send_task(LMS_DRAIN, kwargs={"customer_id": customer_id})
        except Exception as exc:
            log.warning("could not enqueue the LMS drain for %s: %s", customer_id, exc)


@task(LMS_DRAIN, bind=True, max_retries=8)
def drain(self: Task, customer_id: str | None = None) -> int:
    """Send pending LMS enrollment changes: one customer's (after its change) or all due (beat)."""
    wiring = wiring_of(self)
    sink = wiring.course_sink
    if sink is None:
        return 0
    # Beat drains everyone (a cron monitor follows it); a drain for one learner is not beat's.
    drain_every = every_s(self, "drain-sink-outbox", wiring.settings.sink_drain_interval_s)
    with beat_check_in("lms-drain", drain_every, when=customer_id is None):
        if customer_id is None:  # the beat's run (a learner's own drain names them)
            wiring.metrics.job_ran("lms-drain")
            enqueue_expired_mappings(wiring.session_factory, now_ms=wall_clock_ms())
        result = drain_outbox(
            wiring.session_factory,
            sink,
            clock_ms=wall_clock_ms,
            customer_id=customer_id,
            backoff_cap_ms=wiring.settings.sink_retry_backoff_max_s * 1000,
            metrics=wiring.metrics,
        )
    retry = customer_id is not None and result.deferred and result.next_attempt_ms is not None
    if retry and result.next_attempt_ms is not None and self.request.retries < (self.max_retries or 0):
        raise self.retry(countdown=max(1.0, (result.next_attempt_ms - wall_clock_ms()) / 1000))
    return result.sent


@task(LMS_REPAIR, bind=True)
def repair(self: Task, customer_ids: list[str]) -> dict[str, int]:
    """Read customers' LMS enrollments back and repair drift (counted like provider drift)."""
    wiring = wiring_of(self)
    sink = wiring.course_sink
    if sink is None:
        return {}
    drift: dict[str, int] = {}
    for customer_id in customer_ids:
        result = repair_lms_drift(wiring.session_factory, sink, customer_id, now_ms=wall_clock_ms())
        for kind, n in result.drift.items():
            drift[kind] = drift.get(kind, 0) + n
        if result.drift:
            self.app.send_task(LMS_DRAIN, kwargs={"customer_id": customer_id})
    if drift:
        wiring.metrics.incr_many([("engine_drift_repaired_total", {"kind": k}, n) for k, n in drift.items()])
    return drift
