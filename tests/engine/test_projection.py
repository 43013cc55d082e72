"""project_access, case by case, on the documented payloads (../shared/reference/revenuecat.md)."""

import copy
import json
from pathlib import Path

import pytest

from engine.catalog import DAY_MS, parse_catalog
from engine.facts import Transaction, observe_all
from engine.projection import project_access
from engine.revenuecat import parse_event, parse_subscriber

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "revenuecat"
NOW = 1_800_000_000_000  # a fixed "now": pure code never reads the clock

CATALOG = parse_catalog(
    {
        "products": {
            "monthly": {
                "store_ids": ["com.subscription.weekly", "com.revenuecat.myapp.monthly", "onemonth_no_trial"],
                "kind": "subscription",
                "entitlements": ["pro"],
                "grants": [
                    {"resource": "module:algebra", "mode": "basic", "policy": "period"},
                    {"resource": "module:geometry", "mode": "full", "policy": "credit", "days": 30},
                ],
            },
            "yearly": {
                "store_ids": ["com.revenuecat.myapp.yearly", "annual"],
                "kind": "subscription",
                "grants": [{"resource": "module:algebra", "mode": "full", "policy": "period"}],
            },
            "course": {
                "store_ids": ["h01enb", "onetime"],
                "kind": "non_consumable",
                "grants": [{"resource": "course:H01ENB", "mode": "paid", "policy": "lifetime"}],
            },
            "pack": {
                "store_ids": ["pack30"],
                "kind": "consumable",
                "grants": [{"resource": "module:geometry", "mode": "basic", "policy": "credit", "days": 30}],
            },
            "private": {
                "store_ids": ["private_monthly"],
                "kind": "subscription",
                "family_shareable": False,
                "grants": [{"resource": "module:private", "mode": "full", "policy": "period"}],
            },
        }
    }
)


