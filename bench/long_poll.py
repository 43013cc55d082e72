"""Benchmark: 200 clients long-polling GET /v1/users/<id>/access?wait=30 at once, under gunicorn
with gevent workers, on PostgreSQL + Redis.

What it shows:

* every client is held open by ONE gunicorn worker process (no worker, thread or database
  connection per waiting client): open connections, the worker's OS threads, RSS, database
  connections and Redis connections are printed while the 200 wait;
* the worker still answers other requests at once meanwhile (``/healthz`` and a plain access
  read, p50/p95);
* when each user's grant is committed (one unit of work per user, through the same session
  factory as the workers, so the same after-commit notification), the waiting client answers:
  p50/p95/max from commit to answer received.

Loopback only, bounded (about 15 s with the defaults), stops everything it started.

    python -m bench.long_poll
    python -m bench.long_poll --clients 200 --workers 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from bench.harness import Figures, Supervisor, free_port, ms, tree, wait_until, workdir
from bench.stack import API_TOKEN, api_request, prepare_stores, stack_env, start_web

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_client_flows"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


@dataclass
class Waiter:
    app_user_id: str
    answered_at: float = 0.0
    status: int = 0
    resources: list[str] = field(default_factory=list)
    error: str = ""


def long_poll(port: int, waiter: Waiter, wait_s: float, sent: threading.Barrier) -> None:
    """Read the user's access and its ETag, then wait for a change since it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=wait_s + 15)
    try:
        _status, _body, headers = api_request(port, "GET", f"/v1/users/{waiter.app_user_id}/access", conn=conn)
        etag = headers.get("etag", "").strip('"')
        path = f"/v1/users/{waiter.app_user_id}/access?wait={wait_s:g}&since={etag}"
        conn.request("GET", path, headers={"Authorization": f"Bearer {API_TOKEN}"})
        sent.wait()
        response = conn.getresponse()
        raw = response.read()
        waiter.answered_at = time.monotonic()
        waiter.status = response.status
        waiter.resources = [a["resource"] for a in json.loads(raw)["access"]]
    except Exception as exc:
        waiter.error = repr(exc)
    finally:
        conn.close()


def connections_to(pids: list[int], port: int) -> int:
    import psutil

    return sum(
        1
        for pid in pids
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def database_connections(database_url: str) -> int:
    import psycopg

    base, _, name = database_url.replace("postgresql+psycopg://", "postgresql://").rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
        return int(row[0]) if row else 0


def redis_clients(redis_url: str) -> int:
    """Connections to this Redis database (other databases of the server are not ours)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    clients = cast("list[dict[str, Any]]", client.client_list())  # redis-py: sync replies typed Awaitable | reply
    count = sum(1 for c in clients if str(c.get("db")) == db) - 1  # less this one
    client.close()
    return count


def grant(wiring, app_user_id: str) -> float:
    """Commit a grant for one user the way every unit of work does; the time it was committed."""
    from persistence.models import Grant
    from persistence.unit_of_work import unit_of_work

    with unit_of_work(wiring.session_factory)() as uow:
        uow.session.add(
            Grant(
                customer_id=app_user_id,
                resource="course:H01ENB",
                mode="paid",
                expires_ms=None,
                sources='["bench"]',
                updated_ms=0,
            )
        )
    return time.monotonic()


def run(args: argparse.Namespace) -> Figures:
    import psutil

    from config.settings import Settings
    from services.wiring import Wiring

    prepare_stores(args.database_url, args.redis_url)
    with workdir("bench-long-poll-") as work, Supervisor(work, time_box_s=120) as sup:
        env = stack_env(args.database_url, args.redis_url, work)
        port = free_port()
        options = ("--worker-connections", "1000", "--timeout", "60")
        web = start_web(sup, env, port=port, workers=args.workers, options=options)
        wiring = Wiring(Settings.from_env(env))
        try:
            pids = tree(web.pid)[1:]
            waiters = [Waiter(f"lp-{i:04d}") for i in range(args.clients)]
            sent = threading.Barrier(args.clients + 1)
            threads = [
                threading.Thread(target=long_poll, args=(port, w, args.wait, sent), daemon=True) for w in waiters
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            sent.wait(timeout=60)
            wait_until(lambda: connections_to(pids, port) >= args.clients, timeout_s=20, what="all clients held")
            time.sleep(1.0)  # let every long-poll read and register
            connected_s = time.monotonic() - started
            procs = [psutil.Process(pid) for pid in pids]
            cpu = lambda: sum(p.cpu_times().user + p.cpu_times().system for p in procs)  # noqa: E731
            before, idle_s = cpu(), 2.0
            time.sleep(idle_s)
            holding = {
                "open connections": connections_to(pids, port),
                "worker processes": len(pids),
                "OS threads per worker": [p.num_threads() for p in procs],
                "worker RSS (MiB)": [round(p.memory_info().rss / 2**20, 1) for p in procs],
                "database connections": database_connections(args.database_url),
                "redis connections (this database)": redis_clients(args.redis_url),
                f"worker CPU while {args.clients} wait (s per s)": round((cpu() - before) / idle_s, 3),
            }
            still_waiting = sum(1 for w in waiters if not w.answered_at)
            health, reads = [], []
            for _ in range(args.probes):
                t0 = time.monotonic()
                api_request(port, "GET", "/healthz", timeout_s=10)
                health.append(time.monotonic() - t0)
                t0 = time.monotonic()
                api_request(port, "GET", "/v1/users/not-waiting/access", timeout_s=10)
                reads.append(time.monotonic() - t0)
            committed = {w.app_user_id: grant(wiring, w.app_user_id) for w in waiters}
            for t in threads:
                t.join(timeout=args.wait + 20)
        finally:
            wiring.close()
    wake = [w.answered_at - committed[w.app_user_id] for w in waiters if w.answered_at and not w.error]
    ok = sum(1 for w in waiters if w.status == 200 and w.resources == ["course:H01ENB"])
    errors = [w.error for w in waiters if w.error]
    print(f"Long-poll benchmark: {args.clients} clients waiting on GET /v1/users/<id>/access?wait={args.wait:g}")
    print(f"  gunicorn (the Procfile's config) -k gevent -w {args.workers} --worker-connections 1000")
    print(f"  all {args.clients} held open after {connected_s:.1f}s; still waiting before any grant: {still_waiting}")
    for k, v in holding.items():
        print(f"  {k:<40} {v}")
    if errors:
        print(f"  first error: {errors[0]}")
    figures = Figures("Long-poll")
    figures.add("clients held by the worker(s), then answered", f"{ok}/{args.clients}, {len(errors)} errors")
    figures.add("while they wait: /healthz p50 / p95", f"{ms(health, 50)} / {ms(health, 95)}")
    figures.add("while they wait: plain access read p50 / p95", f"{ms(reads, 50)} / {ms(reads, 95)}")
    figures.add("grant commit -> answer p50 / p95 / max", f"{ms(wake, 50)} / {ms(wake, 95)} / {ms(wake, 100)}")
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.long_poll", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers (one is enough to hold them all)")
    p.add_argument("--wait", type=float, default=30.0, help="the long-poll's wait, seconds (at most 30)")
    p.add_argument("--probes", type=int, default=50, help="other requests sent while the clients wait")
    p.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Redis database of its own (flushed)")
    args = p.parse_args(argv)
    run(args).print(f"python -m bench.long_poll --clients {args.clients} --workers {args.workers} --wait {args.wait:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
