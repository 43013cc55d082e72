"""Benchmark of the webhook intake (POST /webhooks/revenuecat) on PostgreSQL + Redis under gunicorn.

Runs, in one go, under identical gunicorn settings and the same load. The settings default to
the Procfile's web process: gevent workers, one per core (``--worker-class sync --workers 4``
gives the figures of earlier notes). Under gevent the intake stores the webhooks that arrive
together with one INSERT and one commit, and publishes their tasks with one LPUSH (group commit:
engine/adapters/group_commit.py); under sync workers each webhook is stored on its own.

* the real intake (``web.app:create_app()``): authenticate, store the raw body and commit,
  publish the Celery task, answer 200;
* a bare Flask endpoint that only parses the JSON (``bench.bare_app:create_app()``).

For each app: webhooks/s at the maximum rate (closed loop) with its p50/p95/p99 latency, then
p50/p95/p99 of an open-loop run paced at half of the intake's measured maximum. After every
intake run it checks in PostgreSQL and Redis that each 200 answer left exactly one stored row
and one queued task. It also shows where the CPU went (gunicorn, PostgreSQL, Redis, the load
generator, anything else on the machine): on a 2-core machine shared with other work the
figures only mean something when "other" stays near 0.

Every request is a distinct RevenueCat INITIAL_PURCHASE webhook (unique ``event.id``, about
1.5 KB) with the configured ``Authorization`` header.

Load generators: the max-rate runs use ``wrk`` (``apt-get install wrk``) with
bench/wrk_webhooks.lua, one connection per wrk thread, latencies measured in the script (C
and LuaJIT: little CPU taken from the servers); without wrk a Python asyncio client takes over
(and takes more CPU). The half-rate runs use a Python asyncio open-loop client: each webhook is
due at t0 + i/rate, sent on a new connection opened at that moment (gunicorn's sync workers
close every connection) or an idle kept-alive one, and its latency counts from its due time,
so a stall is charged to every webhook it delays (no coordinated omission). ``--paced-loadgen
wrk`` paces wrk with Lua delay() instead, but wrk opens the next connection right after each
answer and waits on it, which holds a sync worker idle: fine for gthread, unfair for sync.

Loopback only, bounded: about a minute with the defaults (every run stops by itself, the
servers are stopped at the end).

    python -m bench.intake                 # both apps, defaults below
    python -m bench.intake --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_webhooks.lua"
PATH = "/webhooks/revenuecat"
AUTH = "Bearer bench-webhook-secret"
API_TOKEN = "bench-api-token"
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
ID_MARK = "@@ID@@"

APPS = {
    "intake": "web.app:create_app()",
    "bare": "bench.bare_app:create_app()",
}

WRK_SLACK_S = 3  # wrk's clock outlasts each run's deadline by this (see run_wrk)
TARGET_RATE = 1500.0  # stored-and-queued webhooks/s
TARGET_RATIO = 0.35  # of the bare endpoint's throughput
TARGET_HALF_P99_MS = 25.0


# ---------------------------------------------------------------------------------------------
# The webhook bodies


def webhook_template() -> str:
    """A RevenueCat INITIAL_PURCHASE webhook (revenuecat.md §1.8 sample shape), ~1.5 KB, with
    ``@@ID@@`` where each request puts its unique id (event id, transaction ids, user)."""
    event = {
        "event_timestamp_ms": 1658726378679,
        "product_id": "com.subscription.weekly",
        "period_type": "NORMAL",
        "purchased_at_ms": 1658726374000,
        "expiration_at_ms": 1659331174000,
        "environment": "PRODUCTION",
        "entitlement_id": None,
        "entitlement_ids": ["pro"],
        "presented_offering_id": None,
        "transaction_id": f"tx-{ID_MARK}",
        "original_transaction_id": f"tx-{ID_MARK}",
        "is_family_share": False,
        "country_code": "US",
        "app_user_id": f"user-{ID_MARK}",
        "aliases": ["$RCAnonymousID:8069238d6049ce87cc529853916d624c", f"user-{ID_MARK}"],
        "original_app_user_id": "$RCAnonymousID:87c6049c58069238dce29853916d624c",
        "currency": "USD",
        "price": 4.99,
        "price_in_purchased_currency": 4.99,
        "subscriber_attributes": {
            "$email": {"updated_at_ms": 1662955084635, "value": "firstlast@gmail.com"},
            "$displayName": {"updated_at_ms": 1662955084635, "value": "First Last"},
            "$appsflyerId": {"updated_at_ms": 1662955084635, "value": "1658726374000-8069238d6049ce87"},
            "$idfv": {"updated_at_ms": 1662955084635, "value": "8069238D-6049-CE87-CC52-9853916D624C"},
            "$ip": {"updated_at_ms": 1662955084635, "value": "203.0.113.42"},
            "favorite_cat": {"updated_at_ms": 1581121853000, "value": "Garfield"},
        },
        "store": "APP_STORE",
        "takehome_percentage": 0.7,
        "tax_percentage": 0.0,
        "commission_percentage": 0.3,
        "offer_code": None,
        "type": "INITIAL_PURCHASE",
        "id": f"evt-{ID_MARK}",
        "app_id": "app1234567890",
        "experiments": [{"experiment_id": "prexp123", "experiment_variant": "b", "enrolled_at_ms": 1658726378679}],
        "metadata": None,
        "renewal_number": 1,
    }
    return json.dumps({"event": event, "api_version": "1.0"})


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class RunResult:
    app: str
    phase: str  # max | half
    loadgen: str
    sent: int
    ok: int  # answers 200
    other: int  # any other answer
    errors: dict[str, int]
    window_s: float
    latencies_us: list[float]
    target_rate: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # cores used during the run, by component
    check: str | None = None
    check_ok: bool | None = None
    slices: list[RunResult] = field(default_factory=list)  # the interleaved runs this combines
    split: list[int] = field(default_factory=list)  # the load's connections held by each worker
    commits: tuple[int, int] | None = None  # (rows, transactions that stored them): the group commit's batches
    due_s: list[float] = field(default_factory=list)  # paced: when each latency's webhook was due, s from the start

    @property
    def answered(self) -> int:
        return self.ok + self.other

    @property
    def rate(self) -> float:
        """Answers/s; for combined slices the median of the slices' rates."""
        if self.slices:
            return statistics.median(s.rate for s in self.slices)
        return self.answered / self.window_s if self.window_s > 0 else 0.0

    @property
    def ok_rate(self) -> float:
        """200 answers/s; for combined slices the median of the slices' rates."""
        if self.slices:
            return statistics.median(s.ok_rate for s in self.slices)
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    def cpu_ms_per_answer(self, component: str) -> float:
        answered_per_s = self.answered / self.window_s if self.window_s > 0 else 0.0
        return 1000.0 * self.cpu.get(component, 0.0) / answered_per_s if answered_per_s else float("nan")

    @property
    def rows_per_commit(self) -> float | None:
        """Webhooks stored per transaction (the intake's group-commit batch size), over the
        slices combined."""
        parts = [s.commits for s in self.slices] if self.slices else [self.commits]
        if not parts or any(p is None for p in parts):
            return None
        rows, commits = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return rows / commits if commits else None

    def tail_windows(self, p: float = 99.0, window_s: float = 0.1) -> tuple[int, int, int] | None:
        """Where the slowest (100 - p)% of a paced run were due: (webhooks at or above the p-th
        percentile, distinct ``window_s`` windows of the run they were due in, the most in one
        window). A stall of the machine, the disk or PostgreSQL puts them in a few windows;
        a load the server cannot keep up with spreads them."""
        parts = self.slices or [self]
        if any(len(x.due_s) != len(x.latencies_us) or not x.due_s for x in parts):
            return None
        threshold = self.percentile_ms(p) * 1000.0
        windows: dict[tuple[int, int], int] = {}
        for i, x in enumerate(parts):
            for due, latency in zip(x.due_s, x.latencies_us, strict=False):
                if latency >= threshold:
                    key = (i, int(due // window_s))
                    windows[key] = windows.get(key, 0) + 1
        return sum(windows.values()), len(windows), max(windows.values(), default=0)

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_us:
            return float("nan")
        ordered = sorted(self.latencies_us)
        rank = max(1, math.ceil(p / 100.0 * len(ordered)))  # nearest rank
        return ordered[rank - 1] / 1000.0

    def to_json(self) -> dict[str, object]:
        return {
            "app": self.app,
            "phase": self.phase,
            "loadgen": self.loadgen,
            "sent": self.sent,
            "ok": self.ok,
            "other": self.other,
            "errors": self.errors,
            "window_s": round(self.window_s, 3),
            "rate_per_s": round(self.rate, 1),
            "ok_per_s": round(self.ok_rate, 1),
            "target_rate_per_s": self.target_rate,
            "p50_ms": round(self.percentile_ms(50), 3),
            "p95_ms": round(self.percentile_ms(95), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "cpu_cores": {k: round(v, 2) for k, v in self.cpu.items()},
            "check": self.check,
            "check_ok": self.check_ok,
            "slice_ok_per_s": [round(x.ok_rate, 1) for x in self.slices],
            "connections_per_worker": [x.split for x in self.slices] or [self.split],
            "rows_per_commit": None if self.rows_per_commit is None else round(self.rows_per_commit, 2),
            "slice_rows_per_commit": [
                round(x.commits[0] / x.commits[1], 2) if x.commits and x.commits[1] else None for x in self.slices
            ],
        }

    @classmethod
    def combine(cls, app: str, phase: str, slices: list[RunResult]) -> RunResult:
        """The interleaved slices of one app and phase as one result: counts, latencies and CPU
        added up (CPU weighted by time), rates the median of the slices' rates."""
        errors: dict[str, int] = {}
        for x in slices:
            for k, v in x.errors.items():
                errors[k] = errors.get(k, 0) + v
        window = sum(x.window_s for x in slices)
        cpu: dict[str, float] = {}
        if window > 0 and all(x.cpu for x in slices):
            for k in slices[0].cpu:
                cpu[k] = sum(x.cpu.get(k, 0.0) * x.window_s for x in slices) / window
        latencies = [v for x in slices for v in x.latencies_us]
        return cls(
            app,
            phase,
            slices[0].loadgen,
            sum(x.sent for x in slices),
            sum(x.ok for x in slices),
            sum(x.other for x in slices),
            errors,
            window,
            latencies,
            slices[0].target_rate,
            cpu,
            slices=slices,
        )


# ---------------------------------------------------------------------------------------------
# Load generators


@dataclass
class Load:
    host: str
    port: int
    mode: str  # max | paced
    duration_s: float
    connections: int
    rate: float  # total requests/s (paced only)
    tag: str
    template_path: Path
    template: str
    workdir: Path


def wrk_available() -> str | None:
    path = shutil.which("wrk")
    if not path:
        return None
    try:
        out = subprocess.run([path, "-v"], check=False, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "wrk"


def run_wrk(load: Load, window: CpuWindow | None = None) -> RunResult:
    out_path = load.workdir / f"wrk-{load.tag}.out"
    per_thread = load.rate / load.connections if load.mode == "paced" else 0.0
    # Every thread stops sending webhooks at its deadline once its last one is answered (then
    # sends GET /healthz until the end); wrk's own clock (whole seconds) only has to outlast that.
    # 3 s, not 1: gevent serves a kept-alive connection whose next request is already there
    # without yielding, so while other threads flooded /healthz a last webhook could wait ~1 s
    # (and stretch the slice's window: the intake's 12 s ran 15-18 s). web/gunicorn_conf.py's
    # pre_request yield ended that (windows 12.07 s); the slack stays for other settings.
    wrk_duration = math.ceil(load.duration_s) + WRK_SLACK_S
    cmd = [
        "wrk",
        "-t",
        str(load.connections),
        "-c",
        str(load.connections),
        "-d",
        f"{wrk_duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        f"http://{load.host}:{load.port}{PATH}",
        "--",
        load.mode,
        repr(load.duration_s),
        repr(per_thread),
        load.tag,
        str(load.template_path),
        AUTH,
        str(out_path),
        str(load.connections),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if window is not None:
        window.start(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=wrk_duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{stdout}\n{stderr}")
    sent = ok = other = lost = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    for line in out_path.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "E":
            _requests, connect, read, write, _status, timeout = (int(x) for x in rest.split())
            errors = {"connect": connect, "read": read, "write": write, "timeout": timeout, "unanswered": 0}
        elif kind == "T":
            _tid, t_sent, t_ok, t_other, first, last, t_lost = rest.split()
            lost += int(t_lost)
            sent += int(t_sent)
            ok += int(t_ok)
            other += int(t_other)
            if float(first) >= 0:
                firsts.append(float(first))
                lasts.append(float(last))
        elif kind == "L":
            latencies.extend(float(x) for x in rest.split())
    errors["unanswered"] = lost  # connections closed by the server without an answer
    window_s = (max(lasts) - min(firsts)) / 1e6 if firsts else 0.0
    return RunResult("", load.mode, "wrk", sent, ok, other, errors, window_s, latencies)


class _HttpConn:
    """One HTTP/1.1 connection on a non-blocking socket, driven by the asyncio loop's sock_*
    calls (lighter than streams). Knows whether the server keeps it open."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.open = True

    @classmethod
    async def connect(cls, loop: asyncio.AbstractEventLoop, host: str, port: int) -> _HttpConn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def exchange(self, loop: asyncio.AbstractEventLoop, request: bytes) -> int:
        """Send the request, read the whole answer; its status code."""
        await loop.sock_sendall(self.sock, request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed before the answer")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed inside the answer")
            rest += chunk
        if headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0"):
            self.close()
        return status

    def close(self) -> None:
        if self.open:
            self.open = False
            self.sock.close()


def run_python_client(load: Load, window: CpuWindow | None = None) -> RunResult:
    """The Python load generator: one asyncio loop in this process.

    mode "max": ``connections`` closed-loop connections (each sends its next webhook when the
    previous answer is in), as the wrk script does (the fallback when wrk is missing).
    mode "paced": open loop at ``rate`` webhooks/s: webhook i is due at t0 + i/rate whatever
    happened before, is sent on an idle kept-alive connection or on a new one opened at that
    moment (as a real webhook sender does), and its latency counts from when it was due. A
    client that connects only when it has something to send matters for gunicorn's sync
    workers: they close every connection, and a connection opened ahead of its request (as
    wrk does, reconnecting at once and then waiting out its delay) holds a sync worker idle.
    """
    prefix, *rest = load.template.split(ID_MARK)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\nAuthorization: {AUTH}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    )
    stats = {"sent": 0, "ok": 0, "other": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "unanswered": 0}
    latencies: list[float] = []
    dues: list[float] = []  # paced: each latency's due time, from the start
    bounds: list[float] = []
    origin = [0.0]  # when the run starts

    def request(event_id: str) -> bytes:
        body = (prefix + "".join(event_id + piece for piece in rest)).encode()
        return head.encode() + str(len(body)).encode() + b"\r\n\r\n" + body

    async def exchange(loop, conn: _HttpConn, event_id: str, due: float | None) -> _HttpConn | None:
        stats["sent"] += 1
        t_send = time.monotonic()
        bounds.append(t_send)
        try:
            # no per-request timeout (asyncio.wait_for costs a task and a timer each): a run
            # that hangs is cut by the 15 s wait at the end of the paced run or the deadline
            status = await conn.exchange(loop, request(event_id))
        except (OSError, ConnectionError, ValueError, IndexError):
            stats["unanswered"] += 1
            conn.close()
            return None
        t = time.monotonic()
        bounds.append(t)
        latencies.append((t - (min(t_send, due) if due is not None else t_send)) * 1e6)
        if due is not None:
            dues.append(due - origin[0])
        stats["ok" if status == 200 else "other"] += 1
        return conn if conn.open else None

    async def closed_loop(index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        conn: _HttpConn | None = None
        k = 0
        while time.monotonic() < deadline:
            if conn is None:
                try:
                    conn = await _HttpConn.connect(loop, load.host, load.port)
                except OSError:
                    stats["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            k += 1
            conn = await exchange(loop, conn, f"{load.tag}-{index + 1}-{k}", None)
        if conn is not None:
            conn.close()

    async def paced(start: float) -> None:
        loop = asyncio.get_running_loop()
        idle: list[_HttpConn] = []
        tasks: set[asyncio.Task] = set()

        async def one(i: int, due: float) -> None:
            conn = idle.pop() if idle else None
            if conn is None:
                try:
                    conn = await _HttpConn.connect(loop, load.host, load.port)
                except OSError:
                    stats["connect"] += 1
                    return
            kept = await exchange(loop, conn, f"{load.tag}-p-{i}", due)
            if kept is not None:
                idle.append(kept)

        total = int(load.duration_s * load.rate)
        for i in range(total):
            due = start + i / load.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=15)
        for conn in idle:
            conn.close()

    async def main() -> None:
        if window is not None:
            window.start(os.getpid())
        start = origin[0] = time.monotonic() + 0.05
        if load.mode == "paced":
            await paced(start)
        else:
            loops = [asyncio.create_task(closed_loop(i, start + load.duration_s)) for i in range(load.connections)]
            await asyncio.wait(loops, timeout=load.duration_s + 15)  # asyncio.run cancels any left

    asyncio.run(main())
    window_s = (max(bounds) - min(bounds)) if bounds else 0.0
    errors = {k: stats[k] for k in ("connect", "read", "write", "timeout", "unanswered")}
    return RunResult(
        "",
        load.mode,
        "python-asyncio",
        stats["sent"],
        stats["ok"],
        stats["other"],
        errors,
        window_s,
        latencies,
        due_s=dues,
    )


# ---------------------------------------------------------------------------------------------
# CPU accounting (to see where the 2 cores go)


def _cpu_of(proc) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except Exception:
        return 0.0


def _connections_on(proc, port: int) -> int:
    """Established TCP connections of ``proc`` on local ``port``: how the kernel (SO_REUSEPORT,
    web/gunicorn_conf.py) or the workers' accept race shared the load's connections out."""
    import psutil

    try:
        return sum(
            1
            for c in proc.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
    except psutil.Error:
        return 0


class CpuWindow:
    """CPU used by the gunicorn tree, PostgreSQL, Redis, the load generator and anything else,
    sampled inside the measured window (from 0.5 s after the load starts to 0.2 s before its
    deadline), in cores. Needs psutil (in requirements.txt); empty without it."""

    def __init__(self, server_pid: int, duration_s: float, port: int | None = None):
        self.server_pid = server_pid
        self.duration_s = duration_s
        self.port = port
        self.split: list[int] = []  # established connections on ``port`` per worker, at the first snapshot
        self.snaps: list[tuple[float, dict[str, float]]] = []
        self.timers: list[threading.Timer] = []

    def start(self, loadgen_pid: int) -> None:
        if self.duration_s < 1.0:
            return
        for at in (0.5, self.duration_s - 0.2):
            timer = threading.Timer(at, self._snap, args=(loadgen_pid,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)

    def _snap(self, loadgen_pid: int) -> None:
        try:
            import psutil
        except ImportError:
            return
        snap = {"server": 0.0, "postgres": 0.0, "redis": 0.0, "loadgen": 0.0}
        try:
            master = psutil.Process(self.server_pid)
            workers = master.children(recursive=True)
            snap["server"] = _cpu_of(master) + sum(_cpu_of(c) for c in workers)
            if self.port is not None and not self.snaps:
                self.split = sorted((_connections_on(w, self.port) for w in workers), reverse=True)
        except psutil.Error:
            pass
        for proc in psutil.process_iter(["name"]):
            name = proc.info.get("name") or ""
            if name.startswith("postgres"):
                snap["postgres"] += _cpu_of(proc)
            elif name.startswith("redis-server"):
                snap["redis"] += _cpu_of(proc)
        with contextlib.suppress(psutil.Error):
            snap["loadgen"] = _cpu_of(psutil.Process(loadgen_pid))
        total = psutil.cpu_times()
        snap["busy"] = total.user + total.nice + total.system + total.irq + total.softirq + getattr(total, "steal", 0.0)
        snap["irq"] = total.irq + total.softirq  # mostly loopback TCP: not charged to any process
        self.snaps.append((time.monotonic(), snap))

    def cores(self) -> dict[str, float]:
        for timer in self.timers:
            timer.join()
        if len(self.snaps) != 2:
            return {}
        (t0, before), (t1, after) = self.snaps
        cores = {k: max(0.0, after[k] - before[k]) / (t1 - t0) for k in before}
        busy = cores.pop("busy")
        # anything else running on the machine meanwhile (another test suite...) skews the figures
        cores["other"] = max(0.0, busy - sum(cores.values()))
        return cores


# ---------------------------------------------------------------------------------------------
# Servers, database and broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn master (and its workers) started by this process and stopped by it."""

    def __init__(self, app: str, env: dict[str, str], args: argparse.Namespace, workdir: Path, port: int):
        self.app = app
        self.port = port or free_port()
        self.log_path = workdir / f"gunicorn-{app}.log"
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            APPS[app],
            "-c",
            "python:web.gunicorn_conf",  # the Procfile's config file, for both apps
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(args.workers),
            "--worker-class",
            args.worker_class,
            "--threads",
            str(args.threads),
            "--backlog",
            "2048",
            "--keep-alive",
            "5",
            "--worker-tmp-dir",
            "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
        ]
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.app}) exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({self.app}) not ready after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the master we started
                self.proc.wait(timeout=5)
        self.log.close()


class Stores:
    """The benchmark's view of PostgreSQL (inbox_events) and Redis (the ``celery`` list)."""

    def __init__(self, database_url: str, redis_url: str):
        import redis
        from sqlalchemy import create_engine

        self.engine = create_engine(database_url, pool_size=1, max_overflow=0)
        self.redis = redis.Redis.from_url(redis_url)

    def flush_all(self) -> None:
        """Before a server starts: empty inbox and an empty Redis database."""
        self.truncate()
        self.redis.flushdb()

    def reset_between_runs(self) -> None:
        """Before each measured run: empty inbox, empty Redis database (the intake publishes to
        the anonymous exchange, so flushing kombu's binding keys under a live server is harmless)."""
        self.flush_all()

    def truncate(self) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE inbox_events RESTART IDENTITY"))

    def counts(self) -> tuple[int, int, int]:
        """(rows stored, rows stored as 'received', tasks queued)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows, received = conn.execute(
                text("SELECT count(*), count(*) FILTER (WHERE status = 'received') FROM inbox_events")
            ).one()
        return int(rows), int(received), int(self.redis.llen("celery"))

    def commits_after(self, last_id: int) -> tuple[int, int, int]:
        """(rows stored after inbox id ``last_id``, transactions that stored them, the last id).
        PostgreSQL's xmin is the id of the transaction that inserted each row (nothing updates
        them during the benchmark: no Celery worker runs)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows, commits, last = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT xmin::text), coalesce(max(id), :last) FROM inbox_events"
                    " WHERE id > :last"
                ),
                {"last": last_id},
            ).one()
        return int(rows), int(commits), int(last)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


