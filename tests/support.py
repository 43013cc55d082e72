"""Test support: settings as environment for child processes, a real Celery worker process,
polling for an end state, JSON answers and queued Celery messages read back."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

import redis as redis_lib
from werkzeug.test import TestResponse

from adapters.embedded_redis import redis_url
from config.settings import PROJECT_ROOT, Settings
from engine.catalog import Catalog
from engine.ports import Cause, SubscriberSource
from engine.reconcile import Reading, ReconcileOutcome
from services.wiring import Wiring
from tasks.launch import celery_beat as _launch_beat
from tasks.launch import celery_worker as _launch_worker

T = TypeVar("T")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to build the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(settings.to_env())
    env["REDIS_URL"] = redis_url(settings)  # the embedded server's socket, shared with the child
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def answer(response: TestResponse) -> dict[str, Any]:
    """A JSON answer's object (werkzeug types ``Response.json`` as optional: None unless JSON)."""
    body = response.json
    assert isinstance(body, dict), f"not a JSON object: {response.data[:200]!r}"
    return body


def queued_messages(settings: Settings, queue: str = "celery") -> list[dict[str, Any]]:
    """The Celery messages waiting in one of the broker's Redis queues, newest first."""
    client = redis_lib.Redis.from_url(redis_url(settings))
    # redis-py types a synchronous client's replies as ``Awaitable | reply``
    return [json.loads(m) for m in cast("list[bytes]", client.lrange(queue, 0, -1))]


def queued_tasks(settings: Settings, queue: str = "celery") -> list[tuple[str, list[Any], str | None]]:
    """(task name, positional arguments, eta) of each message waiting in a queue, oldest first."""
    found = []
    for message in reversed(queued_messages(settings, queue)):
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], args, message["headers"].get("eta")))
    return found


def inbox_ids_queued(settings: Settings) -> list[int]:
    """The inbox rows the queued ``inbox.process`` and ``inbox.process_group`` messages name."""
    ids: list[int] = []
    for task, args, _eta in queued_tasks(settings):
        if task == "inbox.process":
            ids.append(args[0])
        elif task == "inbox.process_group":
            ids.extend(args[0])
    return ids


def celery_worker(settings: Settings, *, concurrency: int = 1, log_path=None):
    """A real ``celery worker`` process on the configured broker (see tasks.launch)."""
    return _launch_worker(settings_env(settings), settings.instance_path, concurrency=concurrency, log_path=log_path)


def celery_beat(settings: Settings, *, log_path=None):
    """A real ``celery beat`` process on the configured broker (see tasks.launch)."""
    return _launch_beat(settings_env(settings), settings.instance_path, log_path=log_path)


def reconcile_now(
    wiring: Wiring,
    app_user_id: str,
    *,
    cause: Cause | None = None,
    provider: SubscriberSource | None = None,
    now_ms: int | None = None,
    catalog: Catalog | None = None,
) -> ReconcileOutcome:
    """Read ``app_user_id`` from the provider (the simulator, unless another source is given)
    and reconcile it, as every path that reads does."""
    body = (provider or wiring.provider).get_subscriber(app_user_id)
    convergence = wiring.convergence
    if now_ms is not None:
        convergence = replace(convergence, clock_ms=lambda: now_ms)
    if catalog is not None:
        convergence = replace(convergence, catalog=catalog)
    return convergence.reconcile(Reading.from_provider(app_user_id, body), cause or Cause("request"))
