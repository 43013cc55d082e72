"""Thin tasks: open the runtime, call the engine, map transient errors to a retry."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from typing import Any, Callable

from celery import Celery, Task

import sentry_sdk

from engine.adapters.inbox import process_inbox_event, rows_to_redrive
from engine.adapters.runtime import runtime_for, wall_clock_ms
from engine.adapters.sweep import customers_with_due_expiry, reconcile_customers, select_due
from engine.errors import TransientError
from engine.ports import Cause
from engine.reconcile import reproject_customer
from engine.adapters.inbox import unit_of_work

log = logging.getLogger(__name__)

# Options every task gets unless it overrides them, declared in one place so that a
# misspelled option fails loudly here instead of vanishing silently.
_KNOWN_OPTIONS = {
    "bind", "acks_late", "max_retries", "ignore_result", "rate_limit", "queue", "time_limit", "soft_time_limit",
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


def register(app: Celery) -> None:
    settings = app.conf.engine_settings

    @_task(app, "engine.process_event", bind=True, max_retries=settings.task_max_retries)
    def process_event(self: Task, inbox_id: int) -> str:
        rt = runtime_for(settings)
        final = self.request.retries >= self.max_retries
        try:
            return process_inbox_event(inbox_id, rt.event_processing(), final_attempt=final).status
        except TransientError as exc:
            countdown = retry_countdown(self.request.retries, exc.retry_after_s, settings.retry_backoff_max_s)
            raise self.retry(exc=exc, countdown=countdown)

    @_task(app, "engine.redrive_inbox", bind=True)
    @sentry_sdk.monitor(monitor_slug="engine-redrive-inbox")
    def redrive_inbox(self: Task) -> int:
        rt = runtime_for(settings)
        ids = rows_to_redrive(
            rt.session_factory,
            older_than_s=settings.redrive_after_s,
            stuck_processing_s=max(settings.redrive_after_s, 300),
            now=datetime.now(timezone.utc),
        )
        for inbox_id in ids:
            self.app.send_task("engine.process_event", args=(inbox_id,))
        if ids:
            log.info("re-enqueued %d inbox rows", len(ids))
        return len(ids)

    @_task(app, "engine.sweep", bind=True)
    @sentry_sdk.monitor(monitor_slug="engine-sweep")
    def sweep(self: Task) -> int:
        """Select the customers due for a provider read (within the budget) and fan out."""
        rt = runtime_for(settings)
        interval_s = settings.sweep_interval_s
        allowance = rt.budget.limit_for("sweep") * interval_s // 60
        ids = select_due(rt.session_factory, now_ms=wall_clock_ms(), limit=allowance, lease_ms=SWEEP_LEASE_MS)
        for start in range(0, len(ids), SWEEP_CHUNK):
            self.app.send_task("engine.reconcile_batch", args=(ids[start:start + SWEEP_CHUNK],), queue=SWEEP_QUEUE)
        rt.metrics.incr("engine_sweep_selected_total", amount=len(ids))
        return len(ids)

    @_task(app, "engine.reconcile_batch", time_limit=1800, soft_time_limit=1700)
    def reconcile_batch(customer_ids: list[str]) -> dict[str, object]:
        """Reconcile a chunk of customers for the sweep (drift is counted and reported)."""
        result = reconcile_customers(list(customer_ids), runtime=runtime_for(settings))
        return {"reconciled": result.reconciled, "changed": result.changed, "drift": result.drift,
                "failed": result.failed, "deferred": len(result.deferred or [])}

    @_task(app, "engine.expire_grants")
    @sentry_sdk.monitor(monitor_slug="engine-expire-grants")
    def expire_grants() -> int:
        """Revoke (or shorten) grants whose expiry passed, from the ledger: no provider call."""
        rt = runtime_for(settings)
        now = wall_clock_ms()
        changed = 0
        for customer_id in customers_with_due_expiry(rt.session_factory, now_ms=now):
            actions = reproject_customer(customer_id, unit_of_work=unit_of_work(rt.session_factory), catalog=rt.catalog,
                                         now_ms=now, cause=Cause("expiry"), policy=rt.policy)
            changed += len(actions)
        return changed
