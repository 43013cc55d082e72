"""Merge rules of the ledger (engine.facts): each field's winner, idempotence, order."""

import itertools

import pytest

from engine.facts import (
    UNKNOWN,
    SubscriberSnapshot,
    Transaction,
    TransactionObservation,
    merge_observation,
    observe_all,
    observe_snapshot,
)


def obs(ts: int, **fields) -> TransactionObservation:
    return TransactionObservation(transaction_id="tx1", observed_ms=ts, **fields)


PURCHASE = {
    "product_id": "premium_monthly",
    "kind": "subscription",
    "store": "app_store",
    "is_sandbox": False,
    "purchased_ms": 1_000,
    "period_type": "normal",
    "ownership": "PURCHASED",
}


def fold(observations):
    tx = None
    for o in observations:
        tx = merge_observation(tx, o) or tx
    return tx


def test_same_fact_twice_is_a_no_op():
    first = merge_observation(None, obs(10, expires_ms=5_000, owner="alice", **PURCHASE))
    assert merge_observation(first, obs(10, expires_ms=5_000, owner="alice", **PURCHASE)) is None


def test_older_state_after_newer_changes_nothing():
    newer = merge_observation(None, obs(20, expires_ms=9_000, refunded_ms=15, owner="alice", **PURCHASE))
    assert merge_observation(newer, obs(10, expires_ms=5_000, refunded_ms=None, owner="bob")) is None


@pytest.mark.parametrize(
    ("field", "older", "newer"),
    [
        ("expires_ms", 5_000, 9_000),  # renewal / SUBSCRIPTION_EXTENDED moves the expiry
        ("expires_ms", 9_000, 5_000),  # EXPIRATION brings it forward: the newest still wins
        ("grace_expires_ms", None, 7_000),  # billing issue opens grace
        ("refunded_ms", None, 15),  # refund
        ("refunded_ms", 15, None),  # refund reversed
        ("owner", "alice", "bob"),  # transfer
        ("owner", "alice", None),  # left the customer
    ],
)
def test_state_fields_newest_observation_wins_in_any_order(field, older, newer):
    observations = [obs(10, **{field: older}, **PURCHASE), obs(20, **{field: newer})]
    for order in itertools.permutations(observations):
        assert getattr(fold(order), field) == newer


def test_purchase_fields_first_known_value_kept_and_unknowns_filled():
    sparse = merge_observation(None, obs(20, refunded_ms=15))  # a refund event seen first
    assert sparse is not None and sparse.product_id is None
    filled = merge_observation(sparse, obs(10, **PURCHASE))  # older, but knows the purchase
    assert filled is not None and filled.product_id == "premium_monthly" and filled.purchased_ms == 1_000
    assert filled.refunded_ms == 15  # the older observation did not touch state
    assert merge_observation(filled, obs(30, product_id="other")) is None


def test_unknown_fields_are_not_asserted():
    tx = merge_observation(None, obs(10, expires_ms=5_000, **PURCHASE))
    later = merge_observation(tx, obs(20, refunded_ms=UNKNOWN, owner="alice"))
    assert later is not None and later.expires_ms == 5_000 and later.owner == "alice"


def test_access_end_includes_grace():
    assert Transaction("t", expires_ms=100, grace_expires_ms=150).access_end_ms == 150
    assert Transaction("t", expires_ms=100, grace_expires_ms=None).access_end_ms == 100
    assert Transaction("t", expires_ms=None).access_end_ms is None


def snapshot(customer, ts, *observations, products=()):
    return SubscriberSnapshot(customer, ts, tuple(observations), frozenset(products), digest=str(ts))


def test_snapshot_omission_clears_ownership_only_when_newer_and_owned():
    one_time = Transaction("p1", product_id="h01enb", kind="non_subscription", owner="alice", observed={"owner": 10})
    # A newer snapshot of alice without p1: it left alice (transferred away or refunded).
    changed = observe_snapshot({"p1": one_time}, snapshot("alice", 20))
    assert [t.owner for t in changed] == [None]
    # An older snapshot of alice changes nothing.
    assert observe_snapshot({"p1": one_time}, snapshot("alice", 5)) == []
    # A snapshot of someone else says nothing about alice's purchase.
    assert observe_snapshot({"p1": one_time}, snapshot("bob", 20)) == []


def test_snapshot_keeps_earlier_periods_of_a_listed_subscription():
    earlier = Transaction(
        "s1", product_id="premium_monthly", kind="subscription", owner="alice", observed={"owner": 10}
    )
    latest = TransactionObservation("s2", 20, product_id="premium_monthly", kind="subscription", owner="alice")
    changed = observe_snapshot({"s1": earlier}, snapshot("alice", 20, latest, products=["premium_monthly"]))
    assert [t.transaction_id for t in changed] == ["s2"]


def test_transfer_then_stale_snapshot_of_old_owner():
    tx = fold([obs(10, owner="alice", **PURCHASE), obs(30, owner="bob")])
    assert observe_all({"tx1": tx}, [obs(20, owner="alice")]) == []
    assert tx.owner == "bob"


def test_an_omission_does_not_outrank_another_customers_snapshot_read_just_before():
    # p1 moved from alice to bob. In one sweep group bob was read at 20 and alice at 21, and
    # alice's snapshot was written first: her omission must not hide bob's ownership.
    tx = Transaction("p1", product_id="h01enb", kind="non_subscription", owner="alice", observed={"owner": 10})
    [cleared] = observe_snapshot({"p1": tx}, snapshot("alice", 21))
    assert cleared.owner is None
    bobs = TransactionObservation("p1", 20, product_id="h01enb", kind="non_subscription", owner="bob")
    [owned] = observe_snapshot({"p1": cleared}, snapshot("bob", 20, bobs))
    assert owned.owner == "bob"
