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
    python -m bench.long_poll --clients 200 --workers 1 --worker-class gevent
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_client_flows"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
API_TOKEN = "bench-api-token"
WEBHOOK_AUTH = "Bearer bench-webhook-secret"
SIM_KEY = "sk_bench_simulator"


# --- the stack: database, environment, gunicorn, celery ------------------------------------


def ensure_database(url: str) -> None:
    """Create the benchmark's own PostgreSQL database when missing (never the tests' one)."""
    import psycopg

    base, _, name = url.replace("postgresql+psycopg://", "postgresql://").rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def stack_env(
    database_url: str, redis_url: str, instance: Path, provider_url: str = "http://127.0.0.1:9"
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "SENTRY_DSN"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REVENUECAT_API_URL": provider_url,
            "REVENUECAT_API_KEY": SIM_KEY,
            "REVENUECAT_WEBHOOK_AUTH": WEBHOOK_AUTH,
            "API_TOKEN": API_TOKEN,
            "CATALOG_PATH": str(ROOT / "config" / "catalog.toml"),
            "INSTANCE_PATH": str(instance),
            # The simulator is local: the provider budget (480/min by default) is not what is measured.
            "PROVIDER_RATE_PER_MINUTE": "1000000",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def settings_from(env: dict[str, str]):
    from config.settings import Settings

    return Settings.from_env(env)


def reset_stores(env: dict[str, str]) -> None:
    """Migrate, empty every table and the Redis database."""
    import redis
    from sqlalchemy import delete

    from persistence.database import make_engine, upgrade_database
    from persistence.models import Base

    settings = settings_from(env)
    upgrade_database(settings)
    engine = make_engine(settings)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    engine.dispose()
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process started and stopped by this benchmark (its own process group)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - held for the process's life, closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_gunicorn(
    env: dict[str, str], workdir: Path, *, port: int, workers: int, worker_class: str, connections: int
) -> Process:
    """The Procfile's web line, on a loopback port (no access log: it would be measured too)."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        "--worker-connections",
        str(connections),
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "web.app:create_app()",
    ]
    web = Process("gunicorn", argv, env, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        web.check()
        try:
            status, _, _ = request(port, "GET", "/healthz", timeout=1)
            if status == 200:
                return web
        except OSError:
            pass
        time.sleep(0.1)
    web.stop()
    raise RuntimeError(f"gunicorn not ready:\n{web.tail()}")


def start_celery(env: dict[str, str], workdir: Path, *, concurrency: int) -> Process:
    """The Procfile's worker line (prefork)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.worker",
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "--loglevel=WARNING",
        "--without-mingle",
        "--without-gossip",
        "-Q",
        "celery,sweep",
        "-n",
        f"bench{os.getpid()}@%h",
    ]
    return Process("celery", argv, env, workdir)


def gunicorn_workers(master_pid: int) -> list:
    import psutil

    return psutil.Process(master_pid).children()


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: object = None,
    timeout: float = 40,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict, dict]:
    """One HTTP request with the API token: (status, JSON body, headers)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        ctype = response.getheader("Content-Type", "")
        parsed = json.loads(raw) if raw and ctype.startswith("application/json") else {}
        return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}
    finally:
        if own:
            conn.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.1f} ms"


# --- the long-poll benchmark ----------------------------------------------------------------


@dataclass
class Waiter:
    app_user_id: str
    etag: str = ""
    sent_at: float = 0.0
    answered_at: float = 0.0
    status: int = 0
    resources: list[str] = field(default_factory=list)
    error: str = ""


def long_poll(port: int, waiter: Waiter, wait_s: float, sent: threading.Barrier | None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=wait_s + 15)
    try:
        _status, _body, headers = request(port, "GET", f"/v1/users/{waiter.app_user_id}/access", conn=conn)
        waiter.etag = headers.get("etag", "").strip('"')
        path = f"/v1/users/{waiter.app_user_id}/access?wait={wait_s:g}&since={waiter.etag}"
        conn.request("GET", path, headers={"Authorization": f"Bearer {API_TOKEN}"})
        waiter.sent_at = time.monotonic()
        if sent is not None:
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

    total = 0
    for pid in pids:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED:
                total += 1
    return total


def database_connections(database_url: str) -> int:
    import psycopg

    base, _, name = database_url.replace("postgresql+psycopg://", "postgresql://").rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0])


def redis_clients(redis_url: str) -> int:
    """Connections to this Redis database (other databases of the server are not ours)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    return sum(1 for c in client.client_list() if str(c.get("db")) == db) - 1  # less this one


