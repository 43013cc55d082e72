"""An older period's refund (or its reversal) stated by a delivered webhook, merged beside the
provider's answer that accounts for the period without listing it (``Reading.supplementary``),
on the in-memory store."""

from __future__ import annotations

from engine.catalog import DAY_MS
from engine.reconcile import Reading
from engine.revenuecat import parse_event
from engine.revenuecat_v2 import V2CustomerRead
from tests.engine.reconcile_support import NOW, iso, lessons_history, run, subscriber
from tests.memory_store import MemoryDatabase


def v2_lessons(request_ms: int, periods: list[tuple[str, int, int]]) -> V2CustomerRead:
    return lessons_history(request_ms, periods, product="lessons_weekly")


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
