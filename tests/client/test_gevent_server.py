"""The Procfile's web process (gunicorn, gevent workers): one worker holds many long-polls and
keeps answering other requests; a committed grant ends the wait of its user; webhooks arriving
together are stored together (group commit on PostgreSQL), with Sentry on or off, and each is
answered as if alone. Behaviour only: how fast is bench/'s business."""

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

import pytest
import requests

from config.settings import PROJECT_ROOT
from persistence.models import Grant
from persistence.unit_of_work import unit_of_work
from tests.client.support import OPERATOR
from tests.support import inbox_ids_queued, settings_env, wait_for

CLIENTS = 20


def web_command(port: int, workers: int = 1) -> list[str]:
    """The Procfile's web line with its ${VAR:-default} expanded (the given workers and port)."""
    line = next(line for line in (PROJECT_ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    values = {"PORT": str(port), "WEB_CONCURRENCY": str(workers)}
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), line[len("web:") :])
    argv = shlex.split(line)
    assert argv[0] == "gunicorn" and "gevent" in argv
    return [sys.executable, "-m", "gunicorn", *argv[1:]]


@contextlib.contextmanager
def procfile_web(settings, tmp_path, workers: int = 1, started: list | None = None, env: dict | None = None):
    """The Procfile's web process on a free port, up; its base URL (and its master process
    appended to ``started``). Stopped on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        web_command(port, workers),
        cwd=PROJECT_ROOT,
        env={**settings_env(settings), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _up(base), timeout=30, what="gunicorn")
        if started is not None:
            started.append(proc)
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
    answers: dict[str, list[str]] = {}

    def poll(user: str) -> None:
        r = requests.get(f"{base}/v1/users/{user}/access?wait=30", headers=OPERATOR, timeout=40)
        answers[user] = [a["resource"] for a in r.json()["access"]]

    with procfile_web(settings, tmp_path) as base:
        threads = [threading.Thread(target=poll, args=(f"g{i}",)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # every long-poll is waiting now
        assert answers == {}
        # the worker is not tied up by the waiting clients: it answers, and they still wait
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert answers == {}
        for i in range(CLIENTS):
            with unit_of_work(runtime.session_factory)() as uow:
                uow.session.add(
                    Grant(
                        customer_id=f"g{i}",
                        resource="course:H01ENB",
                        mode="paid",
                        expires_ms=None,
                        sources="[]",
                        updated_ms=0,
                    )
                )
            user = f"g{i}"
            wait_for(lambda: user in answers, timeout=25, what=f"{user}'s answer")  # noqa: B023 - called here
            # woken by its own grant: every user granted so far has answered, no other has
            assert set(answers) == {f"g{k}" for k in range(i + 1)}
        for t in threads:
            t.join(30)
        assert answers == {f"g{i}": ["course:H01ENB"] for i in range(CLIENTS)}


@pytest.mark.parametrize("sentry", [False, True], ids=["sentry-off", "sentry-on"])
def test_concurrent_webhooks_on_one_gevent_worker_are_each_stored_and_enqueued_once(
    settings, runtime, tmp_path, sentry
):
    from sqlalchemy import func, select

    from persistence.models import InboxEvent
    from tests.conftest import WEBHOOK_AUTH

    # 40 distinct webhooks, the first 10 of them delivered twice at once
    deliveries = [f"evt-{i}" for i in range(40)] + [f"evt-{i}" for i in range(10)]
    answers: list[tuple[str, int, dict]] = []
    start = threading.Barrier(len(deliveries))

    def deliver(event_id: str) -> None:
        body = {"api_version": "1.0", "event": {"id": event_id, "type": "RENEWAL", "app_user_id": f"u-{event_id}"}}
        with requests.Session() as session:
            start.wait()
            r = session.post(
                f"{base}/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH}, timeout=30
            )
        answers.append((event_id, r.status_code, r.json()))

    # Sentry's integrations loaded in the web process (its DSN a port nothing listens on: the
    # SDK drops what it cannot send); the intake's path stays the same
    dsn = {"SENTRY_DSN": f"http://public@127.0.0.1:{free_port()}/1"} if sentry else {}
    with procfile_web(settings, tmp_path, env=dsn) as base:
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
        assert [b for b in mine if not b["duplicate"]] == [
            {"duplicate": False, "inbox_id": stored[event_id].id, "status": "received"}
        ]
    assert sum(1 for _e, _s, b in answers if b["duplicate"]) == 10
    # every stored row named by one queued message (rows stored together: one group message)
    assert sorted(inbox_ids_queued(settings)) == sorted(r.id for r in stored.values())
    if settings.database_url.startswith("postgresql"):
        # rows committed together share their transaction's timestamp: batches did form
        assert instants < len(stored)


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_each_web_worker_listens_on_its_own_socket_and_gets_a_share_of_the_connections(settings, runtime, tmp_path):
    """SO_REUSEPORT (web/gunicorn_conf.py): the kernel spreads connections over the workers.
    With one shared socket a burst of kept-alive connections mostly landed on one gevent worker
    and the other idled (bench/intake.py)."""
    import psutil

    masters: list[subprocess.Popen] = []
    with procfile_web(settings, tmp_path, workers=2, started=masters) as base:
        port = int(base.rsplit(":", 1)[1])
        master = psutil.Process(masters[0].pid)
        wait_for(
            lambda: len(master.children()) == 2 and all(_listening(w, port) for w in master.children()),
            timeout=30,
            what="both workers listening",
        )
        workers = master.children()
        assert not _listening(master, port)  # no shared socket held by the master
        sessions = [requests.Session() for _ in range(32)]
        try:
            for session in sessions:  # kept alive: each stays with the worker that accepted it
                assert session.get(f"{base}/healthz", timeout=5).status_code == 200
            held = {
                w.pid: sum(
                    1
                    for c in w.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
                )
                for w in workers
            }
        finally:
            for session in sessions:
                session.close()
        # hashed over 32 connections: all on one worker has a probability of 2**-31
        assert sum(held.values()) == 32 and min(held.values()) > 0, held


def _listening(proc, port: int) -> bool:
    import psutil

    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in proc.net_connections(kind="tcp")
    )


def test_after_a_hup_reload_the_new_workers_listen_and_answer(settings, runtime, tmp_path):
    """HUP (gunicorn's reload, a usual systemd ExecReload) reads the configuration again, where
    reuse_port is off, while the master holds no socket to hand the new workers: on_reload
    keeps each worker on its own socket, or the port would be left closed."""
    import psutil

    masters: list[subprocess.Popen] = []
    with procfile_web(settings, tmp_path, workers=2, started=masters) as base:
        port = int(base.rsplit(":", 1)[1])
        master = psutil.Process(masters[0].pid)
        wait_for(lambda: len(master.children()) == 2, timeout=30, what="two workers")
        before = {w.pid for w in master.children()}
        os.kill(master.pid, signal.SIGHUP)

        def reloaded() -> bool:
            workers = master.children()
            return (
                len(workers) == 2
                and not before & {w.pid for w in workers}
                and all(_listening(w, port) for w in workers)
            )

        wait_for(reloaded, timeout=30, what="two new workers listening")
        for _ in range(8):  # fresh connections, hashed over both new workers
            assert requests.get(f"{base}/healthz", timeout=5, headers={"Connection": "close"}).status_code == 200


def test_a_webhook_is_answered_while_other_connections_keep_a_worker_busy(settings, runtime, tmp_path):
    """gevent runs a greenlet until it would block, and a kept-alive connection whose next
    request is already there never blocks: without a yield between requests, clients that keep
    a worker busy (pipelined or instant requests) held a webhook for seconds (a /healthz flood
    held them 1-10 s). web/gunicorn_conf.py's pre_request lets what is waiting run first."""
    from tests.conftest import WEBHOOK_AUTH

    pipelined = 3000  # GET /healthz requests sent at once on each busy connection
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    received = [0, 0, 0, 0]  # bytes of answers each busy connection has had back

    def keep_busy(i: int, port: int, answer_len: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            sender = threading.Thread(target=conn.sendall, args=(request * pipelined,), daemon=True)
            sender.start()
            while received[i] < answer_len * pipelined:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received[i] += len(chunk)

    with procfile_web(settings, tmp_path) as base:
        port = int(base.rsplit(":", 1)[1])
        answer_len = _raw_answer_length(port, request)  # every /healthz answer has this length
        busy = [threading.Thread(target=keep_busy, args=(i, port, answer_len), daemon=True) for i in range(4)]
        for t in busy:
            t.start()
        time.sleep(0.3)  # the worker is working through the pipelined requests
        body = {"api_version": "1.0", "event": {"id": "evt-busy", "type": "RENEWAL", "app_user_id": "busy"}}
        r = requests.post(f"{base}/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH}, timeout=60)
        answered_meanwhile = sum(received) // answer_len
        for t in busy:
            t.join(60)
        assert sum(received) == 4 * pipelined * answer_len  # every pipelined request answered
    assert r.status_code == 200 and not r.json()["duplicate"]
    # answered while the busy connections were still being served, not after them
    assert answered_meanwhile < 4 * pipelined


def _raw_answer_length(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        head, _, rest = answer.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: *(\d+)", head)
        assert found is not None
        length = int(found.group(1))
        while len(rest) < length:
            rest += conn.recv(65536)
        return len(head) + 4 + length
