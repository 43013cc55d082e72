"""Benchmark of the sweep's reconcile throughput in ONE process, on PostgreSQL + Redis against the
RevenueCat simulator (in its own process, gunicorn with one gthread worker).

``services.sweep.reconcile_customers(ids, wiring.sweep_reads)`` in chunks of 50 as the
``sweep.reconcile_batch`` task runs it, the budget unlimited so that it never waits:

  (a) unchanged snapshots: every customer reconciled once already, nothing changed since;
  (b) changed snapshots: every customer made a new purchase since its last reconcile, so the
      ledger, snapshot, grant and audit rows are written.

Each pass prints reconciles/s, the CPU spent per reconcile by this process, by its PostgreSQL
backends and by the simulator, the rows it wrote (a check: (a) writes none but the check time)
and the SQL it issued (counted by an engine event listener, which costs a little). Before them,
the provider round trip alone, for scale. Then the same two passes through a real Celery worker
(``--concurrency=1``, ``sweep.reconcile_batch`` tasks of 50 on the ``sweep`` queue, timed from
the first publish to the last customer's commit). Targets: >= 300/s unchanged, >= 100/s changed.

Uses its own database (created if missing, migrated, emptied) and Redis database (flushed):
do not point it at data you keep. About a minute; loopback only; stops what it started.

    python -m bench.sweep
    python -m bench.sweep --customers 500 --passes 2 --no-celery
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    CpuMeter,
    CpuSnapshot,
    Figures,
    Supervisor,
    child_env,
    free_port,
    say,
    tree,
    wait_until,
    workdir,
)
from bench.stack import SIM_KEY, prepare_stores, start_simulator, start_worker

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
UNLIMITED = 10**9
CHUNK = 50  # tasks.sweep.SWEEP_CHUNK
TARGET_UNCHANGED = 300.0  # reconciles/s per process
TARGET_CHANGED = 100.0
TABLES = ("ledger_transactions", "provider_snapshots", "grants", "audit_log", "identities", "subscribers")


def make_settings(database_url: str, redis_url: str, instance: Path, **changes: Any):
    from config.settings import Settings

    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "INSTANCE_PATH": str(instance)}
    return Settings.from_env({**env, "REVENUECAT_API_KEY": SIM_KEY}).with_(sentry_dsn="", **changes)


def table_counts(admin) -> dict[str, int]:
    from sqlalchemy import text

    with admin.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}


def pg_backends(admin) -> list[int]:
    """PostgreSQL backends of the benchmark's database but the benchmark's own bookkeeping one."""
    from sqlalchemy import text

    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name <> 'bench-admin'"
    with admin.connect() as conn:
        return list(conn.execute(text(sql)).scalars())


_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', re.I)


class SqlCounter:
    """Round trips the engine makes: statements by verb and table, pool checkouts (each pings
    first: pool_pre_ping) and commits. psycopg sends BEGIN as a round trip of its own."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self.statements: Counter[str] = Counter()
        self.checkouts = self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        match = _TABLE.search(statement)
        suffix = " FOR UPDATE" if verb == "SELECT" and "FOR UPDATE" in statement.upper() else ""
        self.statements[f"{verb} {match.group(1) if match else '?'}{suffix}"] += 1

    def _commit(self, conn) -> None:
        self.commits += 1

    def _checkout(self, dbapi_conn, record, proxy) -> None:
        self.checkouts += 1

    def snapshot(self) -> tuple[Counter[str], int, int]:
        return Counter(self.statements), self.checkouts, self.commits

    def describe(self, before: tuple[Counter[str], int, int], n: int) -> str:
        statements, checkouts, commits = self.snapshot()
        diff = statements - before[0]
        total = sum(diff.values())
        parts = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(diff.items(), key=lambda kv: -kv[1]))
        trips = (total + (checkouts - before[1]) + 2 * (commits - before[2])) / n
        return (
            f"SQL per reconcile: {total / n:.1f} statements ({parts}); pool checkouts (each pings) "
            f"{(checkouts - before[1]) / n:.1f}, commits {(commits - before[2]) / n:.1f}; ~{trips:.1f} round trips"
        )


