"""reconcile, the one way into convergence, on the in-memory store (no database): every kind of
reading, the fast path, and the explicit outbox and change-notice steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog import DAY_MS, load_catalog
from engine.facts import TransactionObservation
from engine.ports import Cause
from engine.reconcile import Reading, ReconcilePolicy, reconcile, settle_unchanged
from engine.revenuecat import parse_event, parse_subscriber
from engine.revenuecat_v2 import V2CustomerRead
from tests.memory_store import MemoryDatabase, MemoryUnitOfWork

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


def test_a_provider_read_grants_writes_the_outbox_and_announces_the_change_after_commit():
    db = MemoryDatabase()
    outcome = run(db, Reading.from_provider("alice", subscriber("alice")))
    assert [a.kind for a in outcome.actions] == ["grant"] and granted(db, "alice") == {"course:H01ENB": "paid"}
    assert [(c, a.kind) for c, a, _ in db.data.outbox] == [("alice", "grant")]
    assert db.data.changed == ["alice"]
    state = db.data.customers["alice"]
    assert not state.state.dirty and state.state.snapshot_digest and state.next_check_ms > NOW


def test_the_same_snapshot_again_takes_the_fast_path():
    db = MemoryDatabase()
    body = subscriber("alice")
    run(db, Reading.from_provider("alice", body))
    snapshots = len(db.data.snapshots)
    again = run(db, Reading.from_provider("alice", body), now_ms=NOW + 1000)
    assert again.actions == () and not again.snapshot_changed and len(db.data.snapshots) == snapshots
    assert db.data.customers["alice"].last_checked_ms == NOW + 1000


def test_a_refund_revokes_and_a_stale_snapshot_changes_nothing():
    db = MemoryDatabase()
    run(db, Reading.from_provider("alice", subscriber("alice", request_ms=NOW)))
    refunded = run(
        db,
        Reading.from_provider("alice", subscriber("alice", request_ms=NOW + 10, refunded=True)),
        cause=Cause("sweep"),
    )
    assert [a.kind for a in refunded.actions] == ["revoke"] and granted(db, "alice") == {}
    stale = run(db, Reading.from_provider("alice", subscriber("alice", request_ms=NOW + 5)))
    assert stale.actions == () and granted(db, "alice") == {}


def test_an_events_own_facts_grant_in_degraded_mode_and_leave_the_customer_dirty():
    db = MemoryDatabase()
    fact = TransactionObservation(
        "bob-t1", observed_ms=NOW, product_id="h01enb", kind="non_subscription", purchased_ms=NOW, owner="bob"
    )
    outcome = run(
        db,
        Reading.from_event("bob", observations=[fact], identities={"bob": "bob"}, observed_ms=NOW),
        cause=Cause("degraded"),
    )
    assert [a.kind for a in outcome.actions] == ["grant"] and outcome.next_check_ms == NOW
    assert db.data.customers["bob"].state.dirty
    run(db, Reading.from_provider("bob", subscriber("bob")), now_ms=NOW + 1)  # the provider is back
    assert not db.data.customers["bob"].state.dirty and granted(db, "bob") == {"course:H01ENB": "paid"}


def test_a_degraded_transfer_moves_purchases_and_the_previous_owner_is_revoked_after():
    db = MemoryDatabase()
    run(db, Reading.from_provider("first", subscriber("first")))
    target = run(
        db,
        Reading.from_event("second", claims_from=["first"], observed_ms=NOW + 10),
        now_ms=NOW + 10,
        cause=Cause("degraded"),
    )
    assert [a.kind for a in target.actions] == ["grant"]
    source = run(db, Reading.from_event("first", observed_ms=NOW + 10), now_ms=NOW + 10, cause=Cause("degraded"))
    assert [a.kind for a in source.actions] == ["revoke"]
    assert granted(db, "first") == {} and granted(db, "second") == {"course:H01ENB": "paid"}


def test_the_ledger_alone_converges_an_expiry_and_leaves_the_check_time():
    db = MemoryDatabase()
    body = subscriber("carol", course=False)
    body["subscriber"]["subscriptions"] = {
        "premium_monthly": {
            "purchase_date": iso(NOW - 20 * DAY_MS),
            "expires_date": iso(NOW + DAY_MS),
            "store": "app_store",
            "store_transaction_id": "carol-s1",
            "period_type": "normal",
            "is_sandbox": False,
        }
    }
    run(db, Reading.from_provider("carol", body))
    due = db.data.customers["carol"].next_check_ms
    expired = run(db, Reading.from_ledger("carol"), now_ms=NOW + DAY_MS + 1, cause=Cause("expiry"))
    assert [a.kind for a in expired.actions] == ["revoke"] and expired.next_check_ms is None
    assert db.data.customers["carol"].next_check_ms == due


def test_settling_unchanged_customers_is_the_fast_path_in_bulk():
    db = MemoryDatabase()
    bodies = {user: subscriber(user) for user in ["ann", "ben"]}
    for user, body in bodies.items():
        run(db, Reading.from_provider(user, body))
    changed = subscriber("ben", refunded=True)
    snapshots = {"ann": parse_subscriber(bodies["ann"]), "ben": parse_subscriber(changed)}
    settled = settle_unchanged(snapshots, unit_of_work=db.unit_of_work, catalog=CATALOG, now_ms=NOW + 1, policy=POLICY)
    assert settled == {"ann"}  # ben's purchases changed: he goes through reconcile


def test_a_failed_unit_of_work_announces_nothing():
    db = MemoryDatabase()

    class Failing(MemoryUnitOfWork):
        def __enter__(self) -> MemoryUnitOfWork:
            uow = super().__enter__()

            def fail(*args: object) -> None:
                raise ZeroDivisionError("the unit of work fails after the grant was applied")

            # the store's method replaced on this instance, to fail on purpose
            uow.ledger.record_unknown_products = fail  # type: ignore[method-assign,assignment]
            return uow

    body = subscriber("alice")
    body["subscriber"]["non_subscriptions"]["mystery"] = [{"id": "m1", "purchase_date": ISO}]
    with pytest.raises(ZeroDivisionError):
        reconcile(
            Reading.from_provider("alice", body),
            unit_of_work=lambda: Failing(db),
            catalog=CATALOG,
            now_ms=NOW,
            cause=EVENT,
            policy=POLICY,
        )
    assert db.data.grants == {} and db.data.changed == [] and db.data.outbox == []


def test_a_v2_history_read_converges_like_any_provider_reading_and_keeps_its_bodies():
    purchase = {
        "object": "purchase",
        "id": "rcp1",
        "product_id": "prodCourse",
        "purchased_at": NOW - DAY_MS,
        "status": "owned",
        "store": "app_store",
        "environment": "production",
        "store_purchase_identifier": "ana-t1",
        "ownership": "purchased",
    }
    read = V2CustomerRead(
        customer_id="ana",
        request_ms=NOW,
        subscriptions=[],
        purchases=[purchase],
        aliases=[{"object": "customer.alias", "id": "$RCAnonymousID:ana"}],
        product_store_ids={"prodCourse": "h01enb"},
    )
    db = MemoryDatabase()
    reading = Reading.from_history("$RCAnonymousID:ana", read)
    outcome = run(db, reading, cause=Cause("sweep"))
    assert outcome.customer_id == "ana"
    assert [(a.kind, a.before) for a in outcome.actions] == [("grant", None)]
    assert reading.body is not None and reading.body["v2"]["purchases"] == [purchase]
    # The alias names the customer from now on; the same read again changes nothing.
    assert run(db, Reading.from_history("ana", read), cause=Cause("sweep")).actions == ()


# ----- an older period's refund, stated only by its webhook ------------------------------------

WEEK = 7 * DAY_MS
PACKAGE = 30 * DAY_MS


def lessons_v1(tx_id: str, k: int, *, request_ms: int) -> dict:
    """ana's v1 body: the weekly lessons subscription (a 30-day package every paid week), of
    which v1 lists only the latest period (the k-th)."""
    start = NOW + k * WEEK
    return {
        "request_date_ms": request_ms,
        "subscriber": {
            "original_app_user_id": "ana",
            "subscriptions": {
                "lessons_weekly": {
                    "store_transaction_id": tx_id,
                    "purchase_date": iso(start),
                    "original_purchase_date": iso(NOW),
                    "expires_date": iso(start + WEEK),
                    "store": "app_store",
                    "period_type": "normal",
                }
            },
            "non_subscriptions": {},
        },
    }


def refund_event(tx_id: str, k: int, *, at_ms: int, kind: str = "CANCELLATION", user: str = "ana"):
    """The documented webhook of the k-th period's refund (or of its reversal)."""
    start = NOW + k * WEEK
    event = {
        "id": f"{kind}-{tx_id}-{at_ms}",
        "type": kind,
        "event_timestamp_ms": at_ms,
        "app_user_id": user,
        "original_app_user_id": user,
        "aliases": [user],
        "product_id": "lessons_weekly",
        "transaction_id": tx_id,
        "original_transaction_id": "t0",
        "period_type": "NORMAL",
        "purchased_at_ms": start,
        "expiration_at_ms": start + WEEK,
        "store": "APP_STORE",
        "environment": "PRODUCTION",
    }
    if kind == "CANCELLATION":
        event["cancel_reason"] = "CUSTOMER_SUPPORT"
    return parse_event({"api_version": "1.0", "event": event}, received_ms=at_ms)


