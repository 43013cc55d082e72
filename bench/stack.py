"""The engine as the benchmarks run it, over the harness: its stores made ready, the Procfile's
web (gunicorn) and worker (Celery), the RevenueCat simulator, and the HTTP calls they take."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Child, Supervisor, child_env, gunicorn_argv, http_ok, wait_until

API_TOKEN = "bench-api-token"
WEBHOOK_AUTH = "Bearer bench-webhook-secret"
SIM_KEY = "sk_bench_simulator"


def stack_env(
    database_url: str,
    redis_url: str,
    instance: Path,
    *,
    provider_url: str = "http://127.0.0.1:9",
    sentry_dsn: str = "",
) -> dict[str, str]:
    """The engine's environment for the benchmark's stores and simulator."""
    return child_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REVENUECAT_API_URL": provider_url,
            "REVENUECAT_API_KEY": SIM_KEY,
            "REVENUECAT_WEBHOOK_AUTH": WEBHOOK_AUTH,
            "API_TOKEN": API_TOKEN,
            "CATALOG_PATH": str(ROOT / "config" / "catalog.toml"),
            "INSTANCE_PATH": str(instance),
            # The simulator is local: the provider budget is not what is measured.
            "PROVIDER_RATE_PER_MINUTE": "1000000",
            "SENTRY_DSN": sentry_dsn,
        }
    )


def ensure_database(url: str) -> None:
    """Create the benchmark's PostgreSQL database when it is missing (through ``postgres``)."""
    import psycopg

    base, _, name = url.replace("postgresql+psycopg://", "postgresql://").rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def prepare_stores(database_url: str, redis_url: str | None) -> None:
    """Create and migrate the database, empty every table and the Redis database (if given)."""
    import redis
    from sqlalchemy import create_engine, text

    from config.settings import Settings
    from persistence.database import upgrade_database
    from persistence.models import Base

    ensure_database(database_url)
    upgrade_database(Settings.from_env({"DATABASE_URL": database_url}))
    engine = create_engine(database_url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()


def start_web(
    sup: Supervisor,
    env: dict[str, str],
    *,
    port: int,
    workers: int,
    worker_class: str = "gevent",
    app: str = "web.app:create_app()",
    name: str = "web",
    options: tuple[str, ...] = (),
) -> Child:
    """The Procfile's web process (its gunicorn config file, gevent workers) on a loopback port,
    without an access log (it would be measured too); returns once /healthz answers."""
    argv = gunicorn_argv(
        app,
        port,
        "-c",
        "python:web.gunicorn_conf",
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        "--graceful-timeout",
        "5",
        *options,
    )
    web = sup.start(name, argv, env=env)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout_s=30, what=name, child=web)
    return web


def start_worker(sup: Supervisor, env: dict[str, str], *, concurrency: int, name: str = "celery") -> Child:
    """The Procfile's worker line (prefork, queues celery and sweep)."""
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
        f"bench{os.getpid()}-{name}@%h",
    ]
    return sup.start(name, argv, env=env)


def simulator_app() -> Any:
    """gunicorn's app for a simulator of its own (``start_simulator(..., gunicorn=True)``):
    one ``ProviderState``, ``BENCH_SIM_SEED`` keeping transaction ids of several apart."""
    from simulators.revenuecat.server import create_simulator_app
    from simulators.revenuecat.state import ProviderState

    state = ProviderState(id_seed=int(os.environ.get("BENCH_SIM_SEED", "0")))
    return create_simulator_app(state, api_key=SIM_KEY)


@dataclass
class Simulator:
    """A RevenueCat simulator in its own process, driven through its admin API."""

    child: Child
    url: str

    def ops(self, calls: list[tuple[str, dict[str, Any]]], *, threads: int = 4) -> None:
        """Run admin operations (``POST /_sim/<operation>``) a few at a time."""
        import requests

        local = threading.local()

        def one(call: tuple[str, dict[str, Any]]) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            operation, payload = call
            r = local.session.post(f"{self.url}/_sim/{operation}", json=payload, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"simulator {operation} {payload}: {r.status_code} {r.text[:200]}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, calls))

    def stats(self, log_tail: int = 0) -> dict[str, Any]:
        import requests

        return requests.get(f"{self.url}/_sim/stats", params={"log_tail": log_tail}, timeout=30).json()


def start_simulator(
    sup: Supervisor,
    *,
    port: int,
    name: str = "simulator",
    seed: int = 0,
    webhook_url: str | None = None,
    gunicorn: bool = False,
) -> Simulator:
    """A simulator on ``port``; with ``webhook_url`` it delivers each operation's webhook
    before answering it. ``gunicorn``: served by one gthread worker (4 threads, kept-alive
    connections) instead of the simulator's own threaded server, for request-heavy runs."""
    env = child_env({"BENCH_SIM_SEED": str(seed)})
    if gunicorn:
        argv = gunicorn_argv("bench.stack:simulator_app()", port, "--worker-class", "gthread", "--threads", "4")
        argv += ["--workers", "1", "--keep-alive", "75"]
    else:
        argv = [sys.executable, "-m", "simulators.revenuecat", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--api-key", SIM_KEY, "--id-seed", str(seed)]
        if webhook_url:
            argv += ["--webhook-url", webhook_url, "--webhook-auth", WEBHOOK_AUTH]
    child = sup.start(name, argv, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/_sim/stats?log_tail=0"), timeout_s=30, what=name, child=child)
    return Simulator(child, url)


def api_request(
    port: int,
    method: str,
    path: str,
    *,
    body: object = None,
    timeout_s: float = 40,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request to the web process with the API token: (status, JSON body, headers)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
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
