"""Demo of the engine healing what webhooks lose.

The provider simulator sells to a few hundred users (subscriptions, renewals, course
purchases, credit packs, cancellations, expirations, refunds, refund reversals, transfers).
Its webhooks go through a lossy network: a share is dropped, some are duplicated, others
delayed and reordered. The engine processes what arrives (intake -> inbox -> Celery worker ->
provider re-read), then the sweep polls every subscriber and heals the rest. The demo prints
the drift it found and healed, and checks each learner's access against what their whole
purchase history at the simulator pays for.

v1 shows only the latest period of each subscription, so the engine sees every period because
the sweep reads each subscriber at least once per MAX_STALENESS_S (a day) while a period lasts
weeks. The demo compresses those weeks into seconds, so it runs that daily poll between day one
and the weeks after; a period the engine was never given the chance to read is not drift it
could heal (REST v2's history is what would show it).

Runs on its own embedded defaults (SQLite and Redis under instance/demo). With DATABASE_URL /
REDIS_URL set it runs there instead, and since it deletes every row and flushes Redis, it
refuses unless they are empty or --force is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import delete, func, select, update

from adapters.embedded_redis import redis_url, stop_embedded_redis
from config.settings import Settings
from demo.safety import DemoRefused, ensure_disposable
from demo.scenario import LossyNetwork, aftermath, sell
from demo.truth import drifting
from persistence.audit import drift_report
from persistence.database import upgrade_database
from persistence.models import Base, InboxEvent, Subscriber
from persistence.subscribers import track_customers
from services.clock import wall_clock_ms
from services.wiring import wiring_for
from simulators.revenuecat.server import SimulatorServer
from simulators.serving import ServedApp
from tasks.celery_app import create_celery
from tasks.launch import celery_worker
from web.app import create_app

WEBHOOK_AUTH = "Bearer demo-webhook-secret"
SIM_KEY = "sk_demo"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.2)


def demo_settings(env_settings: Settings) -> Settings:
    """The demo's settings: its own SQLite and Redis under <instance>/demo unless the
    environment names others; the simulator's credentials; a budget the simulator can take."""
    instance = env_settings.instance_path / "demo"
    database_url = env_settings.database_url
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{instance / 'engine.sqlite3'}"
    return env_settings.with_(
        instance_path=instance,
        database_url=database_url,
        revenuecat_webhook_auth=WEBHOOK_AUTH,
        revenuecat_api_key=SIM_KEY,
        api_token="demo-api-token",
        provider_rate_per_minute=60_000,
        allow_embedded=True,  # the worker it starts runs on the demo's own stand-ins
    )


def run_demo(
    base: Settings,
    *,
    users: int,
    seed: int,
    lose: float = 0.3,
    duplicate: float = 0.15,
    reorder: float = 0.3,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Sell, lose webhooks, sweep; return the learners whose access still differs from what they
    paid for. Deletes every row of ``base``'s database and flushes its Redis database first."""
    rng = random.Random(seed)
    base.instance_path.mkdir(parents=True, exist_ok=True)  # the worker's log goes there
    upgrade_database(base)
    rt0 = wiring_for(base)
    with rt0.db.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    rt0.redis.flushdb()
    sim = SimulatorServer(api_key=SIM_KEY, webhook_auth=WEBHOOK_AUTH).start()
    settings = base.with_(revenuecat_api_url=sim.url)
    rt = wiring_for(settings)
    engine_server = ServedApp(create_app(settings), name="engine").start()
    try:
        sim.webhook_url = f"{engine_server.url}/webhooks/revenuecat"
        say(f"provider simulator: {sim.url}   engine: {engine_server.url}   redis: {settings.redis_url or 'embedded'}")
        learners = [f"learner-{i:04d}" for i in range(users)]
        # The operator's user list: every learner is known to the sweep, purchase or not.
        track_customers(rt.session_factory, learners, now_ms=wall_clock_ms())
        with rt.session_factory() as session, session.begin():
            session.execute(update(Subscriber).values(next_check_ms=wall_clock_ms() + 24 * 3600 * 1000))
        network = LossyNetwork(sim.deliver, rng, lose, duplicate, reorder)
        worker_env = {**os.environ, **settings.to_env(), "REDIS_URL": redis_url(settings)}
        with celery_worker(worker_env, base.instance_path, concurrency=2, log_path=base.instance_path / "worker.log"):
            sim.state.add_listener(network)
            bought = sell(sim.state, learners, rng)
            wait_until(lambda: _inbox_done(rt), 300, "the worker to process the inbox")
            first = drifting(sim.state, rt, learners, wall_clock_ms())
            # The daily poll between day one and the weeks after (see the module's docstring).
            _sweep_everyone(rt, settings)
            say(
                f"0. day one: the webhooks that arrived left {len(first)} of {len(learners)} learners with access "
                "that differs from what they paid for; the daily poll healed them before any renewal"
            )
            skipped = aftermath(sim.state, learners, bought, rng)
            network.deliver_late()
            _tell_story(say, rt, network, learners, skipped)
            before = drifting(sim.state, rt, learners, wall_clock_ms())
            say(
                f"   after the webhooks alone, {len(before)} of {len(learners)} learners have access that differs "
                "from what they paid for"
            )
            say("4. the sweep polls every learner within the provider's rate budget ...")
            started = time.monotonic()
            _sweep_everyone(rt, settings)
        after = drifting(sim.state, rt, learners, wall_clock_ms())
        say(f"   swept {len(learners)} learners in {time.monotonic() - started:.1f}s")
        say("   drift found and healed, by kind:")
        for r in drift_report(rt.session_factory, since_ms=0, until_ms=wall_clock_ms() + 1):
            say(f"     {r.drift_kind:<18} {r.repairs:>4} repairs for {r.customers} learners")
        say(
            f"5. drift remaining: {len(after)} learners"
            + (f": {after[:5]}" if after else " - every learner has exactly what they paid for")
        )
        return after
    finally:
        sim.stop()
        engine_server.stop()
        rt.close()
        rt0.close()


def _inbox_done(rt) -> bool:
    with rt.session_factory() as session:
        return not session.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.status.in_(["received", "processing", "retrying"]))
        )


