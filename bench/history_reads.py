"""Provider requests per customer read, by read path (event, sweep, sync), with v1 alone and with
REST v2 histories (run: ``python -m bench.history_reads [--customers 200]``).

In process: SQLite, the embedded Redis, the simulator over HTTP (v1 and v2 from one state).
Customers bought weeks ago: a yearly ``period`` subscription, a weekly subscription crediting a
30-day package per paid week (its webhooks delivered, or its renewals' webhooks lost), a
one-time course. The delivered webhooks are processed (event path), then the sweep reads every
customer twice (the second pass: nothing changed), then some customers sync. Prints what each
path cost (``ReadTally``: customers read, v1 and v2 requests, history reads) and the lessons
credit found against the provider's. No target: figures to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from bench.harness import Figures, say
from config.settings import Settings
from engine.catalog import DAY_MS
from persistence.database import upgrade_database
from persistence.models import Grant
from persistence.subscribers import track_customers
from services.client import sync_user
from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from services.wiring import wiring_for
from simulators.revenuecat.server import SimulatorServer
from web.app import create_app

SIM_KEY, WEBHOOK_AUTH = "sk_bench_history", "Bearer bench-history"
WEEK = 7 * DAY_MS
CATALOG = """
[products.premium_yearly]
store_ids = ["premium_yearly"]
kind = "subscription"
grants = [{ resource = "module:algebra", mode = "full", policy = "period" }]

[products.lessons_weekly]
store_ids = ["lessons_weekly"]
kind = "subscription"
grants = [{ resource = "module:lessons", mode = "basic", policy = "credit", days = 30 }]

[products.h01enb]
store_ids = ["h01enb"]
kind = "consumable"
grants = [{ resource = "course:H01ENB", mode = "paid", policy = "lifetime" }]
"""


def run(customers: int, *, v2: bool, workdir: Path) -> Figures:
    instance = workdir / ("v2" if v2 else "v1")
    instance.mkdir()
    (instance / "catalog.toml").write_text(CATALOG)
    with SimulatorServer(api_key=SIM_KEY, webhook_auth=WEBHOOK_AUTH) as sim:
        settings = Settings.from_env({"INSTANCE_PATH": str(instance)}).with_(
            database_url=f"sqlite:///{instance / 'bench.sqlite3'}",
            revenuecat_api_url=sim.url,
            revenuecat_api_key=SIM_KEY,
            revenuecat_webhook_auth=WEBHOOK_AUTH,
            catalog_path=instance / "catalog.toml",
            sentry_dsn="",
            allow_embedded=True,
            provider_rate_per_minute=100_000,
            **({"revenuecat_project_id": sim.project_id, "revenuecat_v2_api_key": sim.v2_api_key} if v2 else {}),
        )
        upgrade_database(settings)
        rt = wiring_for(settings)
        webhooks = create_app(settings).test_client()
        state, now = sim.state, sim.state.now_ms()
        start = now - 3 * WEEK - DAY_MS
        delivered, lost_renewals, users = 0, 0, [f"u{k:05d}" for k in range(customers)]

        def deliver(body: dict) -> None:
            # processed as it happens: the event path reads the provider's state of that moment
            nonlocal delivered
            response = webhooks.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
            answer = response.get_json()
            assert isinstance(answer, dict), response.status_code
            process_inbox_event(answer["inbox_id"], rt.event_processing)
            delivered += 1

        def at(ms: int) -> int:
            # The provider's clock when it happens, so that each webhook is read in its moment.
            state.clock_offset_ms = ms + 60_000 - int(time.time() * 1000)
            return ms

        for k, user in enumerate(users):
            kind = k % 10
            if kind < 4:
                deliver(state.purchase_subscription(user, "premium_yearly", now_ms=at(start)))
            elif kind < 9:
                deliver(state.purchase_subscription(user, "lessons_weekly", period_ms=WEEK, now_ms=at(start)))
                for week in (1, 2, 3):
                    body = state.renew(user, "lessons_weekly", now_ms=at(start + week * WEEK))
                    if kind < 7:
                        deliver(body)
                    else:
                        lost_renewals += 1
            else:
                deliver(state.purchase_non_renewing(user, "h01enb", now_ms=at(start)))
        state.clock_offset_ms = 0
        say(
            f"{'v1+v2' if v2 else 'v1 only'}: {customers} customers, {delivered} webhooks delivered, "
            f"{lost_renewals} renewal webhooks lost"
        )
        track_customers(rt.session_factory, users, now_ms=now)
        sweeps = []
        for _ in range(2):
            before = state.request_count
            reconcile_customers(users, rt.sweep_reads)
            sweeps.append(state.request_count - before)
        for user in users[: max(1, customers // 10)]:
            sync_user(rt.client_flows, user)
        short = 0
        with rt.session_factory() as session:
            for user in users:
                periods, _ = state.purchase_history(user)
                paid = [p for p in periods if p.product_id == "lessons_weekly"]
                grant = session.get(Grant, (user, "module:lessons"))
                credited = len(json.loads(grant.sources)) if grant is not None else 0
                short += len(paid) - credited
        figures = Figures(f"Provider requests per customer read, {'v1 + v2 histories' if v2 else 'v1 only'}")
        for path, counts in sorted(rt.read_tally.counts().items()):
            figures.add(
                f"{path}: requests per read",
                f"{rt.read_tally.requests_per_read(path):.3f}",
            )
            figures.add(
                f"{path}: reads / v1 / v2 / histories",
                f"{counts.get('customers', 0)} / {counts.get('v1', 0)} / {counts.get('v2', 0)} / "
                f"{counts.get('histories', 0)}",
            )
        figures.add("sweep pass 1 / pass 2 simulator requests", f"{sweeps[0]} / {sweeps[1]}")
        figures.add("lessons packages not credited", str(short), "0", short == 0)
        rt.close()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulator's request lines
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        for v2 in (False, True):
            run(args.customers, v2=v2, workdir=Path(tmp)).print(
                f"python -m bench.history_reads --customers {args.customers}"
            )


if __name__ == "__main__":
    main()
