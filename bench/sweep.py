"""Benchmark of the sweep (issue 4, point 8) on PostgreSQL + Redis against the RevenueCat simulator.

    python -m bench.sweep            # everything, about 3 minutes (time box 345 s), loopback only
    python -m bench.sweep --help

Three measurements, printed with their targets:

1. Reconcile throughput of ONE process (``reconcile_customers(ids, sweep_reads)``, chunks of 50
   like ``engine.reconcile_batch``, budget 10**9/min so it never waits) against a simulator that
   runs in its own process (gunicorn, one gthread worker over one ``ProviderState``, populated
   through its admin API ``POST /_sim/<operation>``):
     (a) unchanged snapshots: every customer reconciled once already, nothing changed since;
     (b) changed snapshots: every customer made a new purchase since its last reconcile, so the
         ledger, snapshot, grant and audit rows are written.
   Each pass also reports the CPU spent per reconcile by this process, by its PostgreSQL backend
   and by the simulator, the rows it wrote (sanity check: (a) writes none but the check time)
   and the SQL it issued (counted by an engine event listener, which costs ~1-2 %). The same
   two passes are then run through a real Celery worker (``--concurrency=1``,
   ``engine.reconcile_batch`` tasks of 50 on the ``sweep`` queue, timed from the first publish
   to the last customer's commit). When a figure misses its target the pass is repeated under
   py-spy (sampling this process, idle frames included) and the time is broken down.
   Targets: >= 300/s unchanged, >= 100/s changed.

2. Provider requests per minute versus the budget when the budget is the limit: budget
   ``--budget``/min (default 120), two scenarios run side by side for ``--rate-seconds`` (default
   120 s, a whole number of minutes so that "per whole run" is not skewed by the window's burst
   at each minute), each with its own simulator and its own budget key in Redis, two competing
   worker processes each holding its own ``RateBudget`` instance:
     A. two sweep workers (``reconcile_customers``, sweep priority);
     B. one sweep worker and one event-priority worker (``reconcile_user`` through
        ``budgeted_provider("event")``), both wanting more than the whole budget.
   Counted from the simulator's request log (its own clock, as the provider would): requests per
   minute over the whole run, utilisation, the mean and the maximum over every 60 s window, and
   the shortest time in which budget+1 requests arrived. Workers wait for slots in the budget
   (``max_wait_s`` 65 s) and stop when the next slot would come after the run's end.
   Target: 95-100 % used, never over (max in any 60 s window <= budget).

3. ``select_due(limit=500)`` at 10,000 and 1,000,000 rows in ``subscribers`` (bulk-inserted with
   INSERT ... SELECT generate_series, next_check_ms spread over [now-2h, now+22h) so ~8 % are
   due, ANALYZE after each insert): median of ``--select-runs`` runs (each run's lease is undone
   untimed so every run sees the same due set), plus EXPLAIN (ANALYZE, BUFFERS) of the SELECT
   and the UPDATE it issues. Target: the same order of magnitude at both sizes. This runs while
   part 2 runs (its workers spend nearly all the time asleep waiting for budget).

Uses the database ``bench`` (created if missing, migrated, its tables TRUNCATEd at the start and
at the end) and Redis db 11 (FLUSHDB at the start and the end): do not point it at data you keep.
Every child process (simulators, rate workers, the Celery worker, py-spy) is stopped on exit, on
Ctrl-C/SIGTERM, and by a watchdog at ``--time-box`` + 60 s.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
API_KEY = "sk_bench_sweep"
UNLIMITED = 10**9

TARGET_UNCHANGED = 300.0  # reconciles/s per worker process
TARGET_CHANGED = 100.0
TARGET_UTIL_MIN = 95.0  # % of the budget
SELECT_LIMIT = 500
CHUNK = 50  # tasks.sweep.SWEEP_CHUNK
READY_KEY, START_KEY = "bench:sweep:rate:ready", "bench:sweep:rate:start"
WINDOW_MS = 60_000
DUE_SPAN_MS = 2 * 3600 * 1000  # generated rows: next check in [now - 2 h, now + 22 h)
CHECK_SPAN_MS = 24 * 3600 * 1000

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def wall_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# Child processes


class Children:
    """Every process this benchmark starts, stopped by pid (never by name)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen:
        out = open(log, "ab") if log else (stdout if stdout is not None else subprocess.DEVNULL)  # noqa: SIM115 - held for the process's life
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if log else None)
        self.add(name, proc)
        return proc

    def add(self, name: str, proc: subprocess.Popen) -> None:
        with self._lock:
            self.procs.append((name, proc))

    def stop(self, proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        with self._lock:
            procs = list(reversed(self.procs))
        for _name, proc in procs:
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=8.0)


CHILDREN = Children()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "SENTRY_DSN"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------------
# The simulator in its own process


def simulator_app():
    """The RevenueCat simulator over one ProviderState (``BENCH_SIM_SEED`` keeps transaction ids
    of several simulators apart: the ledger is keyed by transaction id)."""
    from simulators.revenuecat.server import create_simulator_app
    from simulators.revenuecat.state import ProviderState

    state = ProviderState(id_seed=int(os.environ.get("BENCH_SIM_SEED", "1")))
    return create_simulator_app(state, api_key=os.environ.get("BENCH_SIM_API_KEY", API_KEY))


@dataclass
class Sim:
    name: str
    url: str
    proc: subprocess.Popen
    worker_pid: int

    def _session(self):
        import requests

        return requests.Session()

    def ops(self, calls: list[tuple[str, dict[str, Any]]], *, threads: int = 4) -> None:
        """Run admin operations (``POST /_sim/<operation>``) in a few threads."""
        local = threading.local()

        def one(call: tuple[str, dict[str, Any]]) -> None:
            if not hasattr(local, "s"):
                local.s = self._session()
            operation, payload = call
            r = local.s.post(f"{self.url}/_sim/{operation}", json=payload, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"simulator {operation} {payload}: {r.status_code} {r.text[:200]}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, calls))

    def stats(self, log_tail: int = 0) -> dict[str, Any]:
        import requests

        return requests.get(f"{self.url}/_sim/stats", params={"log_tail": log_tail}, timeout=30).json()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.worker_pid)