def _tell_story(say, rt, network: LossyNetwork, learners: list[str], skipped: int) -> None:
    wait_until(lambda: _inbox_done(rt), 300, "the worker to process the inbox")
    types = Counter(e["event"]["type"] for e in network.sent)
    say(
        f"\n1. the store sent {len(network.sent)} webhooks about {len(learners)} learners: "
        + ", ".join(f"{k} {v}" for k, v in types.most_common())
    )
    if skipped:
        say(
            f"   ({skipped} restores were left out: their result is invisible to v1, which lists one period per "
            "subscription product; REST v2's history is what sees it)"
        )
    fate = network.fate
    say(f"2. the network lost {fate['lost']}, duplicated {fate['duplicated']}, delayed and reordered {fate['delayed']}")
    with rt.session_factory() as session:
        processed = session.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.status == "processed"))
    answered = {k: v for k, v in fate.items() if k.startswith("HTTP")}
    say(
        f"3. the engine's intake answered {answered}; the worker processed {processed} distinct events "
        "(duplicates are stored once), each by re-reading the provider"
    )


def _sweep_everyone(rt, settings: Settings) -> None:
    with rt.session_factory() as session, session.begin():
        session.execute(update(Subscriber).values(next_check_ms=0))  # everyone due, as after max staleness
    app = create_celery(settings)

    def sweep_done() -> bool:
        # Beat would send sweep.run every minute; the demo sends it whenever someone is due.
        with rt.session_factory() as session:
            due = session.scalar(
                select(func.count()).select_from(Subscriber).where(Subscriber.next_check_ms <= wall_clock_ms())
            )
        busy = rt.redis.llen("sweep") or rt.redis.hlen("unacked")
        if due and not busy:
            app.send_task("sweep.run")
        return not due and not busy

    wait_until(sweep_done, 600, "the sweep")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--lose", type=float, default=0.3, help="share of webhooks dropped")
    parser.add_argument("--duplicate", type=float, default=0.15, help="share of webhooks delivered twice")
    parser.add_argument("--reorder", type=float, default=0.3, help="share of webhooks delayed to the end, shuffled")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--force", action="store_true", help="run on a DATABASE_URL / REDIS_URL that holds data: deletes all of it"
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    base = demo_settings(Settings.from_env(environ))
    shutil.rmtree(base.instance_path, ignore_errors=True)  # the demo's own: always disposable
    base.instance_path.mkdir(parents=True)
    try:
        ensure_disposable(base, force=args.force)
    except DemoRefused as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"database: {base.database_url.split('@')[-1]}", flush=True)
    after = run_demo(
        base,
        users=args.users,
        seed=args.seed,
        lose=args.lose,
        duplicate=args.duplicate,
        reorder=args.reorder,
        say=lambda text: print(text, flush=True),
    )
    print(
        "\nThe audit trail stays: INSTANCE_PATH=instance/demo .venv/bin/flask --app web.app:create_app "
        "drift-report --since 1h"
    )
    return 0 if not after else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_embedded_redis()  # the demo's redis-server stops with it