def grant(runtime, app_user_id: str, now_ms: int) -> float:
    """Commit a grant for one user the way every unit of work does; returns the commit time."""
    from persistence.models import Grant
    from persistence.unit_of_work import unit_of_work

    with unit_of_work(runtime.session_factory)() as uow:
        uow.session.add(
            Grant(
                customer_id=app_user_id,
                resource="course:H01ENB",
                mode="paid",
                expires_ms=None,
                sources='["bench"]',
                updated_ms=now_ms,
            )
        )
    return time.monotonic()


def run(args: argparse.Namespace) -> int:
    from services.clock import wall_clock_ms
    from services.wiring import Wiring

    ensure_database(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="bench-long-poll-"))
    env = stack_env(args.database_url, args.redis_url, workdir)
    reset_stores(env)
    port = free_port()
    web = start_gunicorn(
        env, workdir, port=port, workers=args.workers, worker_class=args.worker_class, connections=1000
    )
    runtime = Wiring(settings_from(env))
    try:
        pids = [p.pid for p in gunicorn_workers(web.proc.pid)]
        waiters = [Waiter(f"lp-{i:04d}") for i in range(args.clients)]
        sent = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=long_poll, args=(port, w, args.wait, sent), daemon=True) for w in waiters]
        started = time.monotonic()
        for t in threads:
            t.start()
        sent.wait(timeout=60)
        # All requests are sent; wait until the worker holds them all open.
        deadline = time.monotonic() + 20
        open_now = 0
        while time.monotonic() < deadline:
            open_now = connections_to(pids, port)
            if open_now >= args.clients:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # let every long-poll read and register
        connected_s = time.monotonic() - started
        import psutil

        procs = [psutil.Process(pid) for pid in pids]
        cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        idle_window = 2.0
        time.sleep(idle_window)
        cpu_idle = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu_before
        holding = {
            "open connections": connections_to(pids, port),
            "worker processes": len(pids),
            "OS threads per worker": [p.num_threads() for p in procs],
            "worker RSS (MiB)": [round(p.memory_info().rss / 2**20, 1) for p in procs],
            "database connections": database_connections(args.database_url),
            "redis connections (this database)": redis_clients(args.redis_url),
            "worker CPU while 200 wait (s per s)": round(cpu_idle / idle_window, 3),
        }
        still_waiting = sum(1 for w in waiters if not w.answered_at)
        health, reads = [], []
        for _ in range(args.probes):
            t0 = time.monotonic()
            request(port, "GET", "/healthz", timeout=10)
            health.append(time.monotonic() - t0)
            t0 = time.monotonic()
            request(port, "GET", "/v1/users/not-waiting/access", timeout=10)
            reads.append(time.monotonic() - t0)
        commit_at: dict[str, float] = {}
        for w in waiters:
            commit_at[w.app_user_id] = grant(runtime, w.app_user_id, wall_clock_ms())
        for t in threads:
            t.join(timeout=args.wait + 20)
        wake = [w.answered_at - commit_at[w.app_user_id] for w in waiters if w.answered_at and not w.error]
        ok = sum(1 for w in waiters if w.status == 200 and w.resources == ["course:H01ENB"])
        errors = [w.error for w in waiters if w.error]
    finally:
        runtime.close()
        web.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"Long-poll benchmark: {args.clients} clients waiting on GET /v1/users/<id>/access?wait={args.wait:g}")
    print(
        f"  gunicorn --worker-class {args.worker_class} --workers {args.workers} --worker-connections 1000 "
        f"(PostgreSQL {args.database_url.rsplit('/', 1)[-1]}, Redis {args.redis_url})"
    )
    print(
        f"  all {args.clients} sent and held open after {connected_s:.1f}s; still waiting before any grant: "
        f"{still_waiting}/{args.clients}"
    )
    for k, v in holding.items():
        print(f"  {k:<40} {v}")
    print(
        f"  while they wait, other requests: /healthz p50 {ms(health, 50)} p95 {ms(health, 95)}; "
        f"plain access read p50 {ms(reads, 50)} p95 {ms(reads, 95)} ({args.probes} each)"
    )
    print(f"  grants committed one by one; answered with the new access: {ok}/{args.clients}, errors: {len(errors)}")
    print(f"  commit -> answer received: p50 {ms(wake, 50)}  p95 {ms(wake, 95)}  max {ms(wake, 100)}")
    if errors:
        print(f"  first error: {errors[0]}")
    print(
        f"  command: python -m bench.long_poll --clients {args.clients} --workers {args.workers} "
        f"--worker-class {args.worker_class} --wait {args.wait:g}"
    )
    return 0 if ok == args.clients and still_waiting == args.clients else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.long_poll", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers (one is enough to hold them all)")
    p.add_argument("--worker-class", default="gevent")
    p.add_argument("--wait", type=float, default=30.0, help="the long-poll's wait, seconds (at most 30)")
    p.add_argument("--probes", type=int, default=50, help="other requests sent while the clients wait")
    p.add_argument("--database-url", default=DEFAULT_DB)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
