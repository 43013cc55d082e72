"""Thin tasks: open the runtime, call the engine, map transient errors to a retry."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task

from config.observability import beat_check_in, beat_monitor
from engine.errors import TransientError
from engine.ports import Cause
from engine.reconcile import reproject_customer
from persistence.inbox import rows_to_redrive
from persistence.outbox import enqueue_expired_mappings
from persistence.subscribers import customers_with_due_expiry, select_due
from persistence.unit_of_work import unit_of_work
from services.inbox import process_inbox_event
from services.outbox import drain_outbox, repair_lms_drift
from services.sweep import reconcile_customers
from services.wiring import runtime_for, wall_clock_ms

log = logging.getLogger(__name__)

# Options every task gets unless it overrides them, declared in one place so that a
# misspelled option fails loudly here instead of vanishing silently.
_KNOWN_OPTIONS = {
    "bind",
    "acks_late",
    "max_retries",
    "ignore_result",
    "rate_limit",
    "queue",
    "time_limit",
    "soft_time_limit",
}

SWEEP_QUEUE = "sweep"
SWEEP_CHUNK = 50
# A leased customer is selected again if its reconcile has not run within this time.
SWEEP_LEASE_MS = 15 * 60 * 1000


def _task(app: Celery, name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown task options for {name}: {sorted(unknown)}")
    options.setdefault("acks_late", True)
    options.setdefault("ignore_result", True)
    # Not shared: each app (tests build several) keeps its own tasks and its own broker.
    return app.task(name=name, shared=False, **options)


def retry_countdown(retries: int, retry_after_s: float | None, cap_s: int) -> float:
    """Exponential backoff with full jitter, never below the provider's Retry-After, capped."""
    backoff = random.uniform(0, min(cap_s, 2 ** (retries + 1)))
    if retry_after_s is not None:
        backoff = max(backoff, retry_after_s)
    return min(backoff, cap_s)


def _drain_sinks_after_commit(app: Celery, settings: Any, outcomes: Any) -> None:
    """Send the LMS the changes just committed (their outbox rows); the beat drain is the net."""
    if not settings.openedx_enabled:
        return
    for customer_id in sorted({o.customer_id for o in outcomes if o.actions}):
        try:
            app.send_task("engine.drain_sink_outbox", args=(customer_id,))
        except Exception as exc:
            log.warning("could not enqueue the sink drain for %s: %s", customer_id, exc)


