"""What the engine's reconcile tests share: the fixture catalog and policy, documented provider
bodies, and ``run`` (reconcile on the in-memory store)."""

from __future__ import annotations

from pathlib import Path

from engine.catalog import DAY_MS, load_catalog
from engine.ports import Cause
from engine.reconcile import Reading, ReconcilePolicy, reconcile
from engine.revenuecat_v2 import V2CustomerRead
from tests.memory_store import MemoryDatabase

CATALOG = load_catalog(Path(__file__).resolve().parents[1] / "fixtures" / "catalog.toml")
POLICY = ReconcilePolicy(max_staleness_ms=DAY_MS)
NOW = 1_800_000_000_000
ISO = "2027-01-15T08:00:00Z"  # = NOW


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def subscriber(user: str, *, request_ms: int = NOW, course: bool = True, refunded: bool = False) -> dict:
    """A v1 ``GET /subscribers`` body (the documented shape, ../shared/reference/revenuecat.md §3)."""
    non_subscriptions = {}
    if course and not refunded:  # RevenueCat stops listing a refunded one-time purchase
        non_subscriptions["h01enb"] = [
            {
                "id": "p1",
                "store_transaction_id": f"{user}-t1",
                "purchase_date": iso(NOW - DAY_MS),
                "store": "app_store",
                "is_sandbox": False,
            }
        ]
    return {
        "request_date": iso(request_ms),
        "request_date_ms": request_ms,
        "subscriber": {
            "original_app_user_id": user,
            "first_seen": iso(NOW - 2 * DAY_MS),
            "subscriptions": {},
            "non_subscriptions": non_subscriptions,
            "entitlements": {},
        },
    }


EVENT = Cause("event")


def run(db: MemoryDatabase, reading: Reading, *, now_ms: int = NOW, cause: Cause = EVENT):
    return reconcile(reading, unit_of_work=db.unit_of_work, catalog=CATALOG, now_ms=now_ms, cause=cause, policy=POLICY)


def granted(db: MemoryDatabase, customer: str) -> dict[str, str]:
    return {resource: access.mode for (c, resource), access in db.data.grants.items() if c == customer}


def lessons_history(
    request_ms: int,
    periods: list[tuple[str, int, int]],
    *,
    product: str,
    purchases: list | None = None,
) -> V2CustomerRead:
    """ana's v2 history of one App Store lessons subscription (store product ``product``):
    (tx id, start, expiry as v2 reports) per period, the last one current."""
    latest_id, latest_start, latest_end = periods[-1]
    sub = {
        "object": "subscription",
        "id": "sub1",
        "product_id": "prodL",
        "store": "app_store",
        "environment": "production",
        "ownership": "purchased",
        "status": "active",
        "store_subscription_identifier": latest_id,
        "current_period_starts_at": latest_start,
        "current_period_ends_at": latest_end,
    }
    transactions = [
        {
            "id": tx_id,
            "purchased_at": start,
            "product_store_identifier": product,
            "expiration_date": end,
            "effective_expiration_date": end,
        }
        for tx_id, start, end in periods
    ]
    return V2CustomerRead("ana", request_ms, [sub], purchases, {"sub1": transactions}, None, {"prodL": product})
