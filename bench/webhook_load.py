"""Load for bench/intake.py: distinct RevenueCat webhooks sent by wrk (bench/wrk_webhooks.lua)
or by a Python asyncio client, and what one run of either measured.

wrk runs closed loop, one connection per thread, latencies measured in the Lua script (C and
LuaJIT: little CPU taken from the servers). The Python client runs closed loop too (when wrk
is missing) or open loop: webhook i due at t0 + i/rate, sent on an idle kept-alive connection or
a new one opened at that moment, its latency counted from when it was due, so a stall is
charged to every webhook it delays (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import CpuMeter, percentile
from bench.stack import WEBHOOK_AUTH

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_webhooks.lua"
PATH = "/webhooks/revenuecat"
ID_MARK = "@@ID@@"
WRK_SLACK_S = 3  # wrk's clock outlasts a run's deadline by this: its last webhooks are answered


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


@dataclass
class Load:
    port: int
    mode: str  # max (closed loop) | paced (open loop)
    duration_s: float
    connections: int
    rate: float  # webhooks/s, paced only
    tag: str  # in every event id: the run, the app, the slice
    template_path: Path
    workdir: Path


@dataclass
class RunResult:
    """One run (or, with ``slices``, several interleaved runs of one app and phase)."""

    sent: int
    ok: int  # answers 200
    other: int  # any other answer
    errors: dict[str, int]
    window_s: float
    latencies_us: list[float]
    due_s: list[float] = field(default_factory=list)  # paced: when each latency's webhook was due
    target_rate: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # cores, by part
    split: list[int] = field(default_factory=list)  # the load's connections held by each worker
    stored: tuple[int, int, int] | None = None  # (rows, transactions that stored them, tasks queued)
    slices: list[RunResult] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.ok + self.other

    @property
    def ok_rate(self) -> float:
        """200 answers/s; for combined slices the median of the slices' rates."""
        if self.slices:
            return statistics.median(s.ok_rate for s in self.slices)
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    @property
    def answered_rate(self) -> float:
        return self.answered / self.window_s if self.window_s > 0 else 0.0

    def ms(self, p: float) -> float:
        return percentile(self.latencies_us, p) / 1000.0

    def cpu_ms_per_answer(self, part: str) -> float:
        rate = self.answered_rate
        return 1000.0 * self.cpu.get(part, 0.0) / rate if rate else float("nan")

    @property
    def rows_per_commit(self) -> float | None:
        parts = [s.stored for s in (self.slices or [self])]
        if any(p is None for p in parts):
            return None
        rows, commits = sum(p[0] for p in parts if p), sum(p[1] for p in parts if p)
        return rows / commits if commits else None

    def tail_windows(self, p: float = 99.0, window_s: float = 0.1) -> tuple[int, int, int] | None:
        """Where the slowest (100 - p)% of a paced run were due: (webhooks at or above the
        p-th percentile, distinct ``window_s`` windows they were due in, the most in one). A
        stall of the machine or the disk puts them in a few windows; a server short of CPU
        spreads them."""
        parts = self.slices or [self]
        if any(len(x.due_s) != len(x.latencies_us) or not x.due_s for x in parts):
            return None
        threshold = self.ms(p) * 1000.0
        windows: dict[tuple[int, int], int] = {}
        for i, x in enumerate(parts):
            for due, latency in zip(x.due_s, x.latencies_us, strict=True):
                if latency >= threshold:
                    key = (i, int(due // window_s))
                    windows[key] = windows.get(key, 0) + 1
        return sum(windows.values()), len(windows), max(windows.values(), default=0)

    @classmethod
    def combine(cls, slices: list[RunResult]) -> RunResult:
        """Interleaved slices as one: counts and latencies added up, CPU weighted by time."""
        errors: dict[str, int] = {}
        for x in slices:
            for k, v in x.errors.items():
                errors[k] = errors.get(k, 0) + v
        window = sum(x.window_s for x in slices)
        cpu: dict[str, float] = {}
        if window > 0 and all(x.cpu for x in slices):
            cpu = {k: sum(x.cpu.get(k, 0.0) * x.window_s for x in slices) / window for k in slices[0].cpu}
        return cls(
            sum(x.sent for x in slices),
            sum(x.ok for x in slices),
            sum(x.other for x in slices),
            errors,
            window,
            [v for x in slices for v in x.latencies_us],
            target_rate=slices[0].target_rate,
            cpu=cpu,
            slices=slices,
        )


def wrk_version() -> str | None:
    """wrk's version line, or None when wrk is not installed."""
    path = shutil.which("wrk")
    if not path:
        return None
    out = subprocess.run([path, "-v"], check=False, capture_output=True, text=True, timeout=5)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0] if lines else "wrk"


def run_wrk(load: Load, meter: CpuMeter | None = None) -> RunResult:
    """Closed loop: each wrk thread sends its next webhook as soon as the last is answered;
    past the deadline it sends GET /healthz only, so that no webhook is left in flight."""
    out_path = load.workdir / f"wrk-{load.tag}.out"
    wrk_s = math.ceil(load.duration_s) + WRK_SLACK_S
    cmd = ["wrk", "-t", str(load.connections), "-c", str(load.connections), "-d", f"{wrk_s}s", "--timeout", "10s"]
    cmd += ["-s", str(LUA_SCRIPT), f"http://127.0.0.1:{load.port}{PATH}", "--", load.mode, repr(load.duration_s)]
    cmd += ["0", load.tag, str(load.template_path), WEBHOOK_AUTH, str(out_path), str(load.connections)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if meter is not None:
        meter.sample_between(0.5, load.duration_s - 0.2)
    try:
        stdout, stderr = proc.communicate(timeout=wrk_s + 30)
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
            errors = {"connect": connect, "read": read, "write": write, "timeout": timeout}
        elif kind == "T":
            _tid, t_sent, t_ok, t_other, first, last, t_lost = rest.split()
            sent, ok, other, lost = sent + int(t_sent), ok + int(t_ok), other + int(t_other), lost + int(t_lost)
            if float(first) >= 0:
                firsts.append(float(first))
                lasts.append(float(last))
        elif kind == "L":
            latencies.extend(float(x) for x in rest.split())
    errors["unanswered"] = lost  # connections closed by the server without an answer
    window_s = (max(lasts) - min(firsts)) / 1e6 if firsts else 0.0
    return RunResult(sent, ok, other, errors, window_s, latencies)


class _HttpConn:
    """One HTTP/1.1 connection driven by the asyncio loop's sock_* calls (lighter than streams)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.open = True

    @classmethod
    async def connect(cls, loop: asyncio.AbstractEventLoop, port: int) -> _HttpConn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
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
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        while len(rest) < int(headers.get("content-length", "0")):
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed inside the answer")
            rest += chunk
        if headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0"):
            self.close()
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.open:
            self.open = False
            self.sock.close()


def run_python_client(load: Load, meter: CpuMeter | None = None) -> RunResult:
    """The asyncio client: closed loop over ``connections`` (mode max) or open loop at ``rate``
    (mode paced), a webhook sent on an idle kept-alive connection or on one opened when due."""
    prefix, *rest = load.template_path.read_text().split(ID_MARK)
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {WEBHOOK_AUTH}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: "
    stats = dict.fromkeys(("sent", "ok", "other", "connect", "unanswered"), 0)
    latencies: list[float] = []
    dues: list[float] = []
    bounds: list[float] = []
    origin = 0.0  # when the run starts, set inside the loop

    def request(event_id: str) -> bytes:
        body = (prefix + "".join(event_id + piece for piece in rest)).encode()
        return f"{head}{len(body)}\r\n\r\n".encode() + body

    async def exchange(loop, conn: _HttpConn, event_id: str, due: float | None) -> _HttpConn | None:
        stats["sent"] += 1
        t_send = time.monotonic()
        bounds.append(t_send)
        try:
            status = await conn.exchange(loop, request(event_id))
        except (OSError, ValueError, IndexError):
            stats["unanswered"] += 1
            conn.close()
            return None
        t = time.monotonic()
        bounds.append(t)
        latencies.append((t - (min(t_send, due) if due is not None else t_send)) * 1e6)
        if due is not None:
            dues.append(due - origin)
        stats["ok" if status == 200 else "other"] += 1
        return conn if conn.open else None

    async def connected(loop) -> _HttpConn | None:
        try:
            return await _HttpConn.connect(loop, load.port)
        except OSError:
            stats["connect"] += 1
            return None

    async def closed_loop(index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        conn: _HttpConn | None = None
        k = 0
        while time.monotonic() < deadline:
            conn = conn or await connected(loop)
            if conn is None:
                await asyncio.sleep(0.01)
                continue
            k += 1
            conn = await exchange(loop, conn, f"{load.tag}-{index + 1}-{k}", None)
        if conn is not None:
            conn.close()

    async def paced() -> None:
        loop = asyncio.get_running_loop()
        idle: list[_HttpConn] = []
        tasks: set[asyncio.Task] = set()

        async def one(i: int, due: float) -> None:
            conn = idle.pop() if idle else await connected(loop)
            if conn is not None and (kept := await exchange(loop, conn, f"{load.tag}-p-{i}", due)) is not None:
                idle.append(kept)

        for i in range(int(load.duration_s * load.rate)):
            due = origin + i / load.rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=15)
        for conn in idle:
            conn.close()

    async def main() -> None:
        nonlocal origin
        origin = time.monotonic() + 0.05
        if meter is not None:
            meter.sample_between(0.5, load.duration_s - 0.2)
        if load.mode == "paced":
            await paced()
        else:
            deadline = origin + load.duration_s
            loops = [asyncio.create_task(closed_loop(i, deadline)) for i in range(load.connections)]
            await asyncio.wait(loops, timeout=load.duration_s + 15)

    asyncio.run(main())
    errors = {"connect": stats["connect"], "unanswered": stats["unanswered"]}
    window_s = (max(bounds) - min(bounds)) if bounds else 0.0
    return RunResult(stats["sent"], stats["ok"], stats["other"], errors, window_s, latencies, due_s=dues)
