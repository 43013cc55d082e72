"""How tasks are declared: one helper with the options every task shares, so a misspelled
option fails loudly here instead of vanishing silently; and how a task finds its process's
wiring (from the Settings of the Celery app running it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, shared_task

from services.wiring import Wiring, wiring_for

KNOWN_OPTIONS = frozenset(
    {"bind", "acks_late", "max_retries", "ignore_result", "rate_limit", "queue", "time_limit", "soft_time_limit"}
)


def task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task at module level under ``name`` (named by area: ``inbox.process``).

    Shared: every Celery app built by tasks.celery_app (tests build several) has it, each on its
    own broker. Acknowledged after it runs (a crash runs it again: every task is idempotent),
    results ignored.
    """
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown task options for {name}: {sorted(unknown)}")
    options.setdefault("acks_late", True)
    options.setdefault("ignore_result", True)
    return shared_task(name=name, **options)


def wiring_of(t: Task) -> Wiring:
    """The wiring of the process running ``t``, built from its app's Settings."""
    return wiring_for(t.app.conf.engine_settings)


def every_s(t: Task, entry: str, default: float) -> float:
    """How often beat runs ``entry`` (its schedule in the app's beat_schedule): the period its
    cron monitor expects."""
    return float(t.app.conf.beat_schedule.get(entry, {}).get("schedule", default))
