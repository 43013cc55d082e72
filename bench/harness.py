"""The benchmarks' shared harness: child processes started and stopped by pid, free ports,
waiting for readiness, CPU used per process, the machine's load, and printing figures.

Every benchmark in bench/ runs over this and prints figures; none asserts anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_T0 = time.monotonic()


def say(message: str) -> None:
    """A progress line, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


# --- child processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """One process a benchmark started, in a session (process group) of its own."""

    name: str
    proc: subprocess.Popen
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raise with the end of its log if it has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Signal its process group (it and what it forked), then kill the group if it lingers.
        A child that already exited on its own is left alone (its id may be another's now)."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # what it forked may outlive it (a worker still draining): nothing of the group stays
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Supervisor:
    """Every process a benchmark starts, stopped on the way out, on SIGTERM, and by a watchdog
    ``time_box_s`` + 60 s after the start, by their own ids (never by name)."""

    def __init__(self, workdir: Path, *, time_box_s: float | None = None) -> None:
        self.workdir = workdir
        self.time_box_s = time_box_s
        self.children: list[Child] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def start(self, name: str, argv: list[str], *, env: dict[str, str], capture_stdout: bool = False) -> Child:
        """Start ``argv`` in ROOT; its output goes to ``<workdir>/<name>.log`` (stdout piped
        to the caller instead when ``capture_stdout``)."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE if capture_stdout else log,
                stderr=log,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        with self._lock:
            self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        with self._lock:
            if child in self.children:
                self.children.remove(child)

    def stop_all(self) -> None:
        with self._lock:
            children = list(reversed(self.children))
            self.children.clear()
        for child in children:
            with contextlib.suppress(Exception):
                child.stop(timeout_s=8.0)

    def __enter__(self) -> Supervisor:
        def on_sigterm(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        if self.time_box_s is not None:
            self._timer = threading.Timer(self.time_box_s + 60, self._watchdog)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.stop_all()

    def _watchdog(self) -> None:
        print("!! watchdog: the time box + 60 s is over, stopping every child process", flush=True)
        self.stop_all()
        os._exit(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], *, timeout_s: float, what: str, child: Child | None = None, every_s: float = 0.1
) -> None:
    """Poll ``predicate`` until it is true; raise after ``timeout_s``, or at once if ``child`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if child is not None:
            child.check()
        with contextlib.suppress(OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            tail = f"\n{child.tail()}" if child is not None else ""
            raise RuntimeError(f"{what}: not ready after {timeout_s:g} s{tail}")
        time.sleep(every_s)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """GET ``url`` answers 200 (connection errors count as no)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def gunicorn_argv(app: str, port: int, *options: str) -> list[str]:
    """gunicorn serving ``app`` on 127.0.0.1:``port`` with the given options (warnings only logged)."""
    return [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--log-level", "warning", *options]


# --- environment --------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment for a child, without the engine's own settings (the benchmark gives
    those), with the project importable."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SENTRY_DSN"}}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# --- CPU, per process and for the machine ------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return []


def named(*prefixes: str) -> list[int]:
    """Processes whose name starts with one of ``prefixes`` (e.g. ``postgres``, ``redis-server``)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if (p.info.get("name") or "").startswith(prefixes)]


def machine_busy_s() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, of which interrupts) so far."""
    import psutil

    t = psutil.cpu_times()
    irq = t.irq + t.softirq  # mostly loopback TCP: charged to no process
    return t.user + t.nice + t.system + irq + getattr(t, "steal", 0.0), irq


@dataclass
class CpuSnapshot:
    at: float
    by_part: dict[str, dict[int, float]]
    busy_s: float
    irq_s: float


@dataclass
class CpuMeter:
    """CPU used by named parts of the system between two snapshots. Each part is a function
    giving its pids now; a pid seen only in the later snapshot counts from 0 (it started in
    between). ``irq`` and ``other`` (the machine's busy time not in any part: other work on a
    shared machine) are added."""

    parts: dict[str, Callable[[], Iterable[int]]]
    timers: list[threading.Timer] = field(default_factory=list)
    snaps: list[CpuSnapshot] = field(default_factory=list)

    def snapshot(self) -> CpuSnapshot:
        by_part = {}
        for name, pids in self.parts.items():
            by_part[name] = {pid: cpu_seconds(pid) for pid in pids()}
        busy, irq = machine_busy_s()
        return CpuSnapshot(time.monotonic(), by_part, busy, irq)

    def seconds(self, before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        spent = {}
        for name, now in after.by_part.items():
            then = before.by_part.get(name, {})
            spent[name] = sum(max(0.0, s - then.get(pid, 0.0)) for pid, s in now.items())
        spent["irq"] = after.irq_s - before.irq_s
        spent["other"] = max(0.0, after.busy_s - before.busy_s - sum(spent.values()))
        return spent

    def cores(self, before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        elapsed = after.at - before.at
        return {k: v / elapsed for k, v in self.seconds(before, after).items()} if elapsed > 0 else {}

    def sample_between(self, start_s: float, end_s: float) -> None:
        """Take two snapshots, ``start_s`` and ``end_s`` from now (inside a load's window);
        ``window_cores()`` waits for them."""
        for at in (start_s, end_s):
            timer = threading.Timer(at, lambda: self.snaps.append(self.snapshot()))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)

    def window_cores(self) -> dict[str, float]:
        for timer in self.timers:
            timer.join()
        return self.cores(self.snaps[0], self.snaps[1]) if len(self.snaps) == 2 else {}


def machine_busy(seconds: float) -> float:
    """Cores busy on the whole machine over the next ``seconds``."""
    before, _ = machine_busy_s()
    time.sleep(seconds)
    return (machine_busy_s()[0] - before) / seconds


def wait_quiet(max_wait_s: float, *, quiet_for_s: float = 5.0, threshold_cores: float = 0.3) -> float:
    """Wait (at most ``max_wait_s``) until the machine has been nearly idle for ``quiet_for_s``;
    returns the cores busy over the last second measured."""
    give_up = time.monotonic() + max_wait_s
    quiet_since = time.monotonic()
    busy = machine_busy(1.0)
    while time.monotonic() < give_up:
        if busy > threshold_cores:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_for_s:
            break
        busy = machine_busy(1.0)
    return busy


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f}"


# --- figures -----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100.0 * len(ordered))) - 1]


def ms(seconds: list[float], p: float) -> str:
    return f"{percentile(seconds, p) * 1000:.1f} ms"


@dataclass
class Figures:
    """The figures a benchmark prints at its end: a value, and the target it is read against
    (``met`` None: no target). Printing is all it does."""

    title: str
    rows: list[tuple[str, str, str, bool | None]] = field(default_factory=list)

    def add(self, label: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.rows.append((label, value, target, met))

    def print(self, command: str) -> None:
        width = max((len(r[0]) for r in self.rows), default=10)
        print(f"\n{self.title} ({load_line()} now)", flush=True)
        for label, value, target, met in self.rows:
            verdict = "" if met is None else ("met" if met else "MISSED")
            aim = f"target {target:<20} {verdict}" if target else ""
            print(f"  {label:<{width}}  {value:>24}   {aim}".rstrip(), flush=True)
        print(f"  command: {command}", flush=True)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A scratch directory for logs; removed at the end unless ``keep``."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"(logs kept in {path})", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
