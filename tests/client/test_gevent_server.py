"""The Procfile's web process (gunicorn, gevent workers): one worker holds many long-polls and
keeps answering other requests; a committed grant ends the wait of its user."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from config.settings import PROJECT_ROOT
from engine.adapters.inbox import unit_of_work
from engine.adapters.models import Grant
from tests.client.support import OPERATOR
from tests.support import settings_env, wait_for

CLIENTS = 20


def web_command(port: int) -> list[str]:
    """The Procfile's web line with its ${VAR:-default} expanded (one worker, the given port)."""
    line = next(l for l in (PROJECT_ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    values = {"PORT": str(port), "WEB_CONCURRENCY": "1"}
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), line[len("web:"):])
    argv = shlex.split(line)
    assert argv[0] == "gunicorn" and "gevent" in argv
    return [sys.executable, "-m", "gunicorn", *argv[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_gevent_worker_holds_many_long_polls(settings, runtime, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(web_command(port), cwd=PROJECT_ROOT, env=settings_env(settings), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    answers: dict[str, tuple[float, list[str]]] = {}

    def poll(user: str) -> None:
        r = requests.get(f"{base}/v1/users/{user}/access?wait=20", headers=OPERATOR, timeout=30)
        answers[user] = (time.monotonic(), [a["resource"] for a in r.json()["access"]])

    try:
        wait_for(lambda: _up(base), timeout=30, what="gunicorn")
        threads = [threading.Thread(target=poll, args=(f"g{i}",)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # every long-poll is waiting now
        assert answers == {}
        started = time.monotonic()
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0  # the worker is not tied up by the waiting clients
        committed = {}
        for i in range(CLIENTS):
            with unit_of_work(runtime.session_factory)() as store:
                store.session.add(Grant(customer_id=f"g{i}", resource="course:H01ENB", mode="paid", expires_ms=None,
                                        sources="[]", updated_ms=0))
            committed[f"g{i}"] = time.monotonic()
        for t in threads:
            t.join(30)
        assert len(answers) == CLIENTS
        for user, (at, resources) in answers.items():
            assert resources == ["course:H01ENB"] and at - committed[user] < 3.0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        log.close()


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
