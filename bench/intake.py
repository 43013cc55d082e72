"""Benchmark of the webhook intake (POST /webhooks/revenuecat) on PostgreSQL + Redis under gunicorn.

Runs side by side, under identical gunicorn settings (by default the Procfile's: its config
file, gevent workers, one per core) and the same load:

* ``intake``: the real app (``web.app:create_app()``): authenticate, store the raw body and
  commit, publish the ``inbox.process`` task, answer 200;
* ``intake+sentry``: the same with SENTRY_DSN pointed at a local receiver that this benchmark
  starts (bench/sentry_receiver.py): Sentry's integrations loaded, nothing leaving the machine;
* ``bare``: a Flask endpoint that only parses the JSON (``bench.bare_app:create_app()``);
* ``bare+sentry``: the same with Sentry set up as the engine's web process does, the same DSN.

For each app: webhooks/s at the maximum rate (closed loop, bench/webhook_load.py) with its
p50/p95/p99 latency, then an open-loop run paced at half the intake's maximum. The apps take
turns in interleaved slices so that they meet the same machine. After every slice it counts in
PostgreSQL and Redis what the intake stored and queued: each 200 answer must have left exactly
one row, named by exactly one queued message (``inbox.process`` for a row stored alone,
``inbox.process_group`` for the rows of one commit; no Celery worker runs). It shows where the CPU went (gunicorn,
PostgreSQL, Redis, the load generator, interrupts, anything else on the machine): on a 2-core
machine shared with other work the figures only mean something when "other" stays near 0.

Loopback only, bounded (about three minutes with the defaults); wrk is needed for the max-rate
runs (``apt-get install wrk``; without it a Python client takes over, and more CPU).

    python -m bench.intake
    python -m bench.intake --apps intake,bare --duration 12 --half-duration 12
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from bench.harness import (
    CpuMeter,
    Supervisor,
    free_port,
    load_line,
    machine_busy,
    named,
    tree,
    wait_quiet,
    workdir,
)
from bench.intake_report import TARGET_RATIO, report
from bench.sentry_receiver import SentryReceiver
from bench.stack import prepare_stores, stack_env, start_web
from bench.webhook_load import ID_MARK, Load, RunResult, run_python_client, run_wrk, webhook_template, wrk_version

APPS = {  # name: (gunicorn app, SENTRY_DSN set)
    "intake": ("web.app:create_app()", False),
    "intake+sentry": ("web.app:create_app()", True),
    "bare": ("bench.bare_app:create_app()", False),
    "bare+sentry": ("bench.bare_app:create_app(sentry=True)", True),
}
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


class Stores:
    """What the intake left in PostgreSQL (inbox_events) and Redis (the ``celery`` list)."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        import redis
        from sqlalchemy import create_engine

        self.engine = create_engine(database_url, pool_size=1, max_overflow=0)
        self.redis = redis.Redis.from_url(redis_url)

    def mark(self) -> tuple[int, int, int, int]:
        """(rows, rows 'received', messages queued, last inbox id) now."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows, received, last = conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'received'), coalesce(max(id), 0) FROM inbox_events"
                )
            ).one()
        queued = cast(int, self.redis.llen("celery"))  # redis-py types sync replies as Awaitable | reply
        return int(rows), int(received), queued, int(last)

    def since(self, before: tuple[int, int, int, int]) -> tuple[int, int, int, int, int]:
        """(rows, received, rows named by the messages queued, transactions that stored the
        rows, rows named by no message) added since ``before``. PostgreSQL's xmin is the id of
        the transaction that inserted a row (nothing updates them here: no worker runs)."""
        from sqlalchemy import text

        rows, received, queued, _last = self.mark()
        with self.engine.connect() as conn:
            commits = conn.execute(
                text("SELECT count(DISTINCT xmin::text) FROM inbox_events WHERE id > :last"), {"last": before[3]}
            ).scalar_one()
            new_ids = set(
                conn.execute(text("SELECT id FROM inbox_events WHERE id > :last"), {"last": before[3]}).scalars()
            )
        named = self.named_rows(queued - before[2])
        return rows - before[0], received - before[1], len(named), int(commits), len(new_ids - set(named))

    def named_rows(self, newest: int) -> list[int]:
        """The inbox ids the ``newest`` messages queued name (LPUSH: the newest come first)."""
        import base64
        import json

        ids: list[int] = []
        raw_messages = cast(list[bytes], self.redis.lrange("celery", 0, newest - 1)) if newest > 0 else []
        for raw in raw_messages:
            (key,), _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.extend(key if isinstance(key, list) else [key])
        return ids

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


class CommitProbe:
    """The disk's share of the intake's tail latency, measured in the same run: one single-row
    INSERT and commit at a time (``rate``/s) on its own connection while the bare app (which
    never touches PostgreSQL) is under paced load. Every webhook stored meanwhile waits for the
    same WAL flushes."""

    TABLE = "bench_commit_probe"

    def __init__(self, database_url: str, rate: float = 100.0) -> None:
        self.dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.interval = 1.0 / rate
        self.latencies_us: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> CommitProbe:
        import psycopg

        self._conn = psycopg.connect(self.dsn, autocommit=True)
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (id bigserial PRIMARY KEY)")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            started = time.perf_counter()
            self._conn.execute(f"INSERT INTO {self.TABLE} DEFAULT VALUES")
            self.latencies_us.append((time.perf_counter() - started) * 1e6)
            next_at = max(next_at + self.interval, time.perf_counter())
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.execute(f"DROP TABLE IF EXISTS {self.TABLE}")
        self._conn.close()


def connections_per_worker(master_pid: int, port: int) -> list[int]:
    """Established connections on ``port`` held by each worker: how the kernel (SO_REUSEPORT,
    web/gunicorn_conf.py) shared the load's connections out."""
    import psutil

    counts = []
    for pid in tree(master_pid)[1:]:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        counts.append(sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port))
    return sorted(counts, reverse=True)


