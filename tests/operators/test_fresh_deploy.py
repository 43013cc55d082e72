"""Every Procfile process starts from a fresh checkout (no instance/ folder, nothing untracked)
and keeps running: web answers, beat schedules, the worker runs what beat sends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from adapters.embedded_redis import redis_url
from config.settings import PROJECT_ROOT, Settings
from tests.support import wait_for

pytestmark = pytest.mark.slow


def fresh_checkout(into: Path) -> Path:
    """The tracked files, as a clone would have them (working-tree content), and the venv."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file() and not source.is_symlink():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    (into / ".venv").symlink_to((PROJECT_ROOT / ".venv").resolve())
    return into


def procfile(checkout: Path) -> dict[str, str]:
    lines = (checkout / "Procfile").read_text().splitlines()
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if ":" in line}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started(command: str, checkout: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def deploy_env(settings: Settings, checkout: Path, port: int) -> dict[str, str]:
    """What a platform gives the processes: the database and Redis URLs, the secrets, a port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "PYTHONPATH"))}
    env.update(
        PATH=f"{checkout / '.venv' / 'bin'}:{env.get('PATH', os.defpath)}",
        DATABASE_URL=settings.database_url,
        REDIS_URL=redis_url(settings),
        REVENUECAT_API_URL=settings.revenuecat_api_url,
        REVENUECAT_API_KEY="sk_check",
        REVENUECAT_WEBHOOK_AUTH="Bearer check",
        API_TOKEN="check-token",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="1",
        SWEEP_INTERVAL_S="2",  # so that beat has something to send within seconds
    )
    if settings.embedded_stand_ins():  # the tests' SQLite run: asked for explicitly, as operators must
        env["ALLOW_EMBEDDED"] = "1"
    return env


def test_every_procfile_process_starts_in_a_fresh_checkout_and_keeps_running(settings, tmp_path):
    checkout = fresh_checkout(tmp_path / "checkout")
    port = free_port()
    env = deploy_env(settings, checkout, port)
    migrate = subprocess.run(
        ["bash", "-c", "flask --app web.app:create_app migrate"],
        check=False,
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stderr
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "worker", "beat")}
    commands = procfile(checkout)
    assert set(commands) == set(logs)
    with (
        started(commands["web"], checkout, env, logs["web"]) as web,
        started(commands["worker"], checkout, env, logs["worker"]) as worker,
        started(commands["beat"], checkout, env, logs["beat"]) as beat,
    ):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), timeout=60, what="web to answer /readyz")
        wait_for(lambda: "Sending due task sweep" in logs["beat"].read_text(), timeout=60, what="beat to schedule")
        wait_for(
            lambda: "Task sweep.run[" in logs["worker"].read_text() and "succeeded" in logs["worker"].read_text(),
            timeout=60,
            what="the worker to run a scheduled sweep",
        )
        alive = {name: proc.poll() is None for name, proc in (("web", web), ("worker", worker), ("beat", beat))}
        assert alive == {"web": True, "worker": True, "beat": True}, {n: logs[n].read_text()[-2000:] for n in logs}
        ready = requests.get(f"{url}/readyz", timeout=5).json()
        assert ready["checks"] == {"database": "ok", "broker": "ok", "catalog": "ok"}
    assert not (checkout / "instance").exists()  # nothing needed a writable folder in the checkout


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
