"""Benchmark of healing time: how long after the last webhook every learner's access equals what
they paid for, with webhooks lost, duplicated and reordered and the provider enforcing its rate.

``--customers`` learners buy at the RevenueCat simulator (a mix of course purchases,
subscriptions and credit packs from config/catalog.toml, one to three purchases each). Their
webhooks then cross a lossy network (demo/scenario.LossyNetwork): ``--lose`` of them dropped,
``--duplicate`` delivered twice, ``--reorder`` held back and delivered at the end, shuffled. The
simulator enforces ``--budget`` requests/min on its customer reads as a token bucket of the
same nominal rate (simulators/revenuecat/rate_limit.py, one second's worth of burst), and the
engine's budget (PROVIDER_RATE_PER_MINUTE) is set to the same figure. Only the Procfile's web,
worker and beat run (real processes); nobody calls the client API.

With v1 only (the default) nothing can tell the engine of a learner whose every webhook was
lost: the operator registers the learners the engine never heard of when the last webhook has
been sent (``persistence.subscribers.track_customers``, what an import of the learner list
adds), and the sweep reads them. With ``--v2`` the engine gets REVENUECAT_PROJECT_ID /
REVENUECAT_V2_API_KEY against the simulator and nobody registers anything (``--register`` to
register anyway): discovery is what must find them.

Drift is measured against the simulator's whole history (demo/truth.py): a learner drifts while
their granted access differs from what every purchase they made pays for. Printed:

* heal time: from the last webhook sent to zero drift;
* its floor: the provider reads the run needs, divided by the budget, counted from the first
  webhook (the budget could be spent from then on) and given from the last. The reads needed:
  one per user named by each distinct webhook that arrived (the engine re-reads the provider
  for every event it stores, duplicates being stored once), plus one per learner none of whose
  webhooks arrived (only a read can heal them; a learner named by an arrived webhook is read
  after every purchase it made here, since the purchases all happen before the webhooks are
  delivered). Target: heal time <= 1.5 x floor;
* 429 answers from the simulator (target 0), and provider requests per reconcile by path
  (budget slots taken by priority over reconciles by cause).

Uses its own database (created if missing, migrated, emptied) and Redis database (flushed): do
not point it at data you keep. About two minutes; loopback only; stops what it started.

    python -m bench.heal_time
    python -m bench.heal_time --customers 100 --budget 240 --seed 3
    python -m bench.heal_time --v2
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Figures, Supervisor, free_port, say, workdir
from bench.stack import WEBHOOK_AUTH, prepare_stores, stack_env, start_web, start_worker

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_heal"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
SIM_KEY = "sk_bench_simulator"
SIM_V2_KEY = "sk_bench_simulator_v2"
PROJECT_ID = "proj_bench"
TARGET_RATIO = 1.5
POLL_S = 0.25


def buy(state: Any, learners: list[str], rng: random.Random) -> None:
    """Each learner makes one to three purchases: a course (lifetime), a subscription (period,
    and a credit of days for the monthly one) or a credit pack."""
    for learner in learners:
        for _ in range(rng.choice((1, 1, 2, 3))):
            roll = rng.random()
            if roll < 0.35:
                state.purchase_non_renewing(learner, "h01enb")
            elif roll < 0.7:
                product = rng.choice(["premium_monthly", "premium_yearly"])
                if product in state.subscriber(learner)[1]["subscriber"]["subscriptions"]:
                    state.purchase_non_renewing(learner, "geometry_pack_30")  # already subscribed: a pack
                else:
                    state.purchase_subscription(learner, product)
            else:
                state.purchase_non_renewing(learner, "geometry_pack_30")


@dataclass
class Deliveries:
    """What the lossy network let through: the users each distinct arrived webhook names."""

    deliver: Callable[[dict[str, Any]], int]
    named: dict[str, tuple[str, ...]] = field(default_factory=dict)  # event id -> users it names
    first_s: float | None = None
    last_s: float = 0.0

    def __call__(self, body: dict[str, Any]) -> int:
        from engine.revenuecat import parse_event

        if self.first_s is None:
            self.first_s = time.monotonic()
        status = self.deliver(body)
        self.last_s = time.monotonic()
        if status == 200:
            event = parse_event(body)
            self.named[event.event_id] = event.app_user_ids
        return status

    def reads(self) -> int:
        return sum(len(users) for users in self.named.values())

    def users(self) -> set[str]:
        return {u for users in self.named.values() for u in users}


class Truth:
    """What each learner's whole history at the simulator pays for, and what the engine granted."""

    def __init__(self, state: Any, catalog: Any, engine: Any, learners: list[str]) -> None:
        from demo.truth import customer_of

        self.state, self.catalog, self.engine = state, catalog, engine
        self.customers = {learner: customer_of(state, learner) for learner in learners}

    def drifting(self) -> list[str]:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from demo.truth import paid_access
        from persistence.ledger_store import grant_to_access
        from persistence.models import Grant

        now_ms = self.state.now_ms()
        granted: dict[str, list[AccessRow]] = {}
        with Session(self.engine) as session:
            for grant in session.scalars(select(Grant)):
                access = grant_to_access(grant)
                granted.setdefault(grant.customer_id, []).append((access.resource, access.mode, access.expires_ms))
        return [
            learner
            for learner, customer in self.customers.items()
            if in_order(paid_access(self.state, customer, self.catalog, now_ms)) != in_order(granted.get(customer, []))
        ]