@dataclass
class Bench:
    """The servers up at once (an idle one only sleeps), measured in interleaved slices."""

    args: argparse.Namespace
    stores: Stores
    work: Path
    ports: dict[str, int] = field(default_factory=dict)
    masters: dict[str, int] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    probe_us: list[float] = field(default_factory=list)  # the commit probe's latencies

    def load(self, app: str, mode: str, duration: float, rate: float, tag: str) -> Load:
        tag = f"{self.run_id}-{app}-{tag}"
        return Load(
            self.ports[app], mode, duration, self.args.connections, rate, tag, self.work / "webhook.json", self.work
        )

    def max_run(self, load: Load, meter: CpuMeter | None = None) -> RunResult:
        return (run_wrk if self.args.wrk else run_python_client)(load, meter)

    def measured(self, app: str, mode: str, duration: float, rate: float, tag: str) -> RunResult:
        port, master = self.ports[app], self.masters[app]
        meter = CpuMeter(
            {
                "server": lambda: tree(master),
                "postgres": lambda: named("postgres"),
                "redis": lambda: named("redis-server"),
                "loadgen": lambda: [*named("wrk"), os.getpid()],
            }
        )
        split: list[int] = []
        counter = threading.Timer(0.5, lambda: split.extend(connections_per_worker(master, port)))
        counter.start()
        load = self.load(app, mode, duration, rate, tag)
        before = self.stores.mark()
        if mode == "max":
            result = self.max_run(load, meter)
        elif app == "bare":  # the disk's share, measured while PostgreSQL has nothing else to do
            with CommitProbe(self.args.database_url) as probe:
                result = run_python_client(load, meter)
            self.probe_us.extend(probe.latencies_us)
        else:
            result = run_python_client(load, meter)
        counter.join()
        result.cpu, result.split = meter.window_cores(), split
        if not app.startswith("bare"):
            rows, received, queued, commits, unnamed = self.stores.since(before)
            result.stored = (rows, commits, queued)
            result.errors["received_rows"] = rows - received  # stays 0: none ignored or malformed
            result.errors["unnamed_rows"] = unnamed  # stays 0: every row's task queued
        if mode == "paced":
            result.target_rate = round(rate, 1)
        return result

    def interleaved(self, mode: str, total_s: float, rate: float) -> dict[str, RunResult]:
        apps, rounds = self.args.apps, self.args.rounds
        slices: dict[str, list[RunResult]] = {app: [] for app in apps}
        for r in range(rounds):
            for app in apps[r % len(apps) :] + apps[: r % len(apps)]:  # each app goes first in turn
                print(f"  {mode:>5} {app:<14} slice {r + 1}/{rounds}", flush=True)
                slices[app].append(self.measured(app, mode, total_s / rounds, rate, f"{mode}{r}"))
        return {app: RunResult.combine(xs) for app, xs in slices.items()}


