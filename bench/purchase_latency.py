"""Benchmark: purchase-to-access latency at 50 purchases per second.

The whole path, each part in its own process as in production (Procfile):

    simulator (python -m simulators.revenuecat, auto-delivers the webhook)
      -> gunicorn, gevent workers: POST /webhooks/revenuecat (stored, task published)
      -> celery worker (prefork): process_event -> GET /v1/subscribers from the simulator
         -> ledger, grants, commit -> access-change notification (Redis)
      -> the app's long-poll GET /v1/users/<id>/access?wait=30&since=<etag> answers

For each purchase a client starts long-polling its user's access ``--lead`` seconds before; the
purchase is made at its scheduled instant (``POST /_sim/purchase_non_renewing``, which returns
once the simulator has delivered the webhook). Latency = from just before that call to the
long-poll's answer showing the course. Purchases are paced open-loop at ``--rate``.

Loopback only, bounded (about 40 s with the defaults), stops everything it started.

    python -m bench.purchase_latency
    python -m bench.purchase_latency --rate 50 --duration 20 --web-workers 2 --celery-concurrency 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.long_poll import (
    DEFAULT_DB,
    DEFAULT_REDIS,
    SIM_KEY,
    WEBHOOK_AUTH,
    Process,
    ensure_database,
    free_port,
    ms,
    percentile,
    request,
    reset_stores,
    stack_env,
    start_celery,
    start_gunicorn,
)

PRODUCT = "h01enb"
RESOURCE = "course:H01ENB"
TARGET_P95_S = 1.0


@dataclass
class Purchase:
    index: int
    app_user_id: str
    due: float
    purchased_at: float = 0.0
    delivered_at: float = 0.0
    visible_at: float = 0.0
    polls: int = 0
    error: str = ""

    @property
    def latency(self) -> float:
        return self.visible_at - self.purchased_at


def start_simulator(env: dict[str, str], workdir: Path, *, port: int, web_port: int) -> Process:
    argv = [
        sys.executable,
        "-m",
        "simulators.revenuecat",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        SIM_KEY,
        "--webhook-url",
        f"http://127.0.0.1:{web_port}/webhooks/revenuecat",
        "--webhook-auth",
        WEBHOOK_AUTH,
    ]
    sim = Process("simulator", argv, env, workdir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sim.check()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/_sim/stats?log_tail=0")
            if conn.getresponse().status == 200:
                return sim
        except OSError:
            time.sleep(0.1)
    sim.stop()
    raise RuntimeError(f"simulator not ready:\n{sim.tail()}")


def buy(sim_port: int, purchase: Purchase) -> None:
    """The store purchase: the simulator records it and delivers its webhook before answering."""
    conn = http.client.HTTPConnection("127.0.0.1", sim_port, timeout=30)
    try:
        body = json.dumps({"app_user_id": purchase.app_user_id, "product_id": PRODUCT})
        purchase.purchased_at = time.monotonic()
        conn.request("POST", "/_sim/purchase_non_renewing", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        purchase.delivered_at = time.monotonic()
        if response.status != 200:
            purchase.error = f"simulator answered {response.status}"
    except Exception as exc:
        purchase.error = repr(exc)
    finally:
        conn.close()


def watch(web_port: int, purchase: Purchase, deadline: float) -> None:
    """The app: long-poll its user's access until the course shows."""
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=45)
    try:
        # Started before the purchase, the first long-poll's baseline is the access before it;
        # later ones (if any) pass the last ETag, so no change can slip between two polls.
        etag = ""
        while time.monotonic() < deadline:
            purchase.polls += 1
            path = f"/v1/users/{purchase.app_user_id}/access?wait=30" + (f"&since={etag}" if etag else "")
            status, body, headers = request(web_port, "GET", path, conn=conn)
            if status != 200:
                purchase.error = f"access answered {status}"
                return
            if any(a["resource"] == RESOURCE for a in body["access"]):
                purchase.visible_at = time.monotonic()
                return
            etag = headers.get("etag", "").strip('"')
        purchase.error = "access not visible before the deadline"
    except Exception as exc:
        purchase.error = repr(exc)
    finally:
        conn.close()


