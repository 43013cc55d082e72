"""Starting a real Celery worker or beat process (the demo and the tests use them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from config.settings import PROJECT_ROOT


@contextmanager
def celery_worker(
    env: Mapping[str, str], instance_path: Path, *, concurrency: int = 1, log_path: Path | None = None
) -> Iterator[subprocess.Popen]:
    """A ``celery worker`` process (prefork, queues celery and sweep); stopped on exit."""
    with _celery_process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.worker",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "-Q",
            "celery,sweep",
            "-n",
            f"w{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        env,
        log_path or instance_path / "worker.log",
    ) as proc:
        yield proc


@contextmanager
def celery_beat(
    env: Mapping[str, str], instance_path: Path, *, log_path: Path | None = None
) -> Iterator[subprocess.Popen]:
    """A ``celery beat`` process (the Procfile's, with its single-beat lock); stopped on exit."""
    with _celery_process(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--loglevel=INFO"],
        env,
        log_path or instance_path / "beat.log",
    ) as proc:
        yield proc


@contextmanager
def _celery_process(argv: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A child process logging to ``log_path``; stopped (and its log closed) on exit."""
    log = open(log_path, "ab")  # noqa: SIM115 - held for the process's life, closed on exit
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