def v2_lessons(request_ms: int, periods: list[tuple[str, int, int]]) -> V2CustomerRead:
    """ana's v2 history of the lessons subscription: (tx id, start, expiry as v2 reports)."""
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
            "product_store_identifier": "lessons_weekly",
            "expiration_date": end,
            "effective_expiration_date": end,
        }
        for tx_id, start, end in periods
    ]
    return V2CustomerRead("ana", request_ms, [sub], None, {"sub1": transactions}, None, {"prodL": "lessons_weekly"})


def lessons_expiry(db: MemoryDatabase) -> int | None:
    access = db.data.grants.get(("ana", "module:lessons"))
    return None if access is None else access.expires_ms


def renewed_twice(db: MemoryDatabase) -> int:
    """Three periods read one by one (t0, t1, t2): three packages stacked. Returns the time of
    the last read."""
    for k in range(3):
        run(db, Reading.from_provider("ana", lessons_v1(f"t{k}", k, request_ms=NOW + k * WEEK + 1000)))
    assert lessons_expiry(db) == NOW + 3 * PACKAGE
    return NOW + 2 * WEEK + 1000


def test_an_older_periods_refund_stated_by_its_webhook_revokes_its_package_beside_the_provider_read():
    db = MemoryDatabase()
    last = renewed_twice(db)
    refund_at = last + DAY_MS
    event = refund_event("t0", 0, at_ms=refund_at)
    # v1 still lists t2 only, the very same answer: the refund is the event's word alone.
    same = lessons_v1("t2", 2, request_ms=refund_at + 1000)
    outcome = run(db, Reading.from_provider("ana", same, supplementary=event.observations), now_ms=refund_at + 2000)
    assert db.data.ledger["t0"].refunded_ms == refund_at
    assert [a.kind for a in outcome.actions] == ["shorten"]
    assert lessons_expiry(db) == NOW + WEEK + 2 * PACKAGE  # t1 and t2, stacked from t1
    state = db.data.customers["ana"]
    assert not state.state.dirty  # the provider was read: nothing left for the sweep to catch up
    # Later reads undo nothing: v1 does not list t0; a v2 history lists it, ending where it
    # ended, with no refund field (a refund after a period's end does not move its expiry).
    run(db, Reading.from_provider("ana", lessons_v1("t2", 2, request_ms=refund_at + 2 * DAY_MS)))
    periods = [(f"t{k}", NOW + k * WEEK, NOW + (k + 1) * WEEK) for k in range(3)]
    run(db, Reading.from_history("ana", v2_lessons(refund_at + 3 * DAY_MS, periods)), now_ms=refund_at + 3 * DAY_MS)
    assert db.data.ledger["t0"].refunded_ms == refund_at
    assert lessons_expiry(db) == NOW + WEEK + 2 * PACKAGE  # t1 and t2, stacked from t1
    # The same webhook again, beside the same answer, changes nothing: the fast path.
    body = lessons_v1("t2", 2, request_ms=refund_at + 4 * DAY_MS)
    run(db, Reading.from_provider("ana", body), now_ms=refund_at + 4 * DAY_MS)
    again = run(db, Reading.from_provider("ana", body, supplementary=event.observations), now_ms=refund_at + 4 * DAY_MS)
    assert again.actions == () and not again.snapshot_changed