def run(args: argparse.Namespace) -> int:
    with workdir("bench-intake-", keep=args.keep) as work, Supervisor(work, time_box_s=480) as sup:
        (work / "webhook.json").write_text(webhook_template())
        body_bytes = len(webhook_template().replace(ID_MARK, "xxxxxxxx-max-1-12345").encode())
        print(f"preparing {args.database_url} and {args.redis_url} ...", flush=True)
        prepare_stores(args.database_url, args.redis_url)
        bench = Bench(args, Stores(args.database_url, args.redis_url), work)
        try:
            with SentryReceiver() as sentry:
                options = ("--backlog", "2048", "--keep-alive", "5", "--worker-tmp-dir", "/dev/shm")
                for app in args.apps:
                    gunicorn_app, with_sentry = APPS[app]
                    dsn = sentry.dsn if with_sentry else ""
                    env = stack_env(args.database_url, args.redis_url, work / "instance", sentry_dsn=dsn)
                    bench.ports[app] = free_port()
                    print(f"starting {app} on port {bench.ports[app]} ...", flush=True)
                    web = start_web(
                        sup,
                        env,
                        port=bench.ports[app],
                        workers=args.workers,
                        app=gunicorn_app,
                        name=app,
                        options=options,
                    )
                    bench.masters[app] = web.pid
                for app in args.apps:  # unmeasured: imports, pools, caches
                    bench.max_run(bench.load(app, "max", args.warmup, 0, "warm"))
                at_max = bench.interleaved("max", args.duration, 0)
                base = at_max["intake"] if "intake" in at_max else at_max[args.apps[0]]
                at_half = bench.interleaved("paced", args.half_duration, args.half_rate or base.ok_rate / 2)
                envelopes = sentry.envelopes
        finally:
            bench.stores.close()
    results = {app: (at_max[app], at_half[app]) for app in args.apps}
    return report(results, args, loadgen_desc(args), body_bytes, bench.probe_us, envelopes)


def loadgen_desc(args: argparse.Namespace) -> str:
    at_max = f"{args.wrk} with bench/wrk_webhooks.lua" if args.wrk else "Python asyncio client (wrk missing)"
    return (
        f"max rate: closed loop, {at_max}, {args.connections} connections; half rate: open loop, Python asyncio "
        "client (each webhook due at t0 + i/rate, sent on an idle kept-alive connection or a new one), latency "
        "counted from each webhook's due time"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.intake",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Redis database of its own (flushed)")
    p.add_argument("--apps", default=",".join(APPS), help=f"comma-separated, from: {', '.join(APPS)}")
    p.add_argument("--duration", type=float, default=12.0, help="seconds at max rate, per app")
    p.add_argument("--half-duration", type=float, default=12.0, help="seconds at half rate, per app")
    p.add_argument("--rounds", type=int, default=4, help="slices each duration is cut into, the apps taking turns")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per app first")
    p.add_argument("--half-rate", type=float, default=None, help="webhooks/s paced (default: half the first app's max)")
    p.add_argument("--connections", type=int, default=16, help="connections at max rate (one wrk thread each)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers (the Procfile's)")
    p.add_argument("--loadgen", choices=("auto", "python"), default="auto", help="max rate: wrk when installed")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S", help="first wait up to S s for an idle machine"
    )
    p.add_argument("--keep", action="store_true", help="keep the gunicorn logs and wrk output")
    args = p.parse_args(argv)
    args.apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if set(args.apps) - set(APPS) or not args.apps:
        p.error(f"--apps: choose from {', '.join(APPS)}")
    if args.rounds < 1 or min(args.duration, args.half_duration) / args.rounds < 2:
        p.error("each slice (--duration or --half-duration / --rounds) must last at least 2 s")
    if args.duration + args.half_duration > 60:
        p.error("--duration and --half-duration may add up to at most 60 s (the run stays bounded)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.wrk = wrk_version() if args.loadgen == "auto" else None
    if not args.wrk and args.loadgen == "auto":
        print("NOTE: wrk is not installed (apt-get install wrk): the Python client takes over, lowering the figures")
    if args.wait_quiet:
        print(f"waiting up to {args.wait_quiet:g} s for a quiet machine ...", flush=True)
        wait_quiet(args.wait_quiet)
    busy = machine_busy(1.0)
    print(f"before the run: {load_line()}, {busy:.2f} cores busy over the last second", flush=True)
    started = time.monotonic()
    code = run(args)
    print(f"(total {time.monotonic() - started:.0f} s; at least {TARGET_RATIO:.0%} of bare is the target)")
    return code


if __name__ == "__main__":
    sys.exit(main())