def start_simulator(name: str, seed: int, log_dir: Path) -> Sim:
    import requests

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--keep-alive",
        "75",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "bench.sweep:simulator_app()",
    ]
    env = child_env({"BENCH_SIM_API_KEY": API_KEY, "BENCH_SIM_SEED": str(seed)})
    proc = CHILDREN.start(name, cmd, env=env, log=log_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator {name} exited: see {log_dir / f'{name}.log'}")
        try:
            if requests.get(f"{url}/_sim/stats", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator {name} did not start")
        time.sleep(0.1)
    workers = children_of(proc.pid)
    return Sim(name, url, proc, workers[0] if workers else proc.pid)


# ---------------------------------------------------------------------------------------------
# Settings, database, Redis


def make_settings(args: argparse.Namespace, instance: Path, **changes: Any):
    from config.settings import Settings

    base = Settings.from_env(
        {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "INSTANCE_PATH": str(instance),
            "REVENUECAT_API_KEY": API_KEY,
        }
    )
    return base.with_(sentry_dsn="", **changes)


def ensure_database(url: str) -> None:
    """Create the benchmark database if it does not exist (on the server's ``postgres`` db)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    target = make_url(url)
    try:
        create_engine(target).connect().close()
        return
    except OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    say(f"created database {target.database}")


def reset_data(engine) -> None:
    from sqlalchemy import text

    from persistence.models import Base

    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def table_counts(engine) -> dict[str, int]:
    from sqlalchemy import text

    tables = ["ledger_transactions", "provider_snapshots", "grants", "audit_log", "identities", "subscribers"]
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}


def backend_pids(engine) -> set[int]:
    """PostgreSQL backends of the benchmark database but the benchmark's own bookkeeping ones."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name <> 'bench-admin'"
                )
            ).scalars()
        )


class CpuMeter:
    """CPU seconds of this process, the simulator's worker, extra pids, and the database's backends."""

    def __init__(self, admin_engine, sim: Sim, extra_pids: Callable[[], list[int]] | None = None):
        self.admin, self.sim, self.extra = admin_engine, sim, extra_pids or (list)

    def snapshot(self) -> dict[str, Any]:
        pg = backend_pids(self.admin)
        extra = self.extra()
        return {
            "self": time.process_time(),
            "sim": self.sim.cpu_s(),
            "pg": {pid: proc_cpu_s(pid) for pid in pg},
            "extra": {pid: proc_cpu_s(pid) for pid in extra},
        }

    def delta(self, before: dict[str, Any]) -> dict[str, float]:
        after = self.snapshot()

        def spent(kind: str) -> float:
            pids = set(before[kind]) | set(after[kind])
            return sum(max(0.0, after[kind].get(p, before[kind].get(p, 0.0)) - before[kind].get(p, 0.0)) for p in pids)

        return {
            "self": after["self"] - before["self"],
            "sim": after["sim"] - before["sim"],
            "pg": spent("pg"),
            "extra": spent("extra"),
        }


# ---------------------------------------------------------------------------------------------
# 1. Throughput


_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', re.I)


class SqlCounter:
    """Round trips the engine's own Engine makes: statements by verb and table, pool checkouts
    (each one pings first: pool_pre_ping) and commits. psycopg sends BEGIN as a round trip of its
    own before the first statement of every transaction."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self.statements: Counter[str] = Counter()
        self.checkouts = 0
        self.commits = 0
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
            f"SQL per reconcile: {total / n:.1f} statements ({parts}); pool checkouts (each pings) {(checkouts - before[1]) / n:.1f}, "
            f"commits {(commits - before[2]) / n:.1f}; ~{trips:.1f} round trips incl. BEGIN/COMMIT"
        )


@dataclass
class PassResult:
    label: str
    n: int
    wall_s: float
    reconciled: int
    changed: int
    failed: int
    cpu: dict[str, float]
    writes: dict[str, int]
    sql: str = ""
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def rate(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else 0.0

    def line(self, worker: str = "self") -> str:
        ms = lambda s: 1000.0 * s / max(1, self.n)  # noqa: E731
        w = (
            ", ".join(
                f"{k.replace('ledger_transactions', 'ledger').replace('provider_snapshots', 'snapshots').replace('audit_log', 'audit')}"
                f" +{v}"
                for k, v in self.writes.items()
                if v and k != "subscribers"
            )
            or "none"
        )
        worker_cpu = self.cpu["self"] if worker == "self" else self.cpu["extra"]
        ceiling = self.n / worker_cpu if worker_cpu > 0 else float("inf")
        return (
            f"{self.label:<44} {self.n:>5} in {self.wall_s:6.2f} s = {self.rate:7.1f}/s (load {self.load:.1f})   "
            f"CPU ms/reconcile: worker {ms(worker_cpu):.2f} (CPU-bound ceiling {ceiling:.0f}/s), postgres {ms(self.cpu['pg']):.2f}, "
            f"simulator {ms(self.cpu['sim']):.2f}   "
            + (f"ok {self.reconciled}, changed {self.changed}, failed {self.failed}; " if self.changed >= 0 else "")
            + f"rows written: {w}"
            + (f"\n{'':>10}{self.sql}" if self.sql else "")
        )


def in_process_pass(
    label: str, ids: list[str], rt, meter: CpuMeter, admin, sql: SqlCounter | None = None
) -> PassResult:
    from services.sweep import reconcile_customers

    before_rows = table_counts(admin)
    before_sql = sql.snapshot() if sql else None
    before = meter.snapshot()
    reconciled = changed = failed = 0
    t0 = time.perf_counter()
    for start in range(0, len(ids), CHUNK):
        result = reconcile_customers(ids[start : start + CHUNK], rt.sweep_reads)
        reconciled, changed, failed = reconciled + result.reconciled, changed + result.changed, failed + result.failed
        if result.deferred:
            raise RuntimeError(f"budget deferred {len(result.deferred)} customers in an unlimited run")
    wall = time.perf_counter() - t0
    cpu = meter.delta(before)
    after_rows = table_counts(admin)
    writes = {k: after_rows[k] - before_rows[k] for k in after_rows}
    described = sql.describe(before_sql, len(ids)) if sql and before_sql else ""
    return PassResult(label, len(ids), wall, reconciled, changed, failed, cpu, writes, described)


class _Urllib3Provider:
    """The same GET + JSON decode on a bare urllib3 pool (no requests): the HTTP client's floor."""

    def __init__(self, base_url: str) -> None:
        import urllib3

        self.pool = urllib3.connection_from_url(base_url, maxsize=1)
        self.headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

    def get_subscriber(self, app_user_id: str) -> dict[str, Any]:
        from urllib.parse import quote

        response = self.pool.request("GET", f"/v1/subscribers/{quote(app_user_id, safe='')}", headers=self.headers)
        return json.loads(response.data)


