"""Demo of the engine healing what webhooks lose.

The provider simulator sells to a few hundred users (subscriptions, renewals, course
purchases, credit packs, cancellations, expirations, refunds, refund reversals, transfers).
Its webhooks go through a lossy network: a share is dropped, some are duplicated, others
delayed and reordered. The engine processes what arrives (intake -> inbox -> Celery worker ->
provider re-read), then the sweep polls every subscriber and heals the rest. The demo prints
the drift it found and healed, and checks that no drift remains.

Runs on the embedded defaults (SQLite under instance/demo, embedded Redis) unless
DATABASE_URL / REDIS_URL are set.
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

from sqlalchemy import func, select, update

from adapters.embedded_redis import redis_url
from config.settings import PROJECT_ROOT, Settings
from engine.facts import observe_all
from engine.projection import project_access
from engine.revenuecat import parse_subscriber
from persistence.audit import drift_report
from persistence.database import upgrade_database
from persistence.ledger_store import grant_to_access
from persistence.models import Grant, InboxEvent, Subscriber
from persistence.subscribers import track_customers
from services.clock import wall_clock_ms
from services.wiring import wiring_for
from simulators.revenuecat.server import SimulatorServer
from simulators.revenuecat.state import SimulatorError
from simulators.serving import ServedApp
from tasks.celery_app import create_celery
from tasks.launch import celery_worker

WEBHOOK_AUTH = "Bearer demo-webhook-secret"
SIM_KEY = "sk_demo"


def say(text: str = "") -> None:
    print(text, flush=True)


def sell(state, users: list[str], rng: random.Random) -> dict[str, str]:
    """Day one: every learner buys something. Returns what each bought."""
    bought: dict[str, str] = {}
    for user in users:
        roll = rng.random()
        if roll < 0.45:
            bought[user] = rng.choice(["premium_monthly", "premium_yearly"])
            state.purchase_subscription(user, bought[user])
        elif roll < 0.75:
            bought[user] = "h01enb"
            state.purchase_non_renewing(user, "h01enb")
        else:
            bought[user] = "geometry_pack_30"
            for _ in range(rng.randint(1, 2)):
                state.purchase_non_renewing(user, "geometry_pack_30")
    return bought


def aftermath(state, users: list[str], bought: dict[str, str], rng: random.Random) -> None:
    """The weeks after: renewals, cancellations, expirations, refunds, reversals, restores."""
    for user in users:
        product = bought[user]
        try:
            info = state.subscriber(user)[1]["subscriber"]
            if product in info["subscriptions"]:
                roll = rng.random()
                if roll < 0.35:
                    state.renew(user, product)
                elif roll < 0.5:
                    state.cancel(user, product)
                    state.expire(user, product)
                elif roll < 0.6:
                    state.refund(user, info["subscriptions"][product]["store_transaction_id"])
            elif product in info["non_subscriptions"]:
                tx = info["non_subscriptions"][product][0]["store_transaction_id"]
                roll = rng.random()
                if roll < 0.15:
                    state.refund(user, tx)
                    if rng.random() < 0.3:
                        state.reverse_refund(user, tx)
                elif roll < 0.4 and product == "geometry_pack_30":
                    state.purchase_non_renewing(user, product)  # a top-up
            if rng.random() < 0.06:
                state.transfer(user, rng.choice(users))  # restored on another account
        except SimulatorError:
            pass  # e.g. a transfer to the same customer: not something a store would do


def expected_access(state, catalog, now_ms: int, user: str) -> list[tuple]:
    snapshot = parse_subscriber(state.subscriber(user, now_ms=now_ms)[1])
    return [
        (a.resource, a.mode, a.expires_ms)
        for a in project_access(observe_all({}, snapshot.observations), catalog, now_ms).accesses
    ]


def granted_access(rt, customer_id: str) -> list[tuple]:
    with rt.session_factory() as session:
        rows = session.scalars(select(Grant).where(Grant.customer_id == customer_id).order_by(Grant.resource))
        return [(a.resource, a.mode, a.expires_ms) for a in map(grant_to_access, rows)]


def drifting(state, rt, users: list[str]) -> list[str]:
    now = wall_clock_ms()
    out = []
    for user in users:
        customer = parse_subscriber(state.subscriber(user, now_ms=now)[1]).customer_id
        if expected_access(state, rt.catalog, now, user) != granted_access(rt, customer):
            out.append(user)
    return out


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--lose", type=float, default=0.3, help="share of webhooks dropped")
    parser.add_argument("--duplicate", type=float, default=0.15, help="share of webhooks delivered twice")
    parser.add_argument("--reorder", type=float, default=0.3, help="share of webhooks delayed to the end, shuffled")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    env_settings = Settings.from_env()
    instance = PROJECT_ROOT / "instance" / "demo"
    shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True)
    database_url = env_settings.database_url
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{instance / 'engine.sqlite3'}"
    base = env_settings.with_(
        instance_path=instance,
        database_url=database_url,
        revenuecat_webhook_auth=WEBHOOK_AUTH,
        revenuecat_api_key=SIM_KEY,
        api_token="demo-api-token",
        # The simulator is not RevenueCat: a generous budget keeps the demo short.
        provider_rate_per_minute=60_000,
    )
    say(f"database: {base.database_url.split('@')[-1]}")
    upgrade_database(base)
    if not base.database_url.startswith("sqlite"):
        from sqlalchemy import delete

        from persistence.models import Base

        rt0 = wiring_for(base)
        with rt0.db.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
        rt0.close()

    sim = SimulatorServer(api_key=SIM_KEY, webhook_auth=WEBHOOK_AUTH).start()
    settings = base.with_(revenuecat_api_url=sim.url)
    rt = wiring_for(settings)
    rt.redis.flushdb()
    from web.app import create_app

    engine_server = ServedApp(create_app(settings), name="engine").start()
    sim.webhook_url = f"{engine_server.url}/webhooks/revenuecat"
    say(f"provider simulator: {sim.url}   engine: {engine_server.url}   redis: {settings.redis_url or 'embedded'}")

    users = [f"learner-{i:04d}" for i in range(args.users)]
    # The operator's user list: every learner is known to the sweep, purchase or not.
    track_customers(rt.session_factory, users, now_ms=wall_clock_ms())
    with rt.session_factory() as session, session.begin():
        session.execute(update(Subscriber).values(next_check_ms=wall_clock_ms() + 24 * 3600 * 1000))

    events: list[dict] = []
    late: list[dict] = []
    fate = Counter()

    def network(body: dict) -> None:
        """A lossy network between the provider and the engine."""
        events.append(body)
        if rng.random() < args.lose:
            fate["lost"] += 1
            return
        copies = 2 if rng.random() < args.duplicate else 1
        fate["duplicated"] += copies - 1
        if rng.random() < args.reorder:
            fate["delayed"] += 1
            late.extend([body] * copies)
            return
        for _ in range(copies):
            fate[f"HTTP {sim.deliver(body)}"] += 1

    worker_env = {**os.environ, **settings.to_env(), "REDIS_URL": redis_url(settings)}
    with celery_worker(worker_env, instance, concurrency=2, log_path=instance / "worker.log"):
        sim.state.add_listener(network)

        def inbox_done() -> bool:
            with rt.session_factory() as session:
                return not session.scalar(
                    select(func.count())
                    .select_from(InboxEvent)
                    .where(InboxEvent.status.in_(["received", "processing", "retrying"]))
                )

        bought = sell(sim.state, users, rng)
        wait_until(inbox_done, 300, "the worker to process the inbox")
        aftermath(sim.state, users, bought, rng)
        rng.shuffle(late)
        for body in late:
            fate[f"HTTP {sim.deliver(body)}"] += 1
        types = Counter(e["event"]["type"] for e in events)
        say(
            f"\n1. the store sent {len(events)} webhooks about {len(users)} learners: "
            + ", ".join(f"{k} {v}" for k, v in types.most_common())
        )
        say(
            f"2. the network lost {fate['lost']}, duplicated {fate['duplicated']}, delayed and reordered {fate['delayed']}"
        )
        wait_until(inbox_done, 300, "the worker to process the inbox")
        with rt.session_factory() as session:
            processed = session.scalar(
                select(func.count()).select_from(InboxEvent).where(InboxEvent.status == "processed")
            )
        answered = {k: v for k, v in fate.items() if k.startswith("HTTP")}
        say(
            f"3. the engine's intake answered {answered}; the worker processed {processed} distinct events "
            "(duplicates are stored once), each by re-reading the provider"
        )
        before = drifting(sim.state, rt, users)
        say(
            f"   after the webhooks alone, {len(before)} of {len(users)} learners have access that differs "
            "from what they paid for"
        )

        say("4. the sweep polls every learner within the provider's rate budget ...")
        with rt.session_factory() as session, session.begin():
            session.execute(update(Subscriber).values(next_check_ms=0))  # everyone due, as after max staleness
        app = create_celery(settings)
        started = time.monotonic()

        def sweep_done() -> bool:
            # Beat would send engine.sweep every minute; the demo sends it whenever someone is due.
            with rt.session_factory() as session:
                due = session.scalar(
                    select(func.count()).select_from(Subscriber).where(Subscriber.next_check_ms <= wall_clock_ms())
                )
            busy = rt.redis.llen("sweep") or rt.redis.hlen("unacked")
            if due and not busy:
                app.send_task("sweep.run")
            return not due and not busy

        wait_until(sweep_done, 600, "the sweep")
    after = drifting(sim.state, rt, users)
    rows = drift_report(rt.session_factory, since_ms=0, until_ms=wall_clock_ms() + 1)
    say(f"   swept {len(users)} learners in {time.monotonic() - started:.1f}s")
    say("   drift found and healed, by kind:")
    for r in rows:
        say(f"     {r.drift_kind:<18} {r.repairs:>4} repairs for {r.customers} learners")
    say(
        f"5. drift remaining: {len(after)} learners"
        + (f": {after[:5]}" if after else " - every learner has exactly what they paid for")
    )
    say(
        "\nThe audit trail stays: INSTANCE_PATH=instance/demo .venv/bin/flask --app web.app:create_app drift-report --since 1h"
    )
    sim.stop()
    engine_server.stop()
    return 0 if not after else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        from adapters.embedded_redis import stop_embedded_redis

        stop_embedded_redis()  # the demo's redis-server stops with it