def test_an_older_periods_refund_reversed_restores_its_package_and_an_older_refund_event_after_it_is_a_no_op():
    db = MemoryDatabase()
    last = renewed_twice(db)
    refund = refund_event("t0", 0, at_ms=last + DAY_MS)
    reversal = refund_event("t0", 0, at_ms=last + 2 * DAY_MS, kind="REFUND_REVERSED")
    for event in (refund, reversal, refund):  # the refund redelivered late: older, changes nothing
        body = lessons_v1("t2", 2, request_ms=event.timestamp_ms + 1000)
        run(db, Reading.from_provider("ana", body, supplementary=event.observations), now_ms=event.timestamp_ms + 1000)
    assert db.data.ledger["t0"].refunded_ms is None
    assert lessons_expiry(db) == NOW + 3 * PACKAGE


def test_an_events_word_beside_a_provider_read_is_kept_only_for_periods_the_read_accounts_for_unlisted():
    db = MemoryDatabase()
    last = renewed_twice(db)
    # The latest period, listed by id: the provider's answer is what counts (it states no refund).
    latest = refund_event("t2", 2, at_ms=last + DAY_MS)
    run(
        db,
        Reading.from_provider(
            "ana", lessons_v1("t2", 2, request_ms=last + DAY_MS + 1000), supplementary=latest.observations
        ),
    )
    assert db.data.ledger["t2"].refunded_ms is None and lessons_expiry(db) == NOW + 3 * PACKAGE
    # Another customer's period: ben's read does not account for it, so it stays ana's, unrefunded.
    theirs = refund_event("t1", 1, at_ms=last + DAY_MS, user="ben")
    ben = subscriber("ben", request_ms=last + DAY_MS + 2000, course=False)
    run(db, Reading.from_provider("ben", ben, supplementary=theirs.observations), now_ms=last + DAY_MS + 2000)
    assert db.data.ledger["t1"].owner == "ana" and db.data.ledger["t1"].refunded_ms is None
    assert lessons_expiry(db) == NOW + 3 * PACKAGE