def provider_baseline(ids: list[str], rt, meter: CpuMeter) -> list[str]:
    """The provider round trip alone (requests, as the engine does it; then a bare urllib3 pool;
    then requests plus the budget's Redis take), for scale."""
    lines = []
    for label, provider in (
        ("GET /v1/subscribers only (requests)", rt.provider),
        ("GET only, bare urllib3 pool (floor)", _Urllib3Provider(rt.settings.revenuecat_api_url)),
        ("GET + rate budget take (Redis EVAL)", rt.budgeted_provider("sweep", max_wait_s=5)),
    ):
        before = meter.snapshot()
        t0 = time.perf_counter()
        for customer_id in ids:
            provider.get_subscriber(customer_id)
        wall = time.perf_counter() - t0
        cpu = meter.delta(before)
        n = len(ids)
        lines.append(
            f"{label:<44} {n:>5} in {wall:6.2f} s = {n / wall:7.1f}/s   "
            f"CPU ms/request: this process {1000 * cpu['self'] / n:.2f}, simulator {1000 * cpu['sim'] / n:.2f}"
        )
    return lines


def purchases(ids: list[str], product: str, *, subscription: bool = False) -> list[tuple[str, dict[str, Any]]]:
    operation = "purchase_subscription" if subscription else "purchase_non_renewing"
    return [(operation, {"app_user_id": i, "product_id": product}) for i in ids]


# --- profiling with py-spy ---------------------------------------------------------------------

PROBES: list[tuple[str, str, str]] = [
    # (label, function name, file substring) -- inclusive share of samples
    ("reconcile_user (whole reconcile)", "reconcile_user", "engine/reconcile.py"),
    ("  provider call incl. budget", "get_subscriber", "adapters/rate_budget.py"),
    ("    rate budget acquire (Redis EVAL)", "acquire", "adapters/rate_budget.py"),
    ("    HTTP GET to the simulator (requests)", "get_subscriber", "adapters/revenuecat_client.py"),
    ("  parse_subscriber (JSON body -> snapshot, digest)", "parse_subscriber", "engine/revenuecat.py"),
    ("  unit of work: begin (session, connection checkout)", "__enter__", "adapters/inbox.py"),
    ("  unit of work: commit/close", "__exit__", "adapters/inbox.py"),
    ("    after_commit publish to Redis", "_publish", "adapters/notifications.py"),
    ("  store.lock_customer (SELECT ... FOR UPDATE)", "lock_customer", "adapters/store.py"),
    ("  store.record_identities", "record_identities", "adapters/store.py"),
    ("  store.transactions (ledger read)", "transactions", "adapters/store.py"),
    ("  observe_snapshot", "observe_snapshot", "engine/facts.py"),
    ("  store.save_transactions", "save_transactions", "adapters/store.py"),
    ("  store.save_snapshot", "save_snapshot", "adapters/store.py"),
    ("  converge (project + diff + apply)", "converge", "engine/reconcile.py"),
    ("    store.granted (grants read)", "granted", "adapters/store.py"),
    ("    project_access", "project_access", "engine/projection.py"),
    ("    store.apply (grant + audit + outbox)", "apply", "adapters/store.py"),
    ("  store.mark_checked (UPDATE subscribers)", "mark_checked", "adapters/store.py"),
    ("report_drift (Sentry, no DSN)", "report_drift", "config/observability.py"),
    ("metrics incr_many (Redis)", "incr_many", "adapters/metrics.py"),
]


# Cross-cutting layers (inclusive): where the CPU of the calls above goes.
def _fname(frame: str) -> str:
    return frame.partition(" (")[0].rsplit(".", 1)[-1]


LAYERS: list[tuple[str, Callable[[list[str]], bool]]] = [
    (
        "waiting on PostgreSQL (server work, WAL fsync at COMMIT; psycopg wait)",
        lambda st: "psycopg/" in st[-1] and _fname(st[-1]) in {"wait", "_wait", "wait_c"},
    ),
    (
        "waiting on a socket read (HTTP answer or Redis reply)",
        lambda st: _fname(st[-1]) in {"readinto", "recv", "recv_into", "_read_from_socket"},
    ),
    ("inside SQLAlchemy (any frame)", lambda st: any("sqlalchemy/" in f for f in st)),
    ("inside psycopg (any frame)", lambda st: any("psycopg/" in f for f in st)),
    (
        "inside requests/urllib3/http.client",
        lambda st: any(("requests/" in f or "urllib3/" in f or "http/client.py" in f) for f in st),
    ),
    ("inside redis-py", lambda st: any("site-packages/redis/" in f for f in st)),
    ("inside json (encode/decode)", lambda st: any("json/" in f for f in st)),
]


