"""Inbox tasks: process one stored webhook; redrive rows whose message was lost."""

from __future__ import annotations

import logging

from celery import Task

from config.observability import beat_check_in
from engine.backoff import backoff_ms
from persistence.inbox_rows import rows_to_redrive
from services.clock import wall_clock_ms
from services.inbox import process_inbox_event
from tasks.declare import every_s, task, wiring_of
from tasks.lms import drain_after_commit
from tasks.names import INBOX_PROCESS, INBOX_REDRIVE

log = logging.getLogger(__name__)

# When a row cannot even be read or written (the database is down), the task itself retries a
# few times; after that the row's lease lapses and the redrive sends it again.
STORE_RETRIES = 3


@task(INBOX_PROCESS, bind=True)
def process(self: Task, inbox_id: int) -> str:
    """Process one inbox row (services/inbox.py records its fate in the row)."""
    wiring = wiring_of(self)
    try:
        result = process_inbox_event(inbox_id, wiring.event_processing)
    except Exception as exc:
        countdown = backoff_ms(self.request.retries + 1, base_ms=2_000, cap_ms=60_000, jitter=0.5) / 1000
        log.warning("inbox row %s could not be processed now (%s); retrying in %.1f s", inbox_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=STORE_RETRIES) from exc
    wiring.metrics.event(result.status)
    if result.status in {"retrying", "held"} and result.retry_in_ms is not None:
        # The row counts its attempts; if this message is lost, the redrive sends the row again.
        raise self.retry(countdown=result.retry_in_ms / 1000, max_retries=None)
    drain_after_commit(self.app, wiring, result.outcomes)
    return result.status


@task(INBOX_REDRIVE, bind=True)
def redrive(self: Task) -> int:
    """Re-enqueue every row that is not final and whose message may be lost (the bounds are in
    persistence/inbox_rows.py rows_to_redrive)."""
    settings = self.app.conf.engine_settings
    wiring_of(self).metrics.job_ran("inbox-redrive")
    with beat_check_in("inbox-redrive", every_s(self, "redrive-inbox", 30)):
        ids = rows_to_redrive(
            wiring_of(self).session_factory, now_ms=wall_clock_ms(), older_than_s=settings.redrive_after_s
        )
        for inbox_id in ids:
            self.app.send_task(INBOX_PROCESS, args=(inbox_id,))
    if ids:
        log.info("re-enqueued %d inbox rows", len(ids))
    return len(ids)
