"""Thin tasks: open the runtime, call the engine, map transient errors to a retry."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from typing import Any, Callable

from celery import Celery, Task

from engine.adapters.inbox import process_inbox_event, rows_to_redrive
from engine.adapters.runtime import runtime_for
from engine.errors import TransientError

log = logging.getLogger(__name__)

# Options every task gets unless it overrides them, declared in one place so that a
# misspelled option fails loudly here instead of vanishing silently.
_KNOWN_OPTIONS = {"bind", "acks_late", "max_retries", "ignore_result", "rate_limit", "queue", "time_limit"}


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