def _frame_key(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (path/to/file.py)"
    name, _, rest = frame.partition(" (")
    path = rest.rsplit(":", 1)[0] if rest else ""
    return f"{name} ({path})"


def _is(frame: str, func: str, path: str) -> bool:
    name, _, rest = frame.partition(" (")
    return (name == func or name.endswith("." + func)) and path in rest


def summarise_profile(raw_path: Path, top: int = 14) -> list[str]:
    stacks: list[tuple[list[str], int]] = []
    for line in raw_path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([_frame_key(f) for f in frames.split(";")], int(count)))
    total = sum(c for _, c in stacks) or 1
    recon = [(st, c) for st, c in stacks if any(_is(f, "reconcile_customers", "adapters/sweep.py") for f in st)]
    rtotal = sum(c for _, c in recon) or 1
    out = [
        f"py-spy: {total} samples, {rtotal} inside reconcile_customers; share of that wall time (idle frames included, "
        f"so waits on PostgreSQL/HTTP/Redis count), inclusive:"
    ]
    for label, func, path in PROBES:
        n = sum(c for st, c in recon if any(_is(f, func, path) for f in st))
        out.append(f"  {100 * n / rtotal:5.1f}%  {label}")
    out.append("  cross-cutting:")
    for label, test in LAYERS:
        n = sum(c for st, c in recon if st and test(st))
        out.append(f"  {100 * n / rtotal:5.1f}%  {label}")
    leaves = Counter()
    for st, c in recon:
        leaves[st[-1].replace(str(ROOT) + "/", "").split("site-packages/")[-1]] += c
    out.append(f"  top {top} leaf frames (self time, idle included):")
    for frame, n in leaves.most_common(top):
        out.append(f"  {100 * n / rtotal:5.1f}%  {frame}")
    return out


def profiled(label: str, run: Callable[[], Any], out_dir: Path, rate: int) -> tuple[Any, list[str]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return run(), ["py-spy not found (pip install py-spy): no profile"]
    raw = out_dir / f"profile-{label}.txt"
    proc = CHILDREN.start(
        f"py-spy-{label}",
        [
            spy,
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(rate),
            "--idle",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--duration",
            "120",
        ],
        log=out_dir / f"py-spy-{label}.log",
    )
    time.sleep(1.5)  # attach
    try:
        result = run()
    finally:
        CHILDREN.stop(proc, sig=signal.SIGINT, timeout=30)
    if not raw.exists():
        return result, [f"py-spy wrote no profile (see {out_dir / f'py-spy-{label}.log'})"]
    return result, [*summarise_profile(raw), f"  (raw stacks: {raw})"]


# --- through a Celery worker ------------------------------------------------------------------


def celery_pass(label: str, ids: list[str], app, admin, meter: CpuMeter, timeout_s: float) -> PassResult:
    from sqlalchemy import text

    before_rows = table_counts(admin)
    before = meter.snapshot()
    start_ms = wall_ms()
    t0 = time.perf_counter()
    for start in range(0, len(ids), CHUNK):
        app.send_task("sweep.reconcile_batch", args=(ids[start : start + CHUNK],), queue="sweep")
    query = text("SELECT count(*) FROM subscribers WHERE customer_id = ANY(:ids) AND last_checked_ms >= :t")
    with admin.connect() as conn:
        while True:
            done = int(conn.execute(query, {"ids": ids, "t": start_ms}).scalar_one())
            conn.rollback()
            if done >= len(ids):
                break
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"{label}: only {done}/{len(ids)} reconciled after {timeout_s:.0f} s")
            time.sleep(0.02)
    wall = time.perf_counter() - t0
    cpu = meter.delta(before)
    after_rows = table_counts(admin)
    writes = {k: after_rows[k] - before_rows[k] for k in after_rows}
    return PassResult(label, len(ids), wall, len(ids), -1, -1, cpu, writes)


def throughput_phase(args: argparse.Namespace, instance: Path, admin, deadline: float) -> dict[str, Any]:
    from services.wiring import Wiring

    say("== 1. reconcile throughput of one process (simulator answering at once, budget unlimited) ==")
    sim = start_simulator("sim-throughput", seed=1, log_dir=instance)
    settings = make_settings(args, instance, revenuecat_api_url=sim.url, provider_rate_per_minute=UNLIMITED)
    rt = Wiring(settings)
    n = args.customers
    ids = [f"tp-{i:06d}" for i in range(n)]
    warm = [f"tpw-{i:04d}" for i in range(CHUNK)]
    t = time.perf_counter()
    sim.ops(purchases(ids + warm, "premium_monthly", subscription=True))
    say(f"simulator {sim.url}: {n + len(warm)} customers with a monthly subscription ({time.perf_counter() - t:.1f} s)")
    meter = CpuMeter(admin, sim)
    sql = SqlCounter(rt.db)
    results: dict[str, Any] = {"passes": {}, "celery": {}, "profiles": {}}

    # Warm-up: imports, connection pools, prepared caches (the warm-up customers only).
    in_process_pass("warm-up", warm, rt, meter, admin)
    for line in provider_baseline(ids[: min(n, 400)], rt, meter):
        say(line)

    first = in_process_pass("first sight (new customers, all rows written)", ids, rt, meter, admin, sql)
    say(first.line())
    unchanged = []
    for k in range(args.passes):
        p = in_process_pass(f"(a) unchanged snapshot, pass {k + 1}", ids, rt, meter, admin, sql)
        say(p.line())
        unchanged.append(p)
    changed = []
    for k, product in zip(
        range(args.passes), ["h01enb", "geometry_pack_30", "h01enb", "geometry_pack_30"], strict=False
    ):
        sim.ops(purchases(ids, product))
        p = in_process_pass(f"(b) changed snapshot (+{product}), pass {k + 1}", ids, rt, meter, admin, sql)
        say(p.line())
        changed.append(p)
    results["passes"] = {"first": first, "unchanged": unchanged, "changed": changed}
    best_unchanged = statistics.median(p.rate for p in unchanged)
    best_changed = statistics.median(p.rate for p in changed)

    want_profile = args.profile == "always" or (
        args.profile == "auto" and (best_unchanged < TARGET_UNCHANGED or best_changed < TARGET_CHANGED)
    )
    if want_profile and time.monotonic() + 60 < deadline:
        prof_ids = ids[: min(n, args.profile_customers)]
        p, lines = profiled(
            "unchanged",
            lambda: in_process_pass("(a) unchanged, under py-spy", prof_ids, rt, meter, admin),
            instance,
            args.profile_rate,
        )
        say(p.line() + "  [slowed by sampling]")
        results["profiles"]["unchanged"] = lines
        for line in lines:
            say(line)
        sim.ops(purchases(prof_ids, "geometry_pack_30"))
        p, lines = profiled(
            "changed",
            lambda: in_process_pass("(b) changed, under py-spy", prof_ids, rt, meter, admin),
            instance,
            args.profile_rate,
        )
        say(p.line() + "  [slowed by sampling]")
        results["profiles"]["changed"] = lines
        for line in lines:
            say(line)
    elif want_profile:
        say("no time left in the time box for the py-spy profile")

    if args.celery and time.monotonic() + 75 < deadline:
        results["celery"] = celery_phase(args, settings, instance, admin, sim, ids, warm, deadline)
    elif args.celery:
        say("no time left in the time box for the Celery worker passes")
    rt.close()
    CHILDREN.stop(sim.proc)
    return results


