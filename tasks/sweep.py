"""Sweep tasks: select the customers due for a provider read (within the budget) and fan out
batches; reconcile one batch."""

from __future__ import annotations

import math

from celery import Task
from kombu.exceptions import ChannelError

from config.observability import beat_check_in
from persistence.subscribers import select_due
from services.clock import wall_clock_ms
from services.sweep import reconcile_customers
from tasks.declare import every_s, task, wiring_of
from tasks.names import LMS_REPAIR, SWEEP_QUEUE, SWEEP_RECONCILE_BATCH, SWEEP_RUN

SWEEP_CHUNK = 50
# A selected customer is leased: selected again only if its batch has not run within this time.
SWEEP_LEASE_MS = 15 * 60 * 1000


@task(SWEEP_RUN, bind=True)
def run(self: Task) -> int:
    """Select the customers due for a provider read, as many as the budget allows until the
    next sweep less what the batches still queued will read, and fan them out in batches."""
    wiring = wiring_of(self)
    wiring.metrics.job_ran("sweep")
    interval_s = wiring.settings.sweep_interval_s
    with beat_check_in("sweep", every_s(self, "sweep", interval_s)):
        allowance = math.ceil(wiring.budget.limit_for("sweep") * interval_s / 60)
        # Selection never runs ahead of the reads: customers selected now would wait behind the
        # batches still queued, however urgent, while the next runs could have chosen better.
        allowance -= queued_batches(self) * SWEEP_CHUNK
        ids = select_due(wiring.session_factory, now_ms=wall_clock_ms(), limit=allowance, lease_ms=SWEEP_LEASE_MS)
        for start in range(0, len(ids), SWEEP_CHUNK):
            self.app.send_task(SWEEP_RECONCILE_BATCH, args=(ids[start : start + SWEEP_CHUNK],), queue=SWEEP_QUEUE)
        wiring.metrics.incr("engine_sweep_selected_total", amount=len(ids))
    return len(ids)


def queued_batches(t: Task) -> int:
    """Sweep batches published and not yet taken by a worker, as the broker counts them."""
    with t.app.connection_for_read() as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=SWEEP_QUEUE, passive=True).message_count)
        except ChannelError:  # the Redis transport's answer for an empty queue (no list key)
            return 0


@task(SWEEP_RECONCILE_BATCH, bind=True, time_limit=1800, soft_time_limit=1700)
def reconcile_batch(self: Task, customer_ids: list[str]) -> dict[str, object]:
    """Reconcile a chunk of customers for the sweep (drift is counted and reported), then have
    their LMS enrollments read back."""
    wiring = wiring_of(self)
    result = reconcile_customers(list(customer_ids), wiring.sweep_reads)
    if wiring.course_sink is not None and result.reconciled_ids:
        self.app.send_task(LMS_REPAIR, args=(result.reconciled_ids,))
    return {
        "reconciled": result.reconciled,
        "changed": result.changed,
        "drift": result.drift,
        "failed": result.failed,
        "deferred": len(result.deferred),
    }