class CommitProbe:
    """The disk's own share of the intake's tail latency, measured in the same run: one
    single-row INSERT and commit at a time (``rate`` per second) on its own connection, while
    the bare app (which never touches PostgreSQL) is under paced load. A durable commit waits
    for the WAL fsync, so when this probe alone sees 100 ms commits, so does every webhook
    stored then (they all share the same WAL)."""

    TABLE = "bench_commit_probe"

    def __init__(self, database_url: str, rate: float = 100.0):
        self.dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.interval = 1.0 / rate
        self.latencies_us: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CommitProbe:
        import psycopg

        self._conn = psycopg.connect(self.dsn, autocommit=True)
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"
        )
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

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._conn.execute(f"DROP TABLE IF EXISTS {self.TABLE}")
        self._conn.close()


def migrate(env: dict[str, str]) -> None:
    code = (
        "from config.settings import Settings; from persistence.database import upgrade_database; "
        "upgrade_database(Settings.from_env())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"migration failed:\n{proc.stdout}\n{proc.stderr}")


# ---------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(
    args: argparse.Namespace,
    env: dict[str, str],
    stores: Stores,
    workdir: Path,
    template: str,
    template_path: Path,
    loadgen: str,
) -> dict[str, list[RunResult]]:
    """Both servers up at once (an idle one only sleeps), measured in interleaved slices —
    intake, bare, bare, intake, … — so that both see the same machine, whatever else it runs."""
    apps = [a for a in ("intake", "bare") if a in args.apps]
    stores.flush_all()
    servers: dict[str, Server] = {}
    profiler = None
    try:
        for i, app in enumerate(apps):
            servers[app] = Server(app, env, args, workdir, (args.port + i) if args.port else 0)
        for server in servers.values():
            server.wait_ready()
        run_id = uuid.uuid4().hex[:8]

        def load(app: str, mode: str, duration: float, rate: float, tag: str) -> Load:
            connections = args.connections if mode == "max" else args.paced_connections
            return Load(
                "127.0.0.1",
                servers[app].port,
                mode,
                duration,
                connections,
                rate,
                f"{run_id}-{app}-{tag}",
                template_path,
                template,
                workdir,
            )

        max_run = run_wrk if loadgen == "wrk" else run_python_client
        commit_probe: list[float] = []
        paced_run = run_wrk if args.paced_loadgen == "wrk" else run_python_client

        last_id = [0]  # the inbox's last row before the slice being measured

        def measured(app: str, mode: str, duration: float, rate: float, tag: str) -> RunResult:
            window = CpuWindow(servers[app].proc.pid, duration, servers[app].port if mode == "max" else None)
            if app == "bare" and mode != "max":
                with CommitProbe(args.database_url) as probe:
                    result = paced_run(load(app, mode, duration, rate, tag), window)
                commit_probe.extend(probe.latencies_us)
            else:
                result = (max_run if mode == "max" else paced_run)(load(app, mode, duration, rate, tag), window)
            result.app, result.phase = app, ("max" if mode == "max" else "half")
            result.cpu = window.cores()
            result.split = window.split
            if app == "intake":
                rows, commits, last_id[0] = stores.commits_after(last_id[0])
                result.commits = (rows, commits)
            if mode != "max":
                result.target_rate = round(rate, 1)
            return result

        def interleaved(mode: str, total_s: float, rate: float) -> dict[str, RunResult]:
            slices: dict[str, list[RunResult]] = {app: [] for app in apps}
            for r in range(args.rounds):
                for app in apps if r % 2 == 0 else apps[::-1]:
                    print(f"  {mode:>5} {app:<6} slice {r + 1}/{args.rounds}", flush=True)
                    slices[app].append(measured(app, mode, total_s / args.rounds, rate, f"{mode}{r}"))
            return {app: RunResult.combine(app, "max" if mode == "max" else "half", xs) for app, xs in slices.items()}

        if args.warmup > 0:
            for app in apps:
                max_run(load(app, "max", args.warmup, 0, "warmup"))
        stores.reset_between_runs()
        last_id[0] = 0
        if args.profile:
            # the first app's whole max phase (wrk outlasts each slice by WRK_SLACK_S)
            # each slice: wrk's whole seconds plus its slack, and a second for the gaps between
            profiled_s = (math.ceil(args.duration / args.rounds) + WRK_SLACK_S + 1) * args.rounds * len(apps)
            profiler = start_profiler(servers[apps[0]].proc.pid, args.profile, profiled_s, args.profile_gil)
        at_max = interleaved("max", args.duration, 0)
        if profiler is not None:
            profiler.wait(timeout=profiled_s + 60)
            profiler = None
        if "intake" in at_max:
            verify(at_max["intake"], stores)
        rate = args.half_rate if args.half_rate is not None else at_max["intake"].ok_rate / 2
        stores.reset_between_runs()
        last_id[0] = 0
        at_half = interleaved("paced", args.half_duration, rate)
        if "intake" in at_half:
            verify(at_half["intake"], stores)
        if commit_probe:
            results_probe = RunResult(
                "commit probe", "half", "probe", len(commit_probe), len(commit_probe), 0, {}, 0.0, commit_probe
            )
            return {app: [at_max[app], at_half[app]] for app in apps} | {"_probe": [results_probe]}
        return {app: [at_max[app], at_half[app]] for app in apps}
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
        for server in servers.values():
            server.stop()


