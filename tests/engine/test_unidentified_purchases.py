"""A one-time purchase listed without ``id`` or ``store_transaction_id`` is never dropped, and
nothing is revoked or credited twice for the absence of an id (engine.facts, ownership rules)."""

from __future__ import annotations

import copy

from engine.facts import Transaction, observe_snapshot
from engine.revenuecat import parse_subscriber

PURCHASED_AT = "2024-01-05T10:00:00Z"
PURCHASED_MS = 1704448800000


def body(request_ms: int, purchases: list[dict], product: str = "h01enb") -> dict:
    return {
        "request_date_ms": request_ms,
        "subscriber": {
            "original_app_user_id": "alice",
            "subscriptions": {},
            "non_subscriptions": {product: copy.deepcopy(purchases)},
        },
    }


def purchase(**ids) -> dict:
    return {"purchase_date": PURCHASED_AT, "store": "play_store", "is_sandbox": False, **ids}


def ledger_after(*bodies: dict) -> dict[str, Transaction]:
    """The ledger after observing each body's snapshot in turn."""
    ledger: dict[str, Transaction] = {}
    for b in bodies:
        for tx in observe_snapshot(ledger, parse_subscriber(b)):
            ledger[tx.transaction_id] = tx
    return ledger


def owned(ledger: dict[str, Transaction]) -> list[str]:
    return sorted(t.transaction_id for t in ledger.values() if t.owner == "alice")


def test_a_purchase_listed_without_an_id_is_kept_not_dropped():
    ledger = ledger_after(body(1_000, [purchase()]))
    [tx] = ledger.values()
    assert tx.owner == "alice" and tx.product_id == "h01enb" and tx.purchased_ms == PURCHASED_MS
    assert tx.transaction_id == f"alice:h01enb:{PURCHASED_MS}"  # stable: the next read names it again
    assert owned(ledger_after(body(1_000, [purchase()]), body(2_000, [purchase()]))) == [tx.transaction_id]


def test_a_purchase_seen_with_an_id_keeps_its_owner_when_the_id_goes_missing():
    ledger = ledger_after(body(1_000, [purchase(id="GPA.1")]), body(2_000, [purchase()]))
    assert owned(ledger) == ["GPA.1"]  # not revoked, not a second purchase either
    # ...and when the id comes back, still one purchase.
    ledger = ledger_after(
        body(1_000, [purchase(id="GPA.1")]), body(2_000, [purchase()]), body(3_000, [purchase(id="GPA.1")])
    )
    assert owned(ledger) == ["GPA.1"]


def test_an_id_less_purchase_matches_by_purchase_time_first():
    other = {"purchase_date": "2024-03-01T00:00:00Z", "store": "play_store"}
    first = body(1_000, [purchase(id="GPA.1"), {**other, "id": "GPA.2"}])
    # The later read lists GPA.2 without its id; GPA.1 as before.
    ledger = ledger_after(first, body(2_000, [purchase(id="GPA.1"), other]))
    assert owned(ledger) == ["GPA.1", "GPA.2"]


def test_only_unmatched_id_less_purchases_become_purchases_of_their_own():
    two_without_ids = [purchase(), {"purchase_date": "2024-03-01T00:00:00Z"}]
    ledger = ledger_after(body(1_000, [purchase(id="GPA.1")]), body(2_000, two_without_ids))
    assert owned(ledger) == ["GPA.1", "alice:h01enb:1709251200000"]


def test_a_purchase_gone_from_the_listing_still_leaves_its_owner():
    ledger = ledger_after(body(1_000, [purchase(id="GPA.1")]), body(2_000, []))
    assert owned(ledger) == []  # refunded one-time purchases are no longer listed (by omission)
