"""Inbox tasks: process one stored webhook, or the rows one intake batch stored together;
redrive rows whose message was lost."""

from __future__ import annotations

import logging
import time

from celery import Task

from config.logs import log_context
from config.observability import beat_check_in
from engine.backoff import backoff_ms
from persistence.inbox_rows import rows_to_redrive
from services.clock import wall_clock_ms
from services.inbox import EventResult, process_inbox_event
from services.wiring import Wiring
from tasks.declare import every_s, task, wiring_of
from tasks.lms import drain_after_commit
from tasks.names import INBOX_PROCESS, INBOX_PROCESS_GROUP, INBOX_REDRIVE

log = logging.getLogger(__name__)

# When a row cannot even be read or written (the database is down), the task itself retries a
# few times; after that the row's lease lapses and the redrive sends it again.
STORE_RETRIES = 3
# A group's rows are processed in turn until this much time has gone; the rest go on in a
# message of their own, far inside the task's soft time limit (90 s, tasks/celery_app.py).
GROUP_TIME_BUDGET_S = 30.0


def store_retry_s(attempt: int) -> float:
    """The wait before another attempt at a row whose store could not be used."""
    return backoff_ms(attempt, base_ms=2_000, cap_ms=60_000, jitter=0.5) / 1000


@task(INBOX_PROCESS, bind=True)
def process(self: Task, inbox_id: int) -> str:
    """Process one inbox row (services/inbox.py records its fate in the row)."""
    wiring = wiring_of(self)
    try:
        result = process_inbox_event(inbox_id, wiring.event_processing)
    except Exception as exc:
        countdown = store_retry_s(self.request.retries + 1)
        log.warning("inbox row %s could not be processed now (%s); retrying in %.1f s", inbox_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=STORE_RETRIES) from exc
    if (wait_s := _finish(self, wiring, result)) is not None:
        # The row counts its attempts; if this message is lost, the redrive sends the row again.
        raise self.retry(countdown=wait_s, max_retries=None)
    return result.status


@task(INBOX_PROCESS_GROUP, bind=True)
def process_group(self: Task, inbox_ids: list[int]) -> dict[str, int]:
    """The rows one intake batch stored and committed together (services/group_commit.py),
    named by one message: each processed here in turn, as ``inbox.process`` would. A row that
    must wait (retrying, held, its store unusable now) goes on as its own ``inbox.process``
    after that wait, so that it never holds the rows behind it.

    One worker process takes the group's rows one after the other where separate messages
    could have been spread over several; what that costs is small, since the reads of events
    are paced by the provider's budget (adapters/rate_budget.py) whichever process makes them.
    """
    wiring = wiring_of(self)
    started = time.monotonic()
    statuses: dict[str, int] = {}
    for position, inbox_id in enumerate(inbox_ids):
        if position and time.monotonic() - started > GROUP_TIME_BUDGET_S:
            self.app.send_task(INBOX_PROCESS_GROUP, args=(inbox_ids[position:],))
            statuses["passed_on"] = len(inbox_ids) - position
            break
        with log_context(inbox_id=inbox_id):
            status = _process_in_group(self, wiring, inbox_id)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def _process_in_group(t: Task, wiring: Wiring, inbox_id: int) -> str:
    try:
        result = process_inbox_event(inbox_id, wiring.event_processing)
    except Exception as exc:
        countdown = store_retry_s(1)
        log.warning("inbox row %s could not be processed now (%s); retrying in %.1f s", inbox_id, exc, countdown)
        t.app.send_task(INBOX_PROCESS, args=(inbox_id,), countdown=countdown)
        return "store_unavailable"
    if (wait_s := _finish(t, wiring, result)) is not None:
        t.app.send_task(INBOX_PROCESS, args=(inbox_id,), countdown=wait_s)
    return result.status


def _finish(t: Task, wiring: Wiring, result: EventResult) -> float | None:
    """After a row was processed: counted, its LMS changes sent on; the seconds to wait before
    its next attempt when it must be tried again."""
    wiring.metrics.event(result.status)
    if result.status in {"retrying", "held"} and result.retry_in_ms is not None:
        return result.retry_in_ms / 1000
    drain_after_commit(t.app, wiring, result.outcomes)
    return None


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