def celery_phase(
    args, settings, instance: Path, admin, sim: Sim, ids: list[str], warm: list[str], deadline: float
) -> dict[str, Any]:
    from tasks.celery_app import create_celery
    from tasks.launch import celery_worker

    say("-- the same through a Celery worker (prefork, --concurrency=1, engine.reconcile_batch of 50) --")
    env = child_env(settings.to_env())
    out: dict[str, Any] = {}
    app = create_celery(settings)
    with celery_worker(env, instance, concurrency=1, log_path=instance / "celery-worker.log") as worker:
        CHILDREN.add("celery-worker", worker)
        meter = CpuMeter(admin, sim, extra_pids=lambda: children_of(worker.pid))
        warmup = celery_pass("warm-up", warm, app, admin, meter, timeout_s=60)
        say(
            f"worker ready (pid {worker.pid}, child {children_of(worker.pid)}), warm-up batch took {warmup.wall_s:.1f} s"
        )
        budget_s = max(20.0, deadline - time.monotonic() - 20)
        p = celery_pass("(a) unchanged snapshot, Celery worker", ids, app, admin, meter, timeout_s=budget_s / 2)
        say(p.line(worker="extra"))
        out["unchanged"] = p
        sim.ops(purchases(ids, "geometry_pack_30"))
        p = celery_pass(
            "(b) changed snapshot (+geometry_pack_30), Celery worker", ids, app, admin, meter, timeout_s=budget_s / 2
        )
        say(p.line(worker="extra"))
        out["changed"] = p
    app.close()
    return out


# ---------------------------------------------------------------------------------------------
# 2. Rate budget


def rate_worker(config: dict[str, Any]) -> None:
    """One competing worker process with its own Wiring and RateBudget instance (hidden role)."""
    from dataclasses import replace

    from adapters.rate_budget import BudgetedProvider, BudgetExhausted, RateBudget
    from engine.ports import Cause
    from engine.reconcile import Reading
    from services.sweep import reconcile_customers
    from services.wiring import Wiring

    class Args:
        database_url, redis_url = config["database_url"], config["redis_url"]

    settings = make_settings(
        Args,
        Path(config["instance"]),
        revenuecat_api_url=config["sim_url"],  # type: ignore[arg-type]
        provider_rate_per_minute=config["per_minute"],
    )
    deadline = float("inf")  # set once the start line is known

    class UntilDeadline(RateBudget):
        """The shared budget, but nobody waits for (or takes) a slot after the run's end."""

        def acquire(self, priority, *, max_wait_s: float) -> None:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise BudgetExhausted("the benchmark run is over", retry_after_s=1.0)
            super().acquire(priority, max_wait_s=min(max_wait_s, remaining))

    rt = Wiring(settings)
    rt.__dict__["budget"] = UntilDeadline(rt.redis, config["per_minute"], name=config["budget_name"])
    ids: list[str] = config["ids"]
    rt.session_factory, rt.catalog  # noqa: B018 - connect and load before the start line
    rt.redis.incr(READY_KEY)
    give_up = time.time() + 120
    while (start := rt.redis.get(START_KEY)) is None:
        if time.time() > give_up:
            raise SystemExit("no start signal")
        time.sleep(0.02)
    start_at = float(start)
    deadline = start_at + config["duration_s"]
    while time.time() < start_at:
        time.sleep(min(0.02, max(0.0, start_at - time.time())))
    done = calls = 0
    cursor = 0
    pending: list[str] = []
    if config["priority"] == "sweep":
        while time.time() < deadline:
            if not pending:
                pending = [ids[(cursor + k) % len(ids)] for k in range(CHUNK)]
                cursor = (cursor + CHUNK) % len(ids)
            result = reconcile_customers(
                pending, replace(rt.sweep_reads, provider=rt.budgeted_provider("sweep", max_wait_s=65.0))
            )
            calls += 1
            done += result.reconciled
            pending = list(result.deferred or [])
            if pending and result.reconciled == 0:
                break  # the next slot frees after the deadline
    else:
        while time.time() < deadline:
            provider = BudgetedProvider(rt.provider, rt.budget, "event", max_wait_s=65.0)
            try:
                body = provider.get_subscriber(ids[cursor])
                rt.convergence.reconcile(Reading.from_provider(ids[cursor], body), Cause("event", "bench"))
            except BudgetExhausted:
                break
            done += 1
            calls += 1
            cursor = (cursor + 1) % len(ids)
    rt.close()
    print(json.dumps({"priority": config["priority"], "reconciled": done, "calls": calls}), flush=True)


@dataclass
class Scenario:
    name: str
    title: str
    priorities: list[str]
    sim: Sim | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    start_at: float = 0.0
    reports: list[dict[str, Any]] = field(default_factory=list)