def sample(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def event(name: str, **changes) -> dict:
    body = copy.deepcopy(sample(name))
    body["event"].update(changes)
    return body


def ledger(*bodies: dict) -> list[Transaction]:
    """Fold webhook bodies (any order) into ledger transactions, as degraded mode does."""
    known: dict[str, Transaction] = {}
    for body in bodies:
        for tx in observe_all(known, parse_event(body).observations):
            known[tx.transaction_id] = tx
    return list(known.values())


def access(txs, **kw):
    return {a.resource: a for a in project_access(txs, CATALOG, NOW, **kw).accesses}


PURCHASE = {
    "purchased_at_ms": NOW - 5 * DAY_MS,
    "expiration_at_ms": NOW + 2 * DAY_MS,
    "event_timestamp_ms": NOW - 5 * DAY_MS,
}


def test_period_follows_expiry():
    got = access(ledger(event("sample-events_1", **PURCHASE)))
    assert got["module:algebra"].expires_ms == NOW + 2 * DAY_MS
    expired = access(ledger(event("sample-events_1", purchased_at_ms=NOW - 9 * DAY_MS, expiration_at_ms=NOW - DAY_MS)))
    assert "module:algebra" not in expired


def test_billing_issue_keeps_access_until_the_end_of_grace():
    first = event("sample-events_1", **PURCHASE)
    billing = event(
        "sample-events_7",
        product_id="com.subscription.weekly",
        transaction_id=first["event"]["transaction_id"],
        expiration_at_ms=NOW - DAY_MS,
        grace_period_expiration_at_ms=NOW + 3 * DAY_MS,
        event_timestamp_ms=NOW - DAY_MS,
    )
    got = access(ledger(first, billing))
    assert got["module:algebra"].expires_ms == NOW + 3 * DAY_MS


def test_refund_revokes_and_refund_reversal_restores_in_any_order():
    purchase = event("sample-events_1", **PURCHASE)
    tx = purchase["event"]["transaction_id"]
    refund = event(
        "sample-events_9", product_id="com.subscription.weekly", transaction_id=tx, event_timestamp_ms=NOW - 2 * DAY_MS
    )
    reversal = event(
        "sample-event-refund-reversed",
        transaction_id=tx,
        event_timestamp_ms=NOW - DAY_MS,
        **{k: v for k, v in PURCHASE.items() if k != "event_timestamp_ms"},
    )
    assert access(ledger(purchase, refund)) == {}
    for order in [(purchase, refund, reversal), (reversal, refund, purchase), (refund, reversal, purchase)]:
        assert "module:algebra" in access(ledger(*order))


def test_cancellation_unsubscribe_keeps_access_until_expiry():
    purchase = event("sample-events_1", **PURCHASE)
    cancel = event(
        "sample-events_3",
        product_id="com.subscription.weekly",
        transaction_id=purchase["event"]["transaction_id"],
        expiration_at_ms=NOW + 2 * DAY_MS,
        event_timestamp_ms=NOW - DAY_MS,
    )
    assert access(ledger(purchase, cancel))["module:algebra"].expires_ms == NOW + 2 * DAY_MS


def test_pause_does_not_revoke_until_expiration():
    purchase = event("sample-events_1", store="PLAY_STORE", **PURCHASE)
    paused = event(
        "sample-events_1",
        type="SUBSCRIPTION_PAUSED",
        store="PLAY_STORE",
        auto_resume_at_ms=NOW + 30 * DAY_MS,
        event_timestamp_ms=NOW - DAY_MS,
        purchased_at_ms=PURCHASE["purchased_at_ms"],
        expiration_at_ms=NOW + 2 * DAY_MS,
    )
    assert "module:algebra" in access(ledger(purchase, paused))
    expiration = event(
        "sample-events_13",
        expiration_reason="SUBSCRIPTION_PAUSED",
        store="PLAY_STORE",
        expiration_at_ms=NOW - 1,
        event_timestamp_ms=NOW - 1,
    )
    assert "module:algebra" not in access(ledger(purchase, paused, expiration))


def test_product_change_merges_to_the_longest_expiry_and_highest_mode_with_every_source():
    monthly = event(
        "sample-events_10",
        type="INITIAL_PURCHASE",
        transaction_id="GPA.1",
        purchased_at_ms=NOW - DAY_MS,
        expiration_at_ms=NOW + 29 * DAY_MS,
        event_timestamp_ms=NOW - DAY_MS,
    )
    yearly = event(
        "sample-events_10",
        type="INITIAL_PURCHASE",
        product_id="com.revenuecat.myapp.yearly",
        transaction_id="GPA.2",
        purchased_at_ms=NOW,
        expiration_at_ms=NOW + 365 * DAY_MS,
        event_timestamp_ms=NOW,
    )
    got = access(ledger(monthly, yearly))["module:algebra"]
    assert (got.mode, got.expires_ms, got.sources) == ("full", NOW + 365 * DAY_MS, ("GPA.1", "GPA.2"))


def test_trial_grants_the_period_but_earns_no_credit():
    trial = event("sample-events_1", period_type="TRIAL", price=0, **PURCHASE)
    got = access(ledger(trial))
    assert "module:algebra" in got and "module:geometry" not in got
    intro = event("sample-events_1", period_type="INTRO", **PURCHASE)
    assert "module:geometry" in access(ledger(intro))


def test_credit_adds_days_once_per_paid_transaction_and_stacks():
    first = event("sample-events_1", transaction_id="t1", **PURCHASE)
    renewal = event(
        "sample-events_2",
        transaction_id="t2",
        purchased_at_ms=NOW - 4 * DAY_MS,
        expiration_at_ms=NOW + 3 * DAY_MS,
        event_timestamp_ms=NOW - 4 * DAY_MS,
    )
    got = access(ledger(first, renewal, renewal, first))["module:geometry"]
    assert got.expires_ms == (NOW - 5 * DAY_MS) + 60 * DAY_MS  # two credits of 30 days, stacked
    assert got.sources == ("t1", "t2")


def test_credit_after_a_lapse_starts_at_the_purchase():
    old = Transaction("p1", product_id="pack30", kind="non_subscription", purchased_ms=NOW - 100 * DAY_MS, owner="u")
    new = Transaction("p2", product_id="pack30", kind="non_subscription", purchased_ms=NOW - DAY_MS, owner="u")
    assert access([old, new])["module:geometry"].expires_ms == NOW + 29 * DAY_MS


def test_lifetime_until_refunded():
    course = event(
        "sample-events_1",
        type="NON_RENEWING_PURCHASE",
        product_id="h01enb",
        transaction_id="c1",
        expiration_at_ms=None,
        purchased_at_ms=NOW - 400 * DAY_MS,
        event_timestamp_ms=NOW - 400 * DAY_MS,
    )
    assert access(ledger(course))["course:H01ENB"].expires_ms is None
    refund = event(
        "sample-events_9", product_id="h01enb", transaction_id="c1", expiration_at_ms=None, event_timestamp_ms=NOW
    )
    assert access(ledger(course, refund)) == {}


def test_promotional_grant_maps_through_the_entitlement():
    promo = event(
        "sample-events_1",
        type="NON_RENEWING_PURCHASE",
        product_id="rc_promo_pro_monthly",
        store="PROMOTIONAL",
        period_type="PROMOTIONAL",
        transaction_id="promo1",
        **PURCHASE,
    )
    got = access(ledger(promo))
    assert "module:algebra" in got and "module:geometry" not in got  # promotional: not paid, no credit


def test_family_sharing_grants_period_access_but_no_credit_and_respects_the_catalog():
    shared = event("sample-events_1", is_family_share=True, **PURCHASE)
    got = access(ledger(shared))
    assert "module:algebra" in got and "module:geometry" not in got
    private = event("sample-events_1", is_family_share=True, product_id="private_monthly", **PURCHASE)
    assert access(ledger(private)) == {}


@pytest.mark.parametrize(("grant_sandbox", "expected"), [(False, {}), (True, {"module:algebra", "module:geometry"})])
def test_sandbox_grants_nothing_unless_configured(grant_sandbox, expected):
    sandbox = event("sample-events_1", environment="SANDBOX", **PURCHASE)
    assert set(access(ledger(sandbox), grant_sandbox=grant_sandbox)) == set(expected)


def test_unknown_product_is_reported_and_grants_nothing():
    body = event("sample-events_1", product_id="not.in.catalog", **PURCHASE)
    projection = project_access(ledger(body), CATALOG, NOW)
    assert projection.accesses == () and projection.unknown_products == ("not.in.catalog",)


def test_transfer_event_has_no_purchase_facts_but_names_both_sides():
    parsed = parse_event(sample("sample-events_8"))
    assert parsed.app_user_ids == ("00005A1C-6091-4F81-BE77-F0A83A271AB6", "4BEDB450-8EF2-11E9-B475-0800200C9A66")
    assert parsed.observations == ()


def test_spec_subscriber_example_projects_sandbox_off_and_on():
    snapshot = parse_subscriber(sample("subscriber-spec-example"))
    txs = observe_all({}, snapshot.observations)
    now = 1_564_162_810_884  # the example's request_date_ms
    off = project_access(txs, CATALOG, now)
    assert off.accesses == ()  # every purchase is sandbox but the promo, whose entitlement is unmapped
    assert off.unknown_products == ("rc_promo_pro_cat_monthly",)
    on = {a.resource: a for a in project_access(txs, CATALOG, now, grant_sandbox=True).accesses}
    assert on["course:H01ENB"].expires_ms is None  # "onetime" non-subscription: lifetime
    assert on["module:algebra"].mode == "full"  # "annual" via the yearly product


def test_temporary_entitlement_grant_sample_is_tolerated():
    parsed = parse_event(sample("sample-event-temporary-entitlement-grant"))
    assert parsed.app_user_ids == ("41234567890",) and parsed.observations == ()