AccessRow = tuple[str, str, int | None]


def in_order(rows: list[AccessRow]) -> list[AccessRow]:
    return sorted(rows, key=lambda r: (r[0], r[1], -1 if r[2] is None else r[2]))


def run(args: argparse.Namespace, sup: Supervisor, instance: Path) -> Figures:
    import redis
    from sqlalchemy import create_engine

    from adapters.metrics import FLUSH_INTERVAL_S, Metrics
    from adapters.rate_budget import RateBudget
    from config.settings import Settings
    from demo.scenario import LossyNetwork
    from engine.catalog import load_catalog
    from persistence.database import make_session_factory
    from persistence.subscribers import track_customers
    from services.clock import wall_clock_ms
    from simulators.revenuecat.rate_limit import CUSTOMER_INFORMATION
    from simulators.revenuecat.server import SimulatorServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulator's request lines
    prepare_stores(args.database_url, args.redis_url)
    limits = {"v1": args.budget, CUSTOMER_INFORMATION: args.budget}
    sim = SimulatorServer(
        api_key=SIM_KEY, v2_api_key=SIM_V2_KEY, project_id=PROJECT_ID, rate_limits=limits, webhook_auth=WEBHOOK_AUTH
    ).start()
    try:
        web_port = free_port()
        sim.webhook_url = f"http://127.0.0.1:{web_port}/webhooks/revenuecat"
        env = stack_env(args.database_url, args.redis_url, instance, provider_url=sim.url)
        env.update({"PROVIDER_RATE_PER_MINUTE": str(args.budget), "REVENUECAT_API_KEY": SIM_KEY})
        if args.sweep_interval:
            env["SWEEP_INTERVAL_S"] = str(args.sweep_interval)
        if args.v2:
            env.update({"REVENUECAT_PROJECT_ID": PROJECT_ID, "REVENUECAT_V2_API_KEY": SIM_V2_KEY})
        settings = Settings.from_env(env)
        start_web(sup, env, port=web_port, workers=1)
        start_worker(sup, env, concurrency=args.worker_concurrency)
        beat_argv = [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--loglevel=WARNING"]
        beat = sup.start("beat", beat_argv, env=env)
        say(f"web :{web_port}, worker x{args.worker_concurrency}, beat; simulator {sim.url} enforcing {limits}")

        rng = random.Random(args.seed)
        learners = [f"learner-{i:04d}" for i in range(args.customers)]
        bodies: list[dict[str, Any]] = []
        sim.state.add_listener(bodies.append)
        buy(sim.state, learners, rng)
        sim.state.remove_listener(bodies.append)
        say(
            f"{len(learners)} learners made {len(bodies)} purchases: {dict(Counter(b['event']['type'] for b in bodies))}"
        )

        deliveries = Deliveries(sim.deliver)
        network = LossyNetwork(deliveries, rng, args.lose, args.duplicate, args.reorder)
        requests_before = sim.state.request_count
        for body in bodies:
            network(body)
        network.deliver_late()
        assert deliveries.first_s is not None
        last_sent = deliveries.last_s
        unheard = sorted(set(learners) - deliveries.users())
        register = args.register if args.register is not None else not args.v2
        db = create_engine(args.database_url)
        if register and unheard:
            track_customers(make_session_factory(db), unheard, now_ms=wall_clock_ms())
        say(
            f"the network lost {network.fate['lost']}, duplicated {network.fate['duplicated']}, "
            f"delayed {network.fate['delayed']}; {len(deliveries.named)} distinct webhooks arrived in "
            f"{last_sent - deliveries.first_s:.1f} s; {len(unheard)} learners named by none"
            + (" (registered by the operator now)" if register else "")
        )

        truth = Truth(sim.state, load_catalog(settings.catalog_path), db, learners)
        reads_needed = deliveries.reads() + len(unheard)
        floor_from_first = reads_needed / (args.budget / 60.0)
        floor = max(0.0, deliveries.first_s + floor_from_first - last_sent)
        healed_at: float | None = None
        drift: list[str] = []
        last_report = time.monotonic()
        while time.monotonic() - last_sent < args.time_box:
            beat.check()
            drift = truth.drifting()
            if not drift:
                healed_at = time.monotonic()
                break
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                say(f"  {len(drift)} learners drifting, {sim.state.request_count - requests_before} provider requests")
            time.sleep(POLL_S)

        time.sleep(2 * FLUSH_INTERVAL_S)  # the worker's last counts reach Redis
        client = redis.Redis.from_url(args.redis_url)
        taken = RateBudget(client, args.budget).taken_by_priority()
        metrics = Metrics(client)
        counters = metrics.counters()
        metrics.close()
        client.close()
        db.dispose()
        reconciles = {
            cause: int(counters.get(f'engine_reconciles_total{{cause="{cause}"}}', 0)) for cause in ("event", "sweep")
        }
        refused = sum(sim.limits.refused.values())
        requests = sim.state.request_count - requests_before
    finally:
        sim.stop()

    figures = Figures(
        f"Healing time, {args.customers} learners, {args.lose:.0%} of webhooks lost, {args.duplicate:.0%} duplicated, "
        f"{args.reorder:.0%} reordered, provider enforcing {args.budget}/min, {'v2' if args.v2 else 'v1 only'}"
    )
    heal_s = None if healed_at is None else healed_at - last_sent
    figures.add(
        "reads needed",
        f"{reads_needed} = {deliveries.reads()} + {len(unheard)}",
        "",
        None,
    )
    figures.add("floor from the last webhook", f"{floor:.1f} s ({floor_from_first:.1f} s from the first)")
    if heal_s is None:
        figures.add("heal time", f"> {args.time_box:.0f} s, {len(drift)} still drifting", "", False)
    else:
        ratio = heal_s / floor if floor > 0 else float("inf")
        figures.add("heal time (last webhook -> zero drift)", f"{heal_s:.1f} s")
        figures.add("heal time / floor", f"{ratio:.2f}", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO)
    figures.add("429 answers", str(refused), "0", refused == 0)
    figures.add("provider requests (simulator)", str(requests))
    for path, cause in (("event", "event"), ("sweep", "sweep")):
        n, r = taken.get(path, 0), reconciles[cause]
        figures.add(f"requests per reconcile, {path}", f"{n}/{r} = {n / r:.2f}" if r else f"{n}/0")
    for path in sorted(set(taken) - {"event", "sweep"}):  # discovery pages, client syncs
        figures.add(f"provider requests, {path}", str(taken[path]))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heal_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Redis database of its own (flushed)")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--lose", type=float, default=0.1, help="share of webhooks dropped")
    parser.add_argument("--duplicate", type=float, default=0.1, help="share of webhooks delivered twice")
    parser.add_argument("--reorder", type=float, default=0.3, help="share held back, then delivered shuffled")
    parser.add_argument("--budget", type=int, default=480, help="requests/min: the provider's and the engine's")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker-concurrency", type=int, default=4, help="the Procfile's default")
    parser.add_argument("--sweep-interval", type=int, default=0, help="SWEEP_INTERVAL_S (0: the engine's default)")
    parser.add_argument("--v2", action="store_true", help="REST v2 on (project id and v2 key for the simulator)")
    parser.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="register the learners no webhook named (default: with v1 only)",
    )
    parser.add_argument("--time-box", type=float, default=600.0, help="give up after this long past the last webhook")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    with (
        workdir("bench-heal-", keep=args.keep_logs) as instance,
        Supervisor(instance, time_box_s=args.time_box + 180) as sup,
    ):
        figures = run(args, sup, instance)
    command = "python -m bench.heal_time" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    figures.print(command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