def start_rate_phase(args: argparse.Namespace, instance: Path) -> list[Scenario]:
    say(
        f"== 2. provider budget {args.budget}/min, the limit: two scenarios side by side, {args.rate_seconds} s each =="
    )
    scenarios = [
        Scenario("A", "two sweep workers", ["sweep", "sweep"]),
        Scenario("B", "one sweep worker + one event-priority worker", ["sweep", "event"]),
    ]
    import redis

    for seed, sc in enumerate(scenarios, start=2):
        sc.sim = start_simulator(f"sim-rate-{sc.name}", seed=seed, log_dir=instance)
    client = redis.Redis.from_url(args.redis_url)
    client.delete(READY_KEY, START_KEY)
    workers = 0
    for sc in scenarios:
        assert sc.sim is not None
        all_ids = []
        for w, priority in enumerate(sc.priorities):
            ids = [f"r{sc.name.lower()}-{priority}{w}-{i:04d}" for i in range(args.rate_customers)]
            all_ids.extend(ids)
            config = {
                "database_url": args.database_url,
                "redis_url": args.redis_url,
                "instance": str(instance),
                "sim_url": sc.sim.url,
                "per_minute": args.budget,
                "budget_name": f"bench-{sc.name}",
                "priority": priority,
                "ids": ids,
                "duration_s": args.rate_seconds,
            }
            proc = CHILDREN.start(
                f"rate-{sc.name}{w}",
                [sys.executable, "-m", "bench.sweep", "--role", "rate-worker", "--rate-config", json.dumps(config)],
                env=child_env(),
                stdout=subprocess.PIPE,
            )
            sc.workers.append(proc)
            workers += 1
        sc.sim.ops(purchases(all_ids, "premium_monthly", subscription=True))
    give_up = time.monotonic() + 90
    while int(client.get(READY_KEY) or 0) < workers:  # every worker imported, connected, loaded
        if time.monotonic() > give_up or any(p.poll() is not None for sc in scenarios for p in sc.workers):
            raise RuntimeError("the rate workers did not get ready")
        time.sleep(0.05)
    start_at = time.time() + 1.0
    client.set(START_KEY, repr(start_at))
    for sc in scenarios:
        sc.start_at = start_at
    say(f"{workers} rate workers ready; they start together in 1 s and stop {args.rate_seconds} s later")
    return scenarios


def wait_first_burst(args: argparse.Namespace, scenarios: list[Scenario]) -> None:
    """Until each scenario has spent its first window's budget (a burst of a few seconds), so
    that the selection timings that follow do not compete with it for the CPU."""
    give_up = scenarios[0].start_at + 20
    wanted = {
        sc.name: (_sweep_cap(args.budget) if sc.priorities == ["sweep", "sweep"] else args.budget) for sc in scenarios
    }
    while time.time() < give_up:
        if all(sc.sim is not None and sc.sim.stats()["request_count"] >= wanted[sc.name] for sc in scenarios):
            break
        time.sleep(0.2)
    say(
        f"first burst of the rate workers done at +{time.time() - scenarios[0].start_at:.1f} s of their run; "
        f"the next one is due at +60 s"
    )


def _sweep_cap(per_minute: int) -> int:
    """RateBudget.limit_for("sweep") for this budget (no Redis needed)."""
    import redis

    from adapters.rate_budget import RateBudget

    return RateBudget(redis.Redis(), per_minute).limit_for("sweep")  # register_script does not connect


def window_figures(ts: list[int], start_ms: int, duration_ms: int, limit: int | None = None) -> dict[str, Any]:
    ts = sorted(ts)
    in_run = [t for t in ts if start_ms <= t < start_ms + duration_ms]
    best = 0
    best_at = 0
    j = 0
    for i, t in enumerate(ts):  # every window [t, t + 60 s) starting at a request: the max over all windows
        while j < len(ts) and ts[j] < t + WINDOW_MS:
            j += 1
        if j - i > best:
            best, best_at = j - i, t
    closest = None  # the shortest time in which ``limit + 1`` requests reached the provider
    if limit is not None and len(ts) > limit:
        closest = min(ts[i + limit] - ts[i] for i in range(len(ts) - limit))
    counts = []
    for s in range(start_ms, start_ms + duration_ms - WINDOW_MS + 1, 1000):
        counts.append(bisect.bisect_left(ts, s + WINDOW_MS) - bisect.bisect_left(ts, s))
    return {
        "in_run": len(in_run),
        "total": len(ts),
        "per_min": len(in_run) / (duration_ms / 60_000),
        "max_window": best,
        "max_window_at_s": (best_at - start_ms) / 1000,
        "mean_window": statistics.mean(counts) if counts else float("nan"),
        "min_window": min(counts) if counts else 0,
        "closest_ms": closest,
        "first_s": ((ts[0] - start_ms) / 1000) if ts else float("nan"),
        "last_s": ((ts[-1] - start_ms) / 1000) if ts else float("nan"),
    }


