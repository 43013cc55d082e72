"""The Procfile's web process (gunicorn, gevent workers): one worker holds many long-polls and
keeps answering other requests; a committed grant ends the wait of its user; webhooks arriving
together are stored together (group commit on PostgreSQL) and each is answered as if alone."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def procfile_web(settings, tmp_path):  # noqa: ANN001, ANN201
    """The Procfile's web process on a free port, up; its base URL. Stopped on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(web_command(port), cwd=PROJECT_ROOT, env=settings_env(settings), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _up(base), timeout=30, what="gunicorn")
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_gevent_worker_holds_many_long_polls(settings, runtime, tmp_path):
    answers: dict[str, tuple[float, list[str]]] = {}

    def poll(user: str) -> None:
        r = requests.get(f"{base}/v1/users/{user}/access?wait=20", headers=OPERATOR, timeout=30)
        answers[user] = (time.monotonic(), [a["resource"] for a in r.json()["access"]])

    with procfile_web(settings, tmp_path) as base:
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


def test_concurrent_webhooks_on_one_gevent_worker_are_each_stored_and_enqueued_once(settings, runtime, tmp_path):
    import redis as redis_lib
    from sqlalchemy import func, select

    from engine.adapters.embedded_redis import redis_url
    from engine.adapters.models import InboxEvent
    from tests.conftest import WEBHOOK_AUTH

    # 40 distinct webhooks, the first 10 of them delivered twice at once
    deliveries = [f"evt-{i}" for i in range(40)] + [f"evt-{i}" for i in range(10)]
    answers: list[tuple[str, int, dict]] = []
    start = threading.Barrier(len(deliveries))

    def deliver(event_id: str) -> None:
        body = {"api_version": "1.0", "event": {"id": event_id, "type": "RENEWAL", "app_user_id": f"u-{event_id}"}}
        with requests.Session() as session:
            start.wait()
            r = session.post(f"{base}/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH}, timeout=30)
        answers.append((event_id, r.status_code, r.json()))

    with procfile_web(settings, tmp_path) as base:
        threads = [threading.Thread(target=deliver, args=(e,)) for e in deliveries]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    assert len(answers) == len(deliveries) and all(status == 200 for _e, status, _b in answers)
    with runtime.session_factory() as session:
        stored = {r.event_id: r for r in session.scalars(select(InboxEvent))}
        instants = session.scalar(select(func.count(func.distinct(InboxEvent.received_at))))
    assert set(stored) == set(deliveries) and all(r.status == "received" for r in stored.values())
    for event_id in set(deliveries):  # each stored once: one answer with its row, any other a duplicate
        mine = [b for e, _s, b in answers if e == event_id]
        assert [b for b in mine if not b["duplicate"]] == [{"duplicate": False, "inbox_id": stored[event_id].id, "status": "received"}]
    assert sum(1 for _e, _s, b in answers if b["duplicate"]) == 10
    assert redis_lib.Redis.from_url(redis_url(settings)).llen("celery") == 40  # one task per stored row
    if settings.database_url.startswith("postgresql"):
        # rows committed together share their transaction's timestamp: batches did form
        assert instants < len(stored)


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
