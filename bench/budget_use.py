"""Benchmark of how much of the provider's request budget the engine uses when the budget is
the limit, on PostgreSQL + Redis against the RevenueCat simulator.

Two scenarios run side by side for ``--seconds`` (a whole number of minutes, so that "per whole
run" is not skewed by a window's burst), each with its own simulator and its own budget in
Redis, two competing worker processes each holding its own ``RateBudget``:

  A. two sweep workers (``reconcile_customers`` at sweep priority);
  B. one sweep worker and one event-priority worker (a provider read then a reconcile per
     customer), both wanting more than the whole budget.

Counted from the simulator's request log (its own clock, as the provider would count):
requests per minute over the whole run, the budget's utilisation, and the mean and minimum over
the 60 s windows inside the run. Target: 95-100 % of the budget used. That the budget is never
exceeded in any window is a property of adapters/rate_budget.py, tested with a fake clock in
the test suite, not timed here.

Uses its own database and Redis database (emptied). Loopback only; stops what it started.

    python -m bench.budget_use
    python -m bench.budget_use --budget 120 --seconds 120
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.harness import Child, Figures, Supervisor, child_env, free_port, say, wait_until, workdir
from bench.stack import Simulator, prepare_stores, start_simulator
from bench.sweep import CHUNK, DEFAULT_DB, DEFAULT_REDIS, make_settings, purchases

READY_KEY, START_KEY = "bench:budget:ready", "bench:budget:start"
WINDOW_MS = 60_000
TARGET_UTIL_MIN = 95.0  # % of the budget


def rate_worker(config: dict[str, Any]) -> None:
    """One competing worker process (the hidden ``--role worker``): its own Wiring, its own
    RateBudget on the scenario's budget key; it takes no slot after the run's end."""
    from dataclasses import replace

    from adapters.rate_budget import BudgetedProvider, BudgetExhausted, RateBudget
    from engine.ports import Cause
    from engine.reconcile import Reading
    from services.sweep import reconcile_customers
    from services.wiring import Wiring

    settings = make_settings(
        config["database_url"],
        config["redis_url"],
        Path(config["instance"]),
        revenuecat_api_url=config["sim_url"],
        provider_rate_per_minute=config["per_minute"],
    )
    wiring = Wiring(settings)
    budget = RateBudget(wiring.redis, config["per_minute"], name=config["budget_name"])
    ids: list[str] = config["ids"]
    _ = wiring.session_factory, wiring.catalog  # connect and load before the start line
    wiring.redis.incr(READY_KEY)
    while (start := wiring.redis.get(START_KEY)) is None:
        time.sleep(0.02)
    start_at = float(cast(bytes, start))  # redis-py types sync replies as Awaitable | reply
    deadline = start_at + config["duration_s"]
    while time.time() < start_at:
        time.sleep(0.01)
    done = cursor = 0
    pending: list[str] = []
    while (remaining := deadline - time.time()) > 0:
        provider = BudgetedProvider(wiring.provider, budget, config["priority"], max_wait_s=min(65.0, remaining))
        if config["priority"] == "sweep":
            if not pending:
                pending = [ids[(cursor + k) % len(ids)] for k in range(CHUNK)]
                cursor = (cursor + CHUNK) % len(ids)
            result = reconcile_customers(pending, replace(wiring.sweep_reads, provider=provider))
            done += result.reconciled
            pending = list(result.deferred)
            if pending and result.reconciled == 0:
                break  # the next slot frees after the deadline
        else:
            try:
                body = provider.get_subscriber(ids[cursor])
            except BudgetExhausted:
                break
            wiring.convergence.reconcile(Reading.from_provider(ids[cursor], body), Cause("event", "bench"))
            done, cursor = done + 1, (cursor + 1) % len(ids)
    wiring.close()
    print(json.dumps({"priority": config["priority"], "reconciled": done}), flush=True)


@dataclass
class Scenario:
    name: str
    title: str
    priorities: list[str]
    sim: Simulator | None = None
    workers: list[Child] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)


def window_figures(ts: list[int], start_ms: int, duration_ms: int) -> dict[str, Any]:
    """Requests inside the run, per minute, and over every 60 s window inside it (1 s steps)."""
    ts = sorted(ts)
    in_run = [t for t in ts if start_ms <= t < start_ms + duration_ms]
    counts = [
        bisect.bisect_left(ts, s + WINDOW_MS) - bisect.bisect_left(ts, s)
        for s in range(start_ms, start_ms + duration_ms - WINDOW_MS + 1, 1000)
    ]
    return {
        "in_run": len(in_run),
        "per_min": len(in_run) / (duration_ms / 60_000),
        "mean_window": statistics.mean(counts) if counts else float("nan"),
        "min_window": min(counts) if counts else 0,
        "first_s": ((in_run[0] - start_ms) / 1000) if in_run else float("nan"),
        "last_s": ((in_run[-1] - start_ms) / 1000) if in_run else float("nan"),
    }


def run(args: argparse.Namespace, sup: Supervisor, instance: Path) -> Figures:
    import redis

    prepare_stores(args.database_url, args.redis_url)
    scenarios = [
        Scenario("A", "two sweep workers", ["sweep", "sweep"]),
        Scenario("B", "one sweep worker + one event-priority worker", ["sweep", "event"]),
    ]
    client = redis.Redis.from_url(args.redis_url)
    for seed, sc in enumerate(scenarios, start=2):
        sc.sim = start_simulator(sup, port=free_port(), name=f"sim-{sc.name}", seed=seed, gunicorn=True)
        all_ids = []
        for w, priority in enumerate(sc.priorities):
            ids = [f"r{sc.name.lower()}-{priority}{w}-{i:04d}" for i in range(args.customers)]
            all_ids += ids
            config = {
                "database_url": args.database_url,
                "redis_url": args.redis_url,
                "instance": str(instance),
                "sim_url": sc.sim.url,
                "per_minute": args.budget,
                "budget_name": f"bench-{sc.name}",
                "priority": priority,
                "ids": ids,
                "duration_s": args.seconds,
            }
            argv = [sys.executable, "-m", "bench.budget_use", "--role", "worker", "--config", json.dumps(config)]
            sc.workers.append(sup.start(f"worker-{sc.name}{w}", argv, env=child_env(), capture_stdout=True))
        sc.sim.ops(purchases(all_ids, "premium_monthly", subscription=True))
    workers = sum(len(sc.workers) for sc in scenarios)

    def ready() -> bool:
        return int(cast("bytes | None", client.get(READY_KEY)) or 0) >= workers  # redis-py: Awaitable | reply

    wait_until(ready, timeout_s=90, what="the budget workers")
    start_at = time.time() + 1.0
    client.set(START_KEY, repr(start_at))
    say(f"{workers} workers start together in 1 s, for {args.seconds} s; budget {args.budget}/min per scenario")
    figures = Figures(f"Provider budget use, {args.budget}/min, the limit")
    for sc in scenarios:
        assert sc.sim is not None
        for child in sc.workers:
            stdout, _ = child.proc.communicate(timeout=max(5.0, start_at + args.seconds + 75 - time.time()))
            lines = [ln for ln in (stdout or b"").decode().splitlines() if ln.startswith("{")]
            sc.reports.append(json.loads(lines[-1]) if lines else {"error": f"worker exited {child.proc.returncode}"})
        log = [e for e in sc.sim.stats(log_tail=10**7)["request_log"] if e[1].startswith("/v1/")]
        start_ms = int(start_at * 1000)
        fig = window_figures([e[2] for e in log], start_ms, args.seconds * 1000)
        run_log = [e for e in log if start_ms <= e[2] < start_ms + args.seconds * 1000]
        by_priority = Counter(e[1].split("/")[-1].split("-")[1].rstrip("0123456789") for e in run_log)
        util = 100.0 * fig["per_min"] / args.budget
        say(f"scenario {sc.name} ({sc.title}):")
        say(
            f"   used {fig['per_min']:.1f}/min over the whole run ({fig['in_run']} requests in {args.seconds} s): {util:.1f}%"
        )
        say(f"   60 s windows inside the run: mean {fig['mean_window']:.1f}, min {fig['min_window']}")
        say(
            f"   by priority {dict(by_priority)}; first at +{fig['first_s']:.2f} s, last at +{fig['last_s']:.2f} s; {sc.reports}"
        )
        target = f">= {TARGET_UTIL_MIN:.0f}% of {args.budget}"
        figures.add(
            f"budget use, scenario {sc.name}, whole run",
            f"{fig['per_min']:.1f}/min = {util:.1f}%",
            target,
            util >= TARGET_UTIL_MIN,
        )
    client.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget_use", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Redis database of its own (flushed)")
    parser.add_argument("--budget", type=int, default=120, help="provider requests per minute")
    parser.add_argument("--seconds", type=int, default=120, help="length of the run (whole minutes are best)")
    parser.add_argument("--customers", type=int, default=100, help="customers per worker")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "worker":
        rate_worker(json.loads(args.config))
        return 0
    with workdir("bench-budget-") as instance, Supervisor(instance, time_box_s=args.seconds + 240) as sup:
        figures = run(args, sup, instance)
    figures.print(f"python -m bench.budget_use --budget {args.budget} --seconds {args.seconds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