def drive(purchases: list[Purchase], *, web_port: int, sim_port: int, lead_s: float, buyers: int) -> None:
    """Open loop: each watcher starts ``lead_s`` before its purchase; purchases fire on schedule."""
    end = purchases[-1].due + 60
    pool = ThreadPoolExecutor(max_workers=buyers, thread_name_prefix="buyer")
    watchers: list[threading.Thread] = []
    events = sorted(
        [(p.due - lead_s, 0, p) for p in purchases] + [(p.due, 1, p) for p in purchases], key=lambda e: (e[0], e[1])
    )
    for at, kind, purchase in events:
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == 0:
            t = threading.Thread(target=watch, args=(web_port, purchase, end), daemon=True)
            t.start()
            watchers.append(t)
        else:
            pool.submit(buy, sim_port, purchase)
    pool.shutdown(wait=True)
    for t in watchers:
        t.join(timeout=max(1.0, end - time.monotonic()))


def cpu_snapshot(processes: list[Process]) -> dict[tuple[str, int], float]:
    """CPU seconds used so far, by (part, pid): our children and theirs, PostgreSQL, Redis, this process."""
    import psutil

    snap: dict[tuple[str, int], float] = {}

    def add(part: str, proc) -> None:
        try:
            t = proc.cpu_times()
            snap[(part, proc.pid)] = t.user + t.system
        except psutil.NoSuchProcess:
            pass

    for p in processes:
        try:
            root = psutil.Process(p.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                add(p.name, proc)
        except psutil.NoSuchProcess:
            pass
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            add("postgresql", proc)
        elif name.startswith("redis-server"):
            add("redis", proc)
    add("load generator (this)", psutil.Process())
    return snap


def cores_by_part(
    before: dict[tuple[str, int], float], after: dict[tuple[str, int], float], elapsed: float
) -> dict[str, float]:
    parts: dict[str, float] = {}
    for (part, pid), seconds in after.items():
        parts[part] = parts.get(part, 0.0) + (seconds - before.get((part, pid), 0.0)) / elapsed
    return parts


def count_grants(database_url: str) -> int:
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM grants WHERE resource = %s", (RESOURCE,)).fetchone()[0])


def wait_until_quiet(seconds: float, *, limit_s: float = 600, threshold_cores: float = 0.3) -> float:
    """This machine is shared: wait until it has been (nearly) idle for ``seconds``; returns the wait."""
    import psutil

    started = time.monotonic()
    quiet_since = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy = psutil.cpu_percent(interval=1.0) / 100 * psutil.cpu_count()
        if busy > threshold_cores:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            break
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    import psutil

    if args.wait_quiet:
        waited = wait_until_quiet(args.wait_quiet)
        print(f"(waited {waited:.0f}s for the machine to be quiet)", flush=True)

    ensure_database(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="bench-purchase-latency-"))
    web_port, sim_port = free_port(), free_port()
    env = stack_env(args.database_url, args.redis_url, workdir, provider_url=f"http://127.0.0.1:{sim_port}")
    reset_stores(env)
    processes: list[Process] = []
    try:
        processes.append(start_simulator(env, workdir, port=sim_port, web_port=web_port))
        processes.append(
            start_gunicorn(
                env, workdir, port=web_port, workers=args.web_workers, worker_class="gevent", connections=1000
            )
        )
        processes.append(start_celery(env, workdir, concurrency=args.celery_concurrency))
        # Warm-up (not measured): forked children, connection pools, the publisher's template.
        warm = [Purchase(i, f"warm-{i}", time.monotonic() + 1.0 + i * 0.1) for i in range(args.warmup)]
        drive(warm, web_port=web_port, sim_port=sim_port, lead_s=0.5, buyers=args.buyers)
        for p in processes:
            p.check()
        total = int(args.rate * args.duration)
        t0 = time.monotonic() + args.lead + 0.5
        purchases = [Purchase(i, f"buyer-{i:05d}", t0 + i / args.rate) for i in range(total)]
        cpu_start = psutil.cpu_times()
        parts_start = cpu_snapshot(processes)
        started = time.monotonic()
        drive(purchases, web_port=web_port, sim_port=sim_port, lead_s=args.lead, buyers=args.buyers)
        elapsed = time.monotonic() - started
        cpu = psutil.cpu_times()
        parts = cores_by_part(parts_start, cpu_snapshot(processes), elapsed)
        busy = (cpu.user + cpu.system - cpu_start.user - cpu_start.system) / elapsed
        for p in processes:
            p.check()
        grants = count_grants(args.database_url)
    finally:
        for p in reversed(processes):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.dump:
        with open(args.dump, "w") as fh:
            for p in purchases:
                fh.write(
                    json.dumps(
                        {
                            "i": p.index,
                            "user": p.app_user_id,
                            "at": round(p.purchased_at - t0, 4),
                            "delivered": round(p.delivered_at - p.purchased_at, 4),
                            "latency": round(p.latency, 4) if p.visible_at else None,
                            "error": p.error,
                        }
                    )
                    + "\n"
                )
    done = [p for p in purchases if p.visible_at and not p.error]
    latencies = [p.latency for p in done]
    deliveries = [p.delivered_at - p.purchased_at for p in purchases if p.delivered_at]
    lateness = [p.purchased_at - p.due for p in purchases if p.purchased_at]
    errors = [p for p in purchases if p.error or not p.visible_at]
    span = max(p.purchased_at for p in purchases) - min(p.purchased_at for p in purchases if p.purchased_at)
    p95 = percentile(latencies, 95)
    print(
        f"Purchase-to-access latency: {total} purchases at {args.rate:g}/s for {args.duration:g}s "
        f"(achieved {(total - 1) / span if span else 0:.1f}/s, pacing p95 late by {ms(lateness, 95)})"
    )
    print(
        f"  simulator (auto-deliver) -> gunicorn --worker-class gevent --workers {args.web_workers} -> "
        f"celery prefork --concurrency {args.celery_concurrency} -> long-poll ?wait=30&since=<etag>"
    )
    print(
        f"  PostgreSQL {args.database_url.rsplit('/', 1)[-1]}, Redis {args.redis_url}, "
        f"machine: {psutil.cpu_count()} cores, {busy:.2f} cores busy on average during the run"
    )
    others = max(0.0, busy - sum(parts.values()))
    print(
        "  cores used by part: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + f"; anything else {others:.2f}"
    )
    print(
        f"  access visible: {len(done)}/{total}; errors or never visible: {len(errors)}; "
        f"grants in the database: {grants - args.warmup}"
    )
    print(
        f"  purchase -> access visible:  p50 {ms(latencies, 50)}  p95 {ms(latencies, 95)}  "
        f"p99 {ms(latencies, 99)}  max {ms(latencies, 100)}"
    )
    print(f"  of which webhook delivered (simulator -> intake 200): p50 {ms(deliveries, 50)}  p95 {ms(deliveries, 95)}")
    print(f"  long-polls per purchase: max {max((p.polls for p in purchases), default=0)}")
    if errors:
        print(f"  first problem: {errors[0].app_user_id}: {errors[0].error or 'not visible'}")
    print(f"  target p95 < {TARGET_P95_S:g}s: {'met' if p95 < TARGET_P95_S else 'NOT met'}")
    print(
        f"  command: python -m bench.purchase_latency --rate {args.rate:g} --duration {args.duration:g} "
        f"--web-workers {args.web_workers} --celery-concurrency {args.celery_concurrency}"
    )
    return 0 if not errors else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.purchase_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=50.0, help="purchases per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of purchases")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--celery-concurrency", type=int, default=4, help="the Procfile default (WORKER_CONCURRENCY)")
    p.add_argument("--buyers", type=int, default=16, help="threads making purchases (each waits for its webhook)")
    p.add_argument("--lead", type=float, default=0.5, help="seconds a client starts watching before its purchase")
    p.add_argument("--warmup", type=int, default=20, help="purchases before the measured ones")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait until the machine has been idle for S seconds (it is shared)",
    )
    p.add_argument("--dump", metavar="FILE", help="write each purchase's timings as JSON lines")
    p.add_argument("--database-url", default=DEFAULT_DB)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