@dataclass
class PassResult:
    label: str
    n: int
    wall_s: float
    counts: tuple[int, int, int] | None  # reconciled, changed, failed (None: not known, Celery)
    cpu: dict[str, float]  # seconds, by part
    writes: dict[str, int]
    sql: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else 0.0

    def line(self, worker: str = "self") -> str:
        per = lambda s: 1000.0 * s / max(1, self.n)  # noqa: E731
        short = {"ledger_transactions": "ledger", "provider_snapshots": "snapshots", "audit_log": "audit"}
        written = ", ".join(f"{short.get(k, k)} +{v}" for k, v in self.writes.items() if v and k != "subscribers")
        busy = self.cpu.get(worker, 0.0)
        ceiling = self.n / busy if busy > 0 else float("inf")
        counts = f"ok {self.counts[0]}, changed {self.counts[1]}, failed {self.counts[2]}; " if self.counts else ""
        return (
            f"{self.label:<48} {self.n:>5} in {self.wall_s:6.2f} s = {self.rate:7.1f}/s (load {os.getloadavg()[0]:.1f})  "
            f"CPU ms/reconcile: worker {per(busy):.2f} (CPU-bound ceiling {ceiling:.0f}/s), postgres "
            f"{per(self.cpu.get('pg', 0)):.2f}, simulator {per(self.cpu.get('sim', 0)):.2f}  "
            f"{counts}rows written: {written or 'none'}" + (f"\n{'':>10}{self.sql}" if self.sql else "")
        )


@dataclass
class Context:
    admin: Any
    meter: CpuMeter
    wiring: Any
    sql: SqlCounter

    def measured(self, label: str, ids: list[str], run) -> PassResult:
        rows, sql, before = table_counts(self.admin), self.sql.snapshot(), self.meter.snapshot()
        t0 = time.perf_counter()
        counts = run(ids)
        wall = time.perf_counter() - t0
        spent = self.meter.seconds(before, self.meter.snapshot())
        after = table_counts(self.admin)
        writes = {k: after[k] - rows[k] for k in after}
        return PassResult(
            label, len(ids), wall, counts, spent, writes, self.sql.describe(sql, len(ids)) if counts else ""
        )


def in_process(ctx: Context):
    """``reconcile_customers`` over ``ids`` in chunks, in this process."""
    from services.sweep import reconcile_customers

    def run(ids: list[str]) -> tuple[int, int, int]:
        reconciled = changed = failed = 0
        for start in range(0, len(ids), CHUNK):
            result = reconcile_customers(ids[start : start + CHUNK], ctx.wiring.sweep_reads)
            if result.deferred:
                raise RuntimeError(f"budget deferred {len(result.deferred)} customers in an unlimited run")
            reconciled, changed, failed = (
                reconciled + result.reconciled,
                changed + result.changed,
                failed + result.failed,
            )
        return reconciled, changed, failed

    return run


def provider_baseline(ctx: Context, ids: list[str]) -> None:
    """The provider round trip alone (requests as the engine does it; a bare urllib3 pool, the
    HTTP client's floor; requests plus the budget's Redis take), for scale."""
    import json
    from urllib.parse import quote

    import urllib3

    pool = urllib3.connection_from_url(ctx.wiring.settings.revenuecat_api_url, maxsize=1)
    headers = {"Authorization": f"Bearer {SIM_KEY}", "Accept": "application/json"}

    def bare(app_user_id: str) -> object:
        return json.loads(pool.request("GET", f"/v1/subscribers/{quote(app_user_id, safe='')}", headers=headers).data)

    for label, get in (
        ("GET /v1/subscribers only (requests)", ctx.wiring.provider.get_subscriber),
        ("GET only, bare urllib3 pool (floor)", bare),
        ("GET + rate budget take (Redis)", ctx.wiring.budgeted_provider("sweep", max_wait_s=5).get_subscriber),
    ):
        before: CpuSnapshot = ctx.meter.snapshot()
        t0 = time.perf_counter()
        for customer_id in ids:
            get(customer_id)
        wall = time.perf_counter() - t0
        spent = ctx.meter.seconds(before, ctx.meter.snapshot())
        n = len(ids)
        say(
            f"{label:<48} {n:>5} in {wall:6.2f} s = {n / wall:7.1f}/s   CPU ms/request: this process "
            f"{1000 * spent['self'] / n:.2f}, simulator {1000 * spent['sim'] / n:.2f}"
        )


def purchases(ids: list[str], product: str, *, subscription: bool = False) -> list[tuple[str, dict[str, Any]]]:
    operation = "purchase_subscription" if subscription else "purchase_non_renewing"
    return [(operation, {"app_user_id": i, "product_id": product}) for i in ids]


def through_celery(ctx: Context, celery_app, timeout_s: float):
    """``sweep.reconcile_batch`` tasks of CHUNK on the sweep queue; done when every customer's
    check time is past the first publish."""
    from sqlalchemy import text

    from services.clock import wall_clock_ms
    from tasks.names import SWEEP_QUEUE, SWEEP_RECONCILE_BATCH

    def run(ids: list[str]) -> None:
        start_ms = wall_clock_ms()
        for start in range(0, len(ids), CHUNK):
            celery_app.send_task(SWEEP_RECONCILE_BATCH, args=(ids[start : start + CHUNK],), queue=SWEEP_QUEUE)
        query = text("SELECT count(*) FROM subscribers WHERE customer_id = ANY(:ids) AND last_checked_ms >= :t")

        def done() -> bool:
            with ctx.admin.connect() as conn:
                return int(conn.execute(query, {"ids": ids, "t": start_ms}).scalar_one()) >= len(ids)

        wait_until(done, timeout_s=timeout_s, what=f"{len(ids)} reconciles through Celery", every_s=0.02)

    return run


