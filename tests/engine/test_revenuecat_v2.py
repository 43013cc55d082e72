"""REST v2 bodies -> ledger facts (engine.revenuecat_v2), and what a v2 history accounts for.

Bodies follow the api-v2.yaml schemas quoted in reference/revenuecat.md §4 (ms timestamps,
lists of items); only the fields the parser reads are spelled out.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from engine.catalog import parse_catalog
from engine.errors import TerminalError
from engine.facts import UNKNOWN, Transaction, TransactionObservation, merge_observation, observe_snapshot
from engine.projection import project_access
from engine.revenuecat_v2 import V2CustomerRead, parse_customer_history

DAY = 86_400_000
T0 = 1_700_000_000_000
PRODUCTS = {"prodA": "premium_monthly", "prodB": "premium_yearly", "prodC": "geometry_pack_30", "prodD": "h01enb"}


def subscription(sub_id, product, store, latest, *, status="active", starts=T0, ends=T0 + 30 * DAY, **extra):
    return {
        "object": "subscription",
        "id": sub_id,
        "customer_id": "ana",
        "product_id": product,
        "store": store,
        "environment": "production",
        "ownership": "purchased",
        "status": status,
        "store_subscription_identifier": latest,
        "current_period_starts_at": starts,
        "current_period_ends_at": ends,
        **extra,
    }


def transaction(tx_id, k, *, grace=0):
    start = T0 + k * 30 * DAY
    return {
        "object": "subscription_transaction",
        "id": tx_id,
        "purchased_at": start,
        "product_store_identifier": "premium_monthly",
        "expiration_date": start + 30 * DAY,
        "effective_expiration_date": start + 30 * DAY + grace,
    }


def purchase(tx_id, product, status="owned"):
    return {
        "object": "purchase",
        "id": f"rc{tx_id}",
        "product_id": product,
        "purchased_at": T0,
        "status": status,
        "store": "play_store",
        "environment": "sandbox",
        "store_purchase_identifier": tx_id,
        "ownership": "purchased",
    }


def history_read(**changes) -> V2CustomerRead:
    read = V2CustomerRead(
        customer_id="ana",
        request_ms=T0 + 100 * DAY,
        subscriptions=[
            subscription("sub1", "prodA", "app_store", "a3", status="trialing"),
            subscription("sub2", "prodB", "stripe", "st1"),
            subscription("sub3", None, "promotional", "promo1"),
        ],
        purchases=[purchase("p1", "prodC"), purchase("p2", "prodD", status="refunded")],
        transactions={"sub1": [transaction("a1", 0), transaction("a2", 1), transaction("a3", 2, grace=3 * DAY)]},
        aliases=[{"object": "customer.alias", "id": "ana", "created_at": T0}, {"id": "$RCAnonymousID:1"}],
        product_store_ids=PRODUCTS,
    )
    return dataclasses.replace(read, **changes)


def test_every_period_of_an_app_store_subscription_is_its_own_fact():
    history = parse_customer_history(history_read())
    by_id = {o.transaction_id: o for o in history.snapshot.observations}
    assert sorted(by_id) == ["a1", "a2", "a3", "p1", "p2", "promo1", "st1"]
    a1, a3 = by_id["a1"], by_id["a3"]
    assert (a1.product_id, a1.kind, a1.store, a1.owner, a1.observed_ms) == (
        "premium_monthly",
        "subscription",
        "app_store",
        "ana",
        T0 + 100 * DAY,
    )
    assert (a1.purchased_ms, a1.expires_ms, a1.grace_expires_ms) == (T0, T0 + 30 * DAY, None)
    assert a3.grace_expires_ms == T0 + 90 * DAY + 3 * DAY  # effective_expiration_date includes grace
    # v2 states no refund of a period, and the trial only of the current one.
    assert a1.refunded_ms is UNKNOWN and a1.period_type is UNKNOWN and a3.period_type == "trial"
    assert history.identities == {"ana": "ana", "$RCAnonymousID:1": "ana"}


def test_other_stores_give_the_latest_period_and_promotional_grants_no_product():
    snapshot = parse_customer_history(history_read()).snapshot
    by_id = {o.transaction_id: o for o in snapshot.observations}
    assert (by_id["st1"].product_id, by_id["st1"].expires_ms) == ("premium_yearly", T0 + 30 * DAY)
    assert by_id["promo1"].product_id is UNKNOWN and by_id["promo1"].store == "promotional"
    assert snapshot.periods == "all" and snapshot.latest_only_products == {"premium_yearly"}
    assert snapshot.unnamed_subscriptions is True
    assert snapshot.subscription_products == {"premium_monthly", "premium_yearly"}


def test_purchases_refunded_or_not():
    by_id = {o.transaction_id: o for o in parse_customer_history(history_read()).snapshot.observations}
    owned, refunded = by_id["p1"], by_id["p2"]
    assert (owned.product_id, owned.kind, owned.is_sandbox, owned.refunded_ms, owned.owner) == (
        "geometry_pack_30",
        "non_subscription",
        True,
        None,
        "ana",
    )
    # Refunded, but v2 does not say when: the time the ledger holds is kept; it leaves ana.
    assert (refunded.refunded_ms, refunded.owner, refunded.released_by) == (UNKNOWN, UNKNOWN, "ana")


def test_a_null_expiry_is_not_a_lifetime():
    tx = {**transaction("a1", 0), "expiration_date": None, "effective_expiration_date": None}
    paused = subscription("sub1", "prodA", "stripe", "st9", ends=None)
    read = history_read(transactions={"sub1": [tx]}, subscriptions=[subscription("sub1", "prodA", "app_store", "a1")])
    [obs] = parse_customer_history(read).snapshot.observations[:1]
    assert obs.expires_ms is UNKNOWN and obs.grace_expires_ms is UNKNOWN
    only_paused = history_read(subscriptions=[paused], purchases=[], transactions={})
    [latest] = parse_customer_history(only_paused).snapshot.observations
    assert latest.expires_ms is UNKNOWN


def test_the_digest_ignores_the_read_time_and_follows_the_facts():
    first = parse_customer_history(history_read()).snapshot
    later = parse_customer_history(history_read(request_ms=T0 + 200 * DAY)).snapshot
    renewed = parse_customer_history(
        history_read(transactions={"sub1": [transaction(f"a{k}", k) for k in range(1, 5)]})
    ).snapshot
    assert first.digest == later.digest != renewed.digest


@pytest.mark.parametrize(
    "broken",
    [
        {"subscriptions": [{"id": "sub1", "environment": "production"}]},  # no store
        {"purchases": [{**purchase("p1", "prodC"), "purchased_at": "2024-01-01T00:00:00Z"}]},  # not ms
        {"transactions": {"sub1": [{**transaction("a1", 0), "id": True}]}},
        {"customer_id": ""},
    ],
)
def test_a_body_outside_the_spec_is_terminal(broken):
    with pytest.raises(TerminalError, match="unexpected v2 shape"):
        parse_customer_history(history_read(**broken))


def owned(tx_id, product, kind="subscription"):
    return Transaction(tx_id, product_id=product, kind=kind, owner="ana", observed={"owner": T0})


@pytest.mark.parametrize(
    ("tx", "released"),
    [
        (owned("a0", "premium_monthly"), True),  # an unlisted period of a product listed in full
        (owned("st0", "premium_yearly"), False),  # of a store v2 lists no history for
        (owned("x0", "some_other_product"), False),  # may be one of the unnamed (promotional) ones
        (owned("p9", "h01enb", "non_subscription"), True),  # a one-time purchase no longer listed
    ],
)
def test_what_a_history_accounts_for(tx, released):
    snapshot = parse_customer_history(history_read()).snapshot
    changed = {t.transaction_id: t for t in observe_snapshot({tx.transaction_id: tx}, snapshot)}
    assert (tx.transaction_id in changed and changed[tx.transaction_id].owner is None) is released


def test_a_history_without_unnamed_subscriptions_releases_a_product_gone():
    read = history_read(subscriptions=[subscription("sub1", "prodA", "app_store", "a3")])
    snapshot = parse_customer_history(read).snapshot
    gone = owned("x0", "some_other_product")
    changed = {t.transaction_id: t for t in observe_snapshot({"x0": gone}, snapshot)}["x0"]
    assert changed.owner is None and changed.observed["released:ana"] == snapshot.request_ms


def test_a_release_negates_only_its_customers_claims_in_any_order():
    claim_ana = TransactionObservation("a1", T0 + 1, owner="ana")
    claim_ben = TransactionObservation("a1", T0 + 5, owner="ben")  # transferred to ben
    release_ana = TransactionObservation("a1", T0 + 9, released_by="ana")  # ana's newer snapshot
    for order in itertools.permutations([claim_ana, claim_ben, release_ana]):
        tx = None
        for obs in order:
            tx = merge_observation(tx, obs) or tx
        assert tx is not None and tx.owner == "ben", order
    late_claim = TransactionObservation("a1", T0 + 7, owner="ana")  # older than ana's release
    for order in itertools.permutations([claim_ana, release_ana, late_claim]):
        tx = None
        for obs in order:
            tx = merge_observation(tx, obs) or tx
        assert tx is not None and tx.owner is None, order


CREDIT = parse_catalog(
    {
        "products": {
            "monthly": {
                "store_ids": ["premium_monthly"],
                "kind": "subscription",
                "grants": [{"resource": "module:geometry", "mode": "full", "policy": "credit", "days": 30}],
            }
        }
    }
)


def test_each_paid_renewal_is_credited_once_even_when_only_the_history_saw_it():
    now = T0 + 25 * DAY
    # Four paid weekly periods, no webhook seen; each credits 30 days, stacked.
    renewals = [{**transaction(f"a{k}", 0), "purchased_at": T0 + 7 * k * DAY} for k in range(4)]
    read = history_read(
        subscriptions=[subscription("sub1", "prodA", "app_store", "a3")], purchases=[], transactions={"sub1": renewals}
    )
    ledger: dict[str, Transaction] = {}
    for request_ms in (now, now + 1, now + 2):  # read three times: nothing is credited twice
        snapshot = parse_customer_history(dataclasses.replace(read, request_ms=request_ms)).snapshot
        for tx in observe_snapshot(ledger, snapshot):
            ledger[tx.transaction_id] = tx
    [access] = project_access(ledger.values(), CREDIT, now).accesses
    assert access.expires_ms == T0 + 4 * 30 * DAY
    [latest_only] = project_access([ledger["a3"]], CREDIT, now).accesses  # what v1 alone would credit
    assert latest_only.expires_ms == T0 + (21 + 30) * DAY
