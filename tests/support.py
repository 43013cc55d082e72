"""Test support: settings as environment for child processes, a real Celery worker process,
and polling for an end state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from config.settings import PROJECT_ROOT, Settings
from engine.adapters.embedded_redis import redis_url

T = TypeVar("T")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to build the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": redis_url(settings),
            "REVENUECAT_API_URL": settings.revenuecat_api_url,
            "REVENUECAT_API_KEY": settings.revenuecat_api_key,
            "REVENUECAT_WEBHOOK_AUTH": settings.revenuecat_webhook_auth,
            "CATALOG_PATH": str(settings.catalog_path),
            "API_TOKEN": settings.api_token,
            "INSTANCE_PATH": str(settings.instance_path),
            "CELERY_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
            "REDRIVE_AFTER_S": str(settings.redrive_after_s),
            "TASK_MAX_RETRIES": str(settings.task_max_retries),
            "RETRY_BACKOFF_MAX_S": str(settings.retry_backoff_max_s),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


def wait_for(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def celery_worker(settings: Settings, *, concurrency: int = 1, log_path: Path | None = None) -> Iterator[subprocess.Popen]:
    """A real ``celery worker`` process (prefork) on the configured broker; stopped on exit."""
    log = open(log_path or settings.instance_path / "worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--pool=prefork", f"--concurrency={concurrency}",
         "--loglevel=INFO", "--without-mingle", "--without-gossip", "-Q", "celery,sweep", "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"],
        cwd=PROJECT_ROOT, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