def run(args: argparse.Namespace, sup: Supervisor, instance: Path) -> Figures:
    from sqlalchemy import create_engine

    from services.wiring import Wiring
    from tasks.celery_app import create_celery

    prepare_stores(args.database_url, args.redis_url)
    admin = create_engine(args.database_url, pool_size=2, connect_args={"application_name": "bench-admin"})
    sim = start_simulator(sup, port=free_port(), name="simulator", seed=1, gunicorn=True)
    settings = make_settings(
        args.database_url, args.redis_url, instance, revenuecat_api_url=sim.url, provider_rate_per_minute=UNLIMITED
    )
    wiring = Wiring(settings)
    worker_pids: list[int] = []
    meter = CpuMeter(
        {
            "self": lambda: [os.getpid()],
            "sim": lambda: tree(sim.child.pid),
            "pg": lambda: pg_backends(admin),
            "worker": lambda: [p for w in worker_pids for p in tree(w)],
        }
    )
    ctx = Context(admin, meter, wiring, SqlCounter(wiring.db))
    ids = [f"tp-{i:06d}" for i in range(args.customers)]
    warm = [f"tpw-{i:04d}" for i in range(CHUNK)]
    sim.ops(purchases(ids + warm, "premium_monthly", subscription=True))
    say(f"simulator {sim.url}: {len(ids) + len(warm)} customers with a monthly subscription")
    ctx.measured("warm-up", warm, in_process(ctx))  # imports, pools, caches
    provider_baseline(ctx, ids[: min(len(ids), 400)])
    say(ctx.measured("first sight (new customers, all rows written)", ids, in_process(ctx)).line())
    unchanged, changed = [], []
    for k in range(args.passes):
        unchanged.append(ctx.measured(f"(a) unchanged snapshot, pass {k + 1}", ids, in_process(ctx)))
        say(unchanged[-1].line())
    for k, product in zip(range(args.passes), ["h01enb", "geometry_pack_30"] * args.passes, strict=False):
        sim.ops(purchases(ids, product))
        changed.append(ctx.measured(f"(b) changed snapshot (+{product}), pass {k + 1}", ids, in_process(ctx)))
        say(changed[-1].line())
    figures = Figures("Sweep reconcile throughput")
    u, c = statistics.median(p.rate for p in unchanged), statistics.median(p.rate for p in changed)
    figures.add(
        "reconciles/s, unchanged snapshots (1 process)",
        f"{u:.0f}/s",
        f">= {TARGET_UNCHANGED:.0f}/s",
        u >= TARGET_UNCHANGED,
    )
    figures.add(
        "reconciles/s, changed snapshots (1 process)", f"{c:.0f}/s", f">= {TARGET_CHANGED:.0f}/s", c >= TARGET_CHANGED
    )
    if args.celery:
        say("-- the same through a Celery worker (prefork, --concurrency=1, sweep.reconcile_batch of 50) --")
        worker = start_worker(sup, child_env(settings.to_env()), concurrency=1, name="celery-worker")
        worker_pids.append(worker.pid)
        celery_app = create_celery(settings)
        ctx.measured("warm-up", warm, through_celery(ctx, celery_app, timeout_s=90))
        passes: tuple[tuple[str, str, float, str | None], ...] = (
            ("a", "unchanged", TARGET_UNCHANGED, None),
            ("b", "changed", TARGET_CHANGED, "geometry_pack_30"),
        )
        for mark, kind, target, bought in passes:
            if bought:
                sim.ops(purchases(ids, bought))
            p = ctx.measured(f"({mark}) {kind} snapshot, Celery worker", ids, through_celery(ctx, celery_app, 120))
            say(p.line(worker="worker"))
            figures.add(
                f"reconciles/s, {kind}, Celery worker concurrency=1",
                f"{p.rate:.0f}/s",
                f">= {target:.0f}/s",
                p.rate >= target,
            )
        celery_app.close()
    wiring.close()
    admin.dispose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Redis database of its own (flushed)")
    parser.add_argument("--customers", type=int, default=500, help="customers per pass")
    parser.add_argument("--passes", type=int, default=2, choices=[1, 2, 3, 4], help="passes of each kind")
    parser.add_argument("--no-celery", dest="celery", action="store_false", help="skip the Celery worker passes")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    with workdir("bench-sweep-", keep=args.keep) as instance, Supervisor(instance, time_box_s=600) as sup:
        say(f"bench.sweep: database {args.database_url}, redis {args.redis_url}")
        figures = run(args, sup, instance)
    figures.print(
        f"python -m bench.sweep --customers {args.customers} --passes {args.passes}"
        + ("" if args.celery else " --no-celery")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