def start_profiler(master_pid: int, out: str, duration: float, gil_only: bool = False) -> subprocess.Popen:
    """py-spy on the workers. By default a sample counts whenever a thread is not idle, which
    includes a worker that waits, runnable, for a CPU after a send woke PostgreSQL or Redis:
    syscalls look far costlier than they are. ``gil_only`` counts only samples holding the GIL,
    closer to the CPU actually spent."""
    spy = shutil.which("py-spy")
    if not spy:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    fmt = "raw" if out.endswith(".txt") else ("speedscope" if out.endswith(".json") else "flamegraph")
    cmd = [
        spy,
        "record",
        "--pid",
        str(master_pid),
        "--subprocesses",
        "--duration",
        str(math.ceil(duration)),
        "--rate",
        "200",
        "--format",
        fmt,
        "--output",
        out,
        "--nonblocking",
    ] + (["--gil"] if gil_only else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def verify(result: RunResult, stores: Stores) -> None:
    """Every 200 answer of the intake since the last reset left one stored row and one task.

    Proven when the rows match the 200s one for one. A webhook still unanswered when wrk
    stopped (a latency outlier; RevenueCat would retry it, a duplicate) may have been stored:
    then the counts can no longer show that no 200 lacks its row, and the check says so."""
    rows, received, queued = stores.counts()
    lost = result.errors.get("unanswered", 0)  # connections the server closed without an answer
    pending = max(0, result.sent - result.answered - lost)  # still unanswered when wrk stopped
    consistent = queued == rows and received == rows and result.ok <= rows <= result.sent
    proven = consistent and rows == result.ok
    notes = []
    if pending:
        notes.append(f"{pending} sent but still unanswered when the load generator stopped")
    if lost:
        notes.append(f"{lost} connections closed by the server without an answer")
    if proven:
        verdict = "OK (every 200 is stored and queued)"
    elif consistent:
        verdict = (
            f"NOT PROVEN ({rows - result.ok} rows beyond the 200s: stored webhooks whose answer was not "
            "seen, so a 200 without a row cannot be ruled out)"
        )
    else:
        verdict = "MISMATCH"
    result.check_ok = proven
    result.check = (
        f"{result.sent} sent, {result.ok} answered 200, {rows} rows stored, {queued} tasks queued"
        f" -> {verdict}" + "".join(f"; {n}" for n in notes)
    )


def fmt_ms(r: RunResult) -> str:
    return f"{r.percentile_ms(50):6.2f} / {r.percentile_ms(95):6.2f} / {r.percentile_ms(99):6.2f}"


def _tail(r: RunResult) -> str:
    t = r.tail_windows()
    return "-" if t is None else f"{t[0]} / {t[1]} / {t[2]}"


def _per_commit(r: RunResult) -> str:
    return "-" if r.rows_per_commit is None else f"{r.rows_per_commit:.2f}"


def report(results: dict[str, list[RunResult]], args: argparse.Namespace, loadgen_desc: str, body_bytes: int) -> bool:
    print()
    print(
        f"Webhook intake benchmark: gunicorn -k {args.worker_class} -w {args.workers}"
        + (f" --threads {args.threads}" if args.worker_class == "gthread" else "")
        + f" for both apps; {body_bytes} B bodies, unique event ids; per app {args.duration:g} s at max rate"
        f" and {args.half_duration:g} s at half rate, each in {args.rounds} interleaved slices"
    )
    print(textwrap.fill(f"load: {loadgen_desc}", width=110, subsequent_indent="  "))
    apps = [a for a in ("intake", "bare") if a in results]
    width = 30
    components = ("server", "postgres", "redis", "loadgen", "irq", "other")

    def slice_range(r: RunResult) -> str:
        rates = [x.ok_rate for x in r.slices] or [r.ok_rate]
        return f"{min(rates):,.0f}-{max(rates):,.0f}"

    rows = [
        ("MAX RATE", None),
        ("  webhooks/s answered 200 (median)", lambda r: f"{r[0].ok_rate:,.0f}"),
        ("  slices min-max", lambda r: slice_range(r[0])),
        (
            "  connections per worker, each slice",
            lambda r: " ".join("/".join(map(str, x.split)) or "?" for x in (r[0].slices or [r[0]])),
        ),
        ("  latency p50 / p95 / p99 ms", lambda r: fmt_ms(r[0])),
        (
            "  CPU cores: gunicorn/pg/redis/gen/irq/other",
            lambda r: "/".join(f"{r[0].cpu.get(k, 0):.2f}" for k in components),
        ),
        (
            "  CPU ms per webhook: gunicorn/pg/redis",
            lambda r: "/".join(f"{r[0].cpu_ms_per_answer(k):.2f}" for k in components[:3]),
        ),
        ("  webhooks stored per commit", lambda r: _per_commit(r[0])),
        ("  non-200 answers, socket errors", lambda r: f"{r[0].other}, {sum(r[0].errors.values())}"),
        ("HALF RATE (open loop)", None),
        (
            "  webhooks/s target / achieved",
            lambda r: f"{r[1].target_rate or 0:,.0f} / {r[1].answered / r[1].window_s if r[1].window_s else 0:,.0f}",
        ),
        ("  latency p50 / p95 / p99 ms", lambda r: fmt_ms(r[1])),
        (
            "  CPU cores: gunicorn/pg/redis/gen/irq/other",
            lambda r: "/".join(f"{r[1].cpu.get(k, 0):.2f}" for k in components),
        ),
        ("  slowest 1%: webhooks / 100-ms windows / most in one", lambda r: _tail(r[1])),
        ("  webhooks stored per commit", lambda r: _per_commit(r[1])),
        ("  non-200 answers, socket errors", lambda r: f"{r[1].other}, {sum(r[1].errors.values())}"),
    ]
    print()
    print(" " * 42 + "".join(f"{a:>{width}}" for a in apps))
    for label, fn in rows:
        print(f"{label:<42}" + ("" if fn is None else "".join(f"{fn(results[a]):>{width}}" for a in apps)))
    probe = results.pop("_probe", None)
    if probe:
        p = probe[0]
        print(
            f"{'  PostgreSQL commit alone, p50 / p99 / max':<42}"
            f"{f'{p.percentile_ms(50):.2f} / {p.percentile_ms(99):.2f} / {max(p.latencies_us) / 1000:.0f} ms':>{width * len(apps)}}"
        )
        print(
            "    (one INSERT + commit at a time on an idle connection while the bare app ran: the fsync latency every"
        )
        print("     webhook commit waits for; the intake's half-rate tail cannot be shorter than its stalls)")
    print()
    all_checks_ok = True
    if "intake" in results:
        for r in results["intake"]:
            print(f"check, intake at {r.phase} rate: {r.check}")
            all_checks_ok = all_checks_ok and bool(r.check_ok)
    others = [r.cpu.get("other", 0.0) for rs in results.values() for r in rs if r.cpu]
    if others and max(others) > 0.2:
        print(
            f"NOTE: up to {max(others):.2f} cores went to other work on this machine during the runs: "
            "the figures are lower than on an idle machine."
        )
    intake_max = results["intake"][0].ok_rate if "intake" in results else None
    ratio = None
    if "intake" in results and "bare" in results and results["bare"][0].ok_rate > 0:
        ratio = intake_max / results["bare"][0].ok_rate
        print(f"intake / bare throughput at max rate: {ratio:.1%}")
    if "intake" in results:
        half_p99 = results["intake"][1].percentile_ms(99)
        print()
        print("targets:")
        print(
            f"  >= {TARGET_RATE:,.0f} stored-and-queued webhooks/s   {intake_max:>8,.0f}     "
            f"{'MET' if intake_max >= TARGET_RATE else 'MISSED'}"
        )
        if ratio is not None:
            print(
                f"  >= {TARGET_RATIO:.0%} of the bare endpoint           {ratio:>8.1%}     "
                f"{'MET' if ratio >= TARGET_RATIO else 'MISSED'}"
            )
        print(
            f"  p99 < {TARGET_HALF_P99_MS:g} ms at half the max rate        {half_p99:>5.2f} ms     "
            f"{'MET' if half_p99 < TARGET_HALF_P99_MS else 'MISSED'}"
        )
    if args.json:
        payload = {
            "settings": {k: v for k, v in vars(args).items() if k not in {"json"}},
            "loadgen": loadgen_desc,
            "body_bytes": body_bytes,
            "results": [r.to_json() for rs in results.values() for r in rs],
            "ratio": ratio,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"\nresults written to {args.json}")
    return all_checks_ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.intake",
        description="Benchmark POST /webhooks/revenuecat (PostgreSQL + Redis, gunicorn) beside a bare Flask "
        "endpoint that only parses JSON, under the same gunicorn settings and load. Needs wrk "
        "(apt-get install wrk); falls back to a Python client without it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=DEFAULT_DB,
        help="SQLAlchemy URL of the PostgreSQL database (its inbox_events table is truncated)",
    )
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="Redis broker URL (this database is flushed)")
    p.add_argument("--apps", default="intake,bare", help="which apps to run, comma-separated: intake, bare")
    p.add_argument("--duration", type=float, default=12.0, help="seconds at max rate, per app")
    p.add_argument("--half-duration", type=float, default=12.0, help="seconds at half rate (paced), per app")
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="slices each duration is cut into, the apps taking turns (so both meet the same machine)",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load after each server starts")
    p.add_argument(
        "--half-rate",
        type=float,
        default=None,
        help="requests/s of the paced runs (default: half the intake's measured max)",
    )
    p.add_argument("--connections", type=int, default=16, help="connections at max rate (one wrk thread each)")
    p.add_argument(
        "--paced-connections", type=int, default=16, help="connections of the paced runs with --paced-loadgen wrk"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="gunicorn workers (default: one per core, as the Procfile's web process)",
    )
    p.add_argument(
        "--worker-class", default="gevent", help="gunicorn worker class: gevent (the Procfile's), sync, gthread"
    )
    p.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (gthread)")
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="port of the intake on 127.0.0.1, the next one for the bare app (0: free ones)",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator of the max-rate runs (auto: wrk when installed)",
    )
    p.add_argument(
        "--paced-loadgen",
        choices=("python", "wrk"),
        default="python",
        help="load generator of the half-rate runs: the Python open-loop client, or wrk's Lua delay() "
        "(which holds gunicorn sync workers on connections opened ahead of their request)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="py-spy record the first app's workers during its max-rate run (.svg flamegraph, .txt raw, .json speedscope); "
        "perturbs the figures",
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: count only samples holding the GIL (CPU spent, not time runnable)",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long (at most 60 s) for the machine to be idle",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the gunicorn logs and wrk output (kept anyway when a check fails)"
    )
    args = p.parse_args(argv)
    args.apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = set(args.apps) - set(APPS)
    if unknown:
        p.error(f"unknown app(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if min(args.duration, args.half_duration) / args.rounds < 2:
        p.error("each slice (--duration or --half-duration / --rounds) must last at least 2 s")
    if args.duration + args.half_duration > 60:
        p.error("--duration and --half-duration may add up to at most 60 s (the whole run stays bounded)")
    if not 0 <= args.wait_quiet <= 60:
        p.error("--wait-quiet must be between 0 and 60 s")
    if "intake" not in args.apps and args.half_rate is None:
        p.error("without the intake run, give --half-rate")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = wrk_available()
    if args.loadgen == "wrk" and not wrk:
        print("wrk is not installed: install it with `apt-get install wrk` (or use --loadgen python)", file=sys.stderr)
        return 2
    if args.loadgen == "auto" and not wrk:
        print(
            "NOTE: wrk is not installed (apt-get install wrk); falling back to the Python asyncio load generator,\n"
            "      which runs on the same 2 cores as the servers and lowers the figures.",
            file=sys.stderr,
        )
    loadgen = "wrk" if (args.loadgen in ("auto", "wrk") and wrk) else "python"
    if args.paced_loadgen == "wrk" and not wrk:
        print(
            "wrk is not installed: install it with `apt-get install wrk` (or drop --paced-loadgen wrk)", file=sys.stderr
        )
        return 2
    max_desc = (
        f"{wrk} with bench/wrk_webhooks.lua, {args.connections} connections (one per wrk thread)"
        if loadgen == "wrk"
        else f"Python asyncio client, {args.connections} connections (wrk missing)"
    )
    if args.paced_loadgen == "wrk":
        paced_desc = (
            f"open loop paced by wrk's Lua delay() over {args.paced_connections} connections, latency counted "
            "from each request's due time"
        )
    else:
        paced_desc = (
            "open loop, Python asyncio client (each webhook due at t0 + i/rate, sent on an idle kept-alive "
            "connection or a new one opened then), latency counted from each webhook's due time"
        )
    loadgen_desc = f"max rate: closed loop, {max_desc}; half rate: {paced_desc}"

    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    template = webhook_template()
    template_path = workdir / "webhook.json"
    template_path.write_text(template)
    body_bytes = len(template.replace(ID_MARK, "xxxxxxxx-max-1-12345").encode())
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "REVENUECAT_WEBHOOK_AUTH": AUTH,
        "API_TOKEN": API_TOKEN,
        "INSTANCE_PATH": str(workdir / "instance"),
        "SENTRY_DSN": "",
        "PYTHONUNBUFFERED": "1",
    }
    started = time.monotonic()
    busy = machine_busy(1.0)
    if busy is not None and busy > 0.25 and args.wait_quiet > 0:
        print(
            f"the machine is busy ({busy:.2f} cores): waiting up to {args.wait_quiet:g} s for it to quiet down ...",
            flush=True,
        )
        deadline = time.monotonic() + args.wait_quiet
        while busy is not None and busy > 0.25 and time.monotonic() < deadline:
            busy = machine_busy(2.0)
    if busy is not None and busy > 0.25:
        print(
            f"WARNING: {busy:.2f} cores were busy before the run: other work shares these 2 cores and will lower "
            "the figures (see 'other' below).",
            flush=True,
        )
    print(f"migrating {args.database_url} ...", flush=True)
    migrate(env)
    stores = Stores(args.database_url, args.redis_url)
    try:
        print(f"running {' and '.join(args.apps)} under gunicorn ...", flush=True)
        results = run_benchmark(args, env, stores, workdir, template, template_path, loadgen)
    finally:
        stores.close()
    checks_ok = report(results, args, loadgen_desc, body_bytes)
    if checks_ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n(total {time.monotonic() - started:.0f} s)")
    else:
        print(f"\n(total {time.monotonic() - started:.0f} s; gunicorn logs and wrk output in {workdir})")
    return 0 if checks_ok else 1


def machine_busy(seconds: float) -> float | None:
    """Cores busy on the whole machine over the next ``seconds``."""
    try:
        import psutil
    except ImportError:
        return None

    def busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    before = busy()
    time.sleep(seconds)
    return (busy() - before) / seconds


if __name__ == "__main__":
    sys.exit(main())