def register(app: Celery) -> None:
    settings = app.conf.engine_settings
    schedule = app.conf.beat_schedule

    def every_s(entry: str, default: float) -> float:  # the monitors follow the beat schedule
        return float(schedule.get(entry, {}).get("schedule", default))

    @_task(app, "engine.process_event", bind=True, max_retries=settings.task_max_retries)
    def process_event(self: Task, inbox_id: int) -> str:
        rt = runtime_for(settings)
        final = self.request.retries >= self.max_retries
        try:
            result = process_inbox_event(inbox_id, rt.event_processing(), final_attempt=final)
        except TransientError as exc:
            countdown = retry_countdown(self.request.retries, exc.retry_after_s, settings.retry_backoff_max_s)
            raise self.retry(exc=exc, countdown=countdown) from exc
        _drain_sinks_after_commit(self.app, settings, result.outcomes)
        return result.status

    @_task(app, "engine.redrive_inbox", bind=True)
    @beat_monitor("engine-redrive-inbox", every_s("redrive-inbox", 30))
    def redrive_inbox(self: Task) -> int:
        rt = runtime_for(settings)
        ids = rows_to_redrive(
            rt.session_factory,
            older_than_s=settings.redrive_after_s,
            stuck_processing_s=max(settings.redrive_after_s, 300),
            now=datetime.now(UTC),
        )
        for inbox_id in ids:
            self.app.send_task("engine.process_event", args=(inbox_id,))
        if ids:
            log.info("re-enqueued %d inbox rows", len(ids))
        return len(ids)

    @_task(app, "engine.sweep", bind=True)
    @beat_monitor("engine-sweep", every_s("sweep", settings.sweep_interval_s))
    def sweep(self: Task) -> int:
        """Select the customers due for a provider read (within the budget) and fan out."""
        rt = runtime_for(settings)
        interval_s = settings.sweep_interval_s
        allowance = rt.budget.limit_for("sweep") * interval_s // 60
        ids = select_due(rt.session_factory, now_ms=wall_clock_ms(), limit=allowance, lease_ms=SWEEP_LEASE_MS)
        for start in range(0, len(ids), SWEEP_CHUNK):
            self.app.send_task("engine.reconcile_batch", args=(ids[start : start + SWEEP_CHUNK],), queue=SWEEP_QUEUE)
        rt.metrics.incr("engine_sweep_selected_total", amount=len(ids))
        return len(ids)

    @_task(app, "engine.reconcile_batch", time_limit=1800, soft_time_limit=1700)
    def reconcile_batch(customer_ids: list[str]) -> dict[str, object]:
        """Reconcile a chunk of customers for the sweep (drift is counted and reported)."""
        result = reconcile_customers(list(customer_ids), runtime=runtime_for(settings))
        for customer_id in result.lms_repairs:  # LMS repairs were queued after their commit: send them
            app.send_task("engine.drain_sink_outbox", kwargs={"customer_id": customer_id})
        return {
            "reconciled": result.reconciled,
            "changed": result.changed,
            "drift": result.drift,
            "failed": result.failed,
            "deferred": len(result.deferred or []),
        }

    @_task(app, "engine.expire_grants")
    @beat_monitor("engine-expire-grants", every_s("expire-grants", 60))
    def expire_grants() -> int:
        """Revoke (or shorten) grants whose expiry passed, from the ledger: no provider call."""
        rt = runtime_for(settings)
        now = wall_clock_ms()
        changed = 0
        for customer_id in customers_with_due_expiry(rt.session_factory, now_ms=now):
            actions = reproject_customer(
                customer_id,
                unit_of_work=unit_of_work(rt.session_factory),
                catalog=rt.catalog,
                now_ms=now,
                cause=Cause("expiry"),
                policy=rt.policy,
            )
            changed += len(actions)
        return changed

    @_task(app, "engine.drain_sink_outbox", bind=True, max_retries=settings.task_max_retries)
    def drain_sink_outbox(self: Task, customer_id: str | None = None) -> int:
        """Send pending LMS enrollment changes: one customer's (after its event) or all due (beat)."""
        rt = runtime_for(settings)
        if rt.course_sink is None:
            return 0
        drain_every = every_s("drain-sink-outbox", settings.sink_drain_interval_s)
        with beat_check_in("engine-drain-sink-outbox", drain_every, when=customer_id is None):
            if customer_id is None:
                enqueue_expired_mappings(rt.session_factory, now_ms=wall_clock_ms())
            result = drain_outbox(
                rt.session_factory,
                rt.course_sink,
                clock_ms=wall_clock_ms,
                customer_id=customer_id,
                backoff_cap_ms=settings.sink_retry_backoff_max_s * 1000,
            )
        if (
            customer_id is not None
            and result.deferred
            and result.next_attempt_ms is not None
            and self.request.retries < self.max_retries
        ):
            raise self.retry(countdown=max(1.0, (result.next_attempt_ms - wall_clock_ms()) / 1000))
        return result.sent

    @_task(app, "engine.repair_lms_drift", bind=True)
    def repair_lms_drift_task(self: Task, customer_id: str) -> dict[str, int]:
        """Read one customer's LMS enrollments back and repair drift (counted like provider drift)."""
        rt = runtime_for(settings)
        if rt.course_sink is None:
            return {}
        result = repair_lms_drift(rt.session_factory, rt.course_sink, customer_id, now_ms=wall_clock_ms())
        if result.drift:
            rt.metrics.incr_many([("engine_drift_repaired_total", {"kind": k}, n) for k, n in result.drift.items()])
            self.app.send_task("engine.drain_sink_outbox", args=(customer_id,))
        return result.drift