def finish_rate_phase(args: argparse.Namespace, scenarios: list[Scenario]) -> dict[str, Any]:
    sweep_cap = _sweep_cap(args.budget)
    out: dict[str, Any] = {}
    for sc in scenarios:
        for proc in sc.workers:
            try:
                stdout, _ = proc.communicate(timeout=max(5.0, sc.start_at + args.rate_seconds + 75 - time.time()))
            except subprocess.TimeoutExpired:
                CHILDREN.stop(proc)
                stdout = b""
            lines = [ln for ln in (stdout or b"").decode().splitlines() if ln.startswith("{")]
            sc.reports.append(json.loads(lines[-1]) if lines else {"error": f"worker exited {proc.returncode}"})
        assert sc.sim is not None
        log = [entry for entry in sc.sim.stats(log_tail=10**7)["request_log"] if entry[1].startswith("/v1/")]
        CHILDREN.stop(sc.sim.proc)
        start_ms = int(sc.start_at * 1000)
        fig = window_figures([e[2] for e in log], start_ms, args.rate_seconds * 1000, args.budget)
        by_priority = Counter(
            e[1].split("/")[-1].split("-")[1].rstrip("0123456789")
            for e in log
            if start_ms <= e[2] < start_ms + args.rate_seconds * 1000
        )
        fig["by_priority"] = dict(by_priority)
        fig["reports"] = sc.reports
        out[sc.name] = fig
        util = 100.0 * fig["per_min"] / args.budget
        say(
            f"scenario {sc.name} ({sc.title}; the sweep alone may use {sweep_cap}/min of the {args.budget}, the rest is "
            f"RateBudget.sweep_reserve_fraction kept for events and client syncs):"
        )
        say(
            f"   used {fig['per_min']:.1f}/min over the whole run ({fig['in_run']} requests in {args.rate_seconds} s), "
            f"budget {args.budget}/min -> utilisation {util:.1f}%"
        )
        say(
            f"   max in any 60 s window {fig['max_window']} (= {100.0 * fig['max_window'] / args.budget:.1f}% of the budget, "
            f"window starting at +{fig['max_window_at_s']:.1f} s), mean over 60 s windows inside the run {fig['mean_window']:.1f}, "
            f"min {fig['min_window']}"
        )
        if fig["closest_ms"] is not None:
            say(
                f"   {args.budget + 1} consecutive requests reached the provider within {fig['closest_ms'] / 1000:.3f} s at the closest "
                f"({'over the budget' if fig['closest_ms'] < WINDOW_MS else 'never inside one 60 s window'}; the budget grants slot n+{args.budget} "
                f"60.000 s after slot n on Redis's clock, the provider sees arrival times)"
            )
        say(
            f"   requests by priority {dict(by_priority)}; first request at +{fig['first_s']:.2f} s, last at +{fig['last_s']:.2f} s; "
            f"workers: {sc.reports}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# 3. Selection time


def selection_phase(args: argparse.Namespace, settings, admin) -> dict[int, dict[str, Any]]:
    from sqlalchemy import event, text

    from persistence.database import make_engine, make_session_factory
    from persistence.subscribers import select_due
    from tasks.sweep import SWEEP_LEASE_MS

    say(f"== 3. select_due(limit={SELECT_LIMIT}) at {', '.join(f'{s:,}' for s in args.select_sizes)} subscribers ==")
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    captured: list[tuple[str, Any]] = []
    capturing = [False]

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(conn, cursor, statement, parameters, context, executemany):
        if capturing[0]:
            captured.append((statement, parameters))

    results: dict[int, dict[str, Any]] = {}
    inserted = 0
    for size in args.select_sizes:
        with admin.begin() as conn:
            have = int(conn.execute(text("SELECT count(*) FROM subscribers")).scalar_one())
        if have < size:
            t = time.perf_counter()
            now = wall_ms()
            with admin.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO subscribers (customer_id, dirty, next_check_ms, last_checked_ms, last_snapshot_ms, snapshot_digest) "
                        "SELECT 'sel-' || lpad(g::text, 8, '0'), false, "
                        "       CAST(:now AS bigint) - :due + (random() * :span)::bigint, "
                        "       CAST(:now AS bigint) - (random() * :span)::bigint, NULL, NULL "
                        "FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) AS g"
                    ),
                    {
                        "now": now,
                        "due": DUE_SPAN_MS,
                        "span": CHECK_SPAN_MS,
                        "a": inserted + 1,
                        "b": inserted + size - have,
                    },
                )
            inserted += size - have
            t_ins = time.perf_counter() - t
            t = time.perf_counter()
            with admin.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE subscribers"))
            say(f"{size:>9,} rows: inserted {size - have:,} in {t_ins:.1f} s, ANALYZE {time.perf_counter() - t:.1f} s")
        with admin.connect() as conn:
            rows = int(conn.execute(text("SELECT count(*) FROM subscribers")).scalar_one())
            due = int(
                conn.execute(
                    text("SELECT count(*) FROM subscribers WHERE next_check_ms <= :n"), {"n": wall_ms()}
                ).scalar_one()
            )

        def reset(ids: list[str], now_ms: int) -> None:
            with admin.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE subscribers SET next_check_ms = CAST(:now AS bigint) - 1 - (random() * :due)::bigint "
                        "WHERE customer_id = ANY(:ids)"
                    ),
                    {"now": now_ms, "due": DUE_SPAN_MS, "ids": ids},
                )

        times = []
        got = []
        for k in range(args.select_runs + 1):  # the first run warms the caches and is not counted
            now_ms = wall_ms()
            capturing[0] = k == 1
            t = time.perf_counter()
            ids = select_due(factory, now_ms=now_ms, limit=SELECT_LIMIT, lease_ms=SWEEP_LEASE_MS)
            dt = time.perf_counter() - t
            capturing[0] = False
            reset(ids, now_ms)
            if k:
                times.append(dt * 1000)
                got.append(len(ids))
        statements = [(s, p) for s, p in captured if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
        captured.clear()
        plan: list[str] = []
        with engine.connect() as conn:
            trans = conn.begin()
            for statement, params in statements:
                lines = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).scalars().all()
                plan.append(f"-- {statement.split()[0]} ({len(lines)} plan lines)")
                plan.extend(lines)
            trans.rollback()
        uses_index = any("ix_subscribers_next_check_ms" in line for line in plan)
        results[size] = {
            "rows": rows,
            "due": due,
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "selected": got,
            "plan": plan,
            "uses_index": uses_index,
        }
        say(
            f"{rows:>9,} rows ({due:,} due): select_due median {statistics.median(times):.2f} ms "
            f"(min {min(times):.2f}, max {max(times):.2f}, {len(times)} runs, {got[0]} selected each), "
            f"next_check_ms index used: {'yes' if uses_index else 'NO'}"
        )
        for line in plan:
            say("     " + (line if len(line) <= 150 else line[:120] + f" ... ({len(line)} chars)"))
    engine.dispose()
    return results


# ---------------------------------------------------------------------------------------------
# Main


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--database-url", default=DEFAULT_DB, help=f"a PostgreSQL database of its own (default {DEFAULT_DB})"
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS, help=f"a Redis db of its own, flushed (default {DEFAULT_REDIS})"
    )
    parser.add_argument("--customers", type=int, default=500, help="customers per throughput pass (default 500)")
    parser.add_argument("--passes", type=int, default=2, choices=[1, 2, 3, 4], help="passes of each kind (default 2)")
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="py-spy profile of one pass of each kind: when a target is missed (auto), always, never",
    )
    parser.add_argument("--profile-customers", type=int, default=300, help="customers per profiled pass (default 300)")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-celery", dest="celery", action="store_false", help="skip the Celery worker passes")
    parser.add_argument("--budget", type=int, default=120, help="provider budget per minute in part 2 (default 120)")
    parser.add_argument(
        "--rate-seconds", type=int, default=120, help="length of part 2 (default 120; whole minutes are best)"
    )
    parser.add_argument("--rate-customers", type=int, default=100, help="customers per rate worker (default 100)")
    parser.add_argument(
        "--select-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 1_000_000],
        help="subscriber counts for part 3 (default 10000,1000000)",
    )
    parser.add_argument("--select-runs", type=int, default=9, help="timed select_due runs per size (default 9)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,rate,select")
    parser.add_argument(
        "--keep-data", action="store_true", help="do not TRUNCATE the tables and FLUSHDB Redis at the end"
    )
    parser.add_argument(
        "--time-box", type=float, default=345.0, help="seconds; optional parts are skipped to stay within it"
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--rate-config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "rate-worker":
        rate_worker(json.loads(args.rate_config))
        return 0

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    deadline = time.monotonic() + args.time_box

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)

    def watchdog() -> None:
        print("!! watchdog: time box + 60 s exceeded, stopping every child process", flush=True)
        CHILDREN.stop_all()
        os._exit(3)

    timer = threading.Timer(args.time_box + 60, watchdog)
    timer.daemon = True
    timer.start()

    instance = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        return run(args, skip, instance, deadline)
    finally:
        CHILDREN.stop_all()
        timer.cancel()


def run(args: argparse.Namespace, skip: set[str], instance: Path, deadline: float) -> int:
    import redis
    from sqlalchemy import create_engine

    from persistence.database import upgrade_database

    say(
        f"bench.sweep: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"database {args.database_url}, redis {args.redis_url}, logs in {instance}"
    )
    ensure_database(args.database_url)
    settings = make_settings(args, instance)
    upgrade_database(settings)
    admin = create_engine(
        args.database_url, pool_size=2, max_overflow=2, connect_args={"application_name": "bench-admin"}
    )
    reset_data(admin)
    redis.Redis.from_url(args.redis_url).flushdb()
    say("migrated, tables truncated, redis db flushed")

    throughput: dict[str, Any] = {}
    rate: dict[str, Any] = {}
    selection: dict[int, dict[str, Any]] = {}
    try:
        if "throughput" not in skip:
            throughput = throughput_phase(
                args, instance, admin, deadline - (args.rate_seconds + 30 if "rate" not in skip else 40)
            )
        scenarios = start_rate_phase(args, instance) if "rate" not in skip else []
        if scenarios and "select" not in skip:
            wait_first_burst(args, scenarios)
        if "select" not in skip:
            selection = selection_phase(args, settings, admin)
        if scenarios:
            say(
                f"waiting for the rate workers (end at +{max(0.0, scenarios[0].start_at + args.rate_seconds - time.time()):.0f} s)"
            )
            rate = finish_rate_phase(args, scenarios)
    finally:
        if not args.keep_data:
            try:
                reset_data(admin)
                redis.Redis.from_url(args.redis_url).flushdb()
            except Exception as exc:
                say(f"clean-up failed: {exc}")
        admin.dispose()

    # ---- summary
    print(flush=True)
    say(f"== summary (load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}) ==")
    rows: list[tuple[str, str, str, str]] = []
    if throughput:
        p = throughput["passes"]
        u = statistics.median(x.rate for x in p["unchanged"])
        c = statistics.median(x.rate for x in p["changed"])
        rows.append(
            (
                "reconciles/s, unchanged snapshots (1 process)",
                f"{u:.0f}/s",
                f">= {TARGET_UNCHANGED:.0f}/s",
                verdict(u >= TARGET_UNCHANGED),
            )
        )
        rows.append(
            (
                "reconciles/s, changed snapshots (1 process)",
                f"{c:.0f}/s",
                f">= {TARGET_CHANGED:.0f}/s",
                verdict(c >= TARGET_CHANGED),
            )
        )
        for kind, target in (("unchanged", TARGET_UNCHANGED), ("changed", TARGET_CHANGED)):
            q = throughput["celery"].get(kind)
            if q is not None:
                rows.append(
                    (
                        f"reconciles/s, {kind}, Celery worker concurrency=1",
                        f"{q.rate:.0f}/s",
                        f">= {target:.0f}/s",
                        verdict(q.rate >= target),
                    )
                )
    for name, fig in rate.items():
        util = 100.0 * fig["per_min"] / args.budget
        rows.append(
            (
                f"budget use, scenario {name}, whole run",
                f"{fig['per_min']:.1f}/min = {util:.1f}%",
                f"{TARGET_UTIL_MIN:.0f}-100% of {args.budget}",
                verdict(TARGET_UTIL_MIN <= util <= 100.0),
            )
        )
        rows.append(
            (
                f"budget use, scenario {name}, max in any 60 s",
                f"{fig['max_window']}",
                f"<= {args.budget}",
                verdict(fig["max_window"] <= args.budget),
            )
        )
    if selection:
        for size, r in selection.items():
            rows.append(
                (
                    f"select_due(500) at {size:,} rows, median",
                    f"{r['median_ms']:.2f} ms",
                    "same order",
                    "index" if r["uses_index"] else "NO INDEX",
                )
            )
        sizes = sorted(selection)
        ratio = selection[sizes[-1]]["median_ms"] / selection[sizes[0]]["median_ms"]
        rows.append((f"select_due ratio {sizes[-1]:,} / {sizes[0]:,}", f"x{ratio:.2f}", "< x10", verdict(ratio < 10)))
    width = max(len(r[0]) for r in rows) if rows else 10
    for label, value, target, v in rows:
        print(f"  {label:<{width}}  {value:>22}   target {target:<18} {v}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
