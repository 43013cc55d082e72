"""The simulator's webhook bodies: their keys against the official samples (verbatim copies of
reference/revenuecat.md §1.8 in tests/fixtures/revenuecat/), their values after each operation."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from simulators.revenuecat import ProviderState, SimulatorError, SimulatorServer
from simulators.revenuecat.records import DAY_MS
from tests.simulator.support import FIXTURES, get_subscriber

# Documented fields (reference §1.3–1.4) that some official samples happen to omit.
DOCUMENTED_EXTRAS = {
    "app_id",
    "country_code",
    "is_family_share",
    "renewal_number",
    "grace_period_expiration_at_ms",
    "is_trial_conversion",
    "offer_code",
}


def _produce(state: ProviderState, event_type: str) -> dict[str, Any]:
    state.purchase_subscription("u", "monthly", period_type="trial")
    tx = state.subscriber("u")[1]["subscriber"]["subscriptions"]["monthly"]["store_transaction_id"]
    return {
        "INITIAL_PURCHASE.json": lambda: state.purchase_subscription("u", "yearly"),
        "RENEWAL.json": lambda: state.renew("u", "monthly"),
        "CANCELLATION_UNSUBSCRIBE.json": lambda: state.cancel("u", "monthly"),
        "CANCELLATION_REFUND.json": lambda: state.refund("u", tx),
        "EXPIRATION.json": lambda: state.expire("u", "monthly"),
        "TRANSFER.json": lambda: state.transfer("u", "v"),
        "BILLING_ISSUE.json": lambda: state.billing_issue("u", "monthly"),
        "PRODUCT_CHANGE.json": lambda: state.change_product("u", "monthly", "yearly"),
        "REFUND_REVERSED.json": lambda: (state.refund("u", tx), state.reverse_refund("u", tx))[1],
    }[event_type]()


SAMPLES = {
    "INITIAL_PURCHASE.json": "sample-events_1.json",
    "RENEWAL.json": "sample-events_2.json",
    "CANCELLATION_UNSUBSCRIBE.json": "sample-events_3.json",
    "CANCELLATION_REFUND.json": "sample-events_9.json",
    "EXPIRATION.json": "sample-events_13.json",
    "TRANSFER.json": "sample-events_8.json",
    "BILLING_ISSUE.json": "sample-events_7.json",
    "PRODUCT_CHANGE.json": "sample-events_10.json",
    "REFUND_REVERSED.json": "sample-event-refund-reversed.json",
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_event_keys_match_the_official_sample(case: str) -> None:
    body = _produce(ProviderState(), case)
    sample = json.loads((FIXTURES / SAMPLES[case]).read_text())
    assert set(body) == set(sample) == {"api_version", "event"}
    assert body["api_version"] == "1.0"
    event, expected = set(body["event"]), set(sample["event"])
    if case == "TRANSFER.json":
        assert event == expected
        return
    assert expected <= event, expected - event
    assert event - expected <= DOCUMENTED_EXTRAS | {"cancel_reason", "expiration_reason", "new_product_id"}
    assert body["event"]["type"] == sample["event"]["type"]
    uuid.UUID(body["event"]["id"])


def test_event_values_follow_the_operation() -> None:
    state = ProviderState(entitlements_by_product={"monthly": ["pro", "plus"]})
    t0 = state.now_ms()
    trial = state.purchase_subscription("u", "monthly", period_type="trial", period_ms=7 * DAY_MS, now_ms=t0)["event"]
    assert (trial["type"], trial["period_type"], trial["store"], trial["price"]) == (
        "INITIAL_PURCHASE",
        "TRIAL",
        "APP_STORE",
        0,
    )
    assert trial["entitlement_ids"] == ["pro", "plus"]
    assert trial["transaction_id"] == trial["original_transaction_id"]
    assert (trial["app_user_id"], trial["original_app_user_id"], trial["aliases"]) == ("u", "u", ["u"])

    renewal = state.renew("u", "monthly", now_ms=t0 + DAY_MS)["event"]
    assert renewal["is_trial_conversion"] is True and renewal["period_type"] == "NORMAL"
    assert renewal["purchased_at_ms"] == trial["expiration_at_ms"]  # starts where the trial ends
    assert renewal["expiration_at_ms"] == trial["expiration_at_ms"] + 7 * DAY_MS
    assert renewal["original_transaction_id"] == trial["transaction_id"] != renewal["transaction_id"]
    assert renewal["price"] == 9.99

    issue = state.billing_issue("u", "monthly", grace_ms=3 * DAY_MS, now_ms=t0 + 2 * DAY_MS)["event"]
    assert issue["grace_period_expiration_at_ms"] == renewal["expiration_at_ms"] + 3 * DAY_MS
    expired = state.expire("u", "monthly", reason="BILLING_ERROR", now_ms=t0 + 3 * DAY_MS)["event"]
    assert (expired["expiration_reason"], expired["expiration_at_ms"]) == ("BILLING_ERROR", t0 + 3 * DAY_MS)
    lapsed = state.renew("u", "monthly", now_ms=t0 + 30 * DAY_MS)["event"]
    assert lapsed["purchased_at_ms"] == t0 + 30 * DAY_MS and lapsed["is_trial_conversion"] is False

    sandbox = state.purchase_non_renewing("u", "coins", store="play_store", sandbox=True)["event"]
    assert (sandbox["type"], sandbox["environment"], sandbox["store"], sandbox["expiration_at_ms"]) == (
        "NON_RENEWING_PURCHASE",
        "SANDBOX",
        "PLAY_STORE",
        None,
    )
    assert sandbox["entitlement_ids"] is None  # unmapped products grant nothing


def test_cancel_uncancel_pause_change_and_promotional(sim: SimulatorServer, api: requests.Session) -> None:
    state = sim.state
    state.purchase_subscription("u", "monthly", store="play_store")
    assert state.cancel("u", "monthly")["event"]["cancel_reason"] == "UNSUBSCRIBE"
    sub = get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]["monthly"]
    assert sub["unsubscribe_detected_at"] is not None
    assert state.uncancel("u", "monthly")["event"]["type"] == "UNCANCELLATION"
    resume = state.now_ms() + 40 * DAY_MS
    assert state.pause("u", "monthly", resume_at_ms=resume)["event"]["auto_resume_at_ms"] == resume
    assert get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]["monthly"]["auto_resume_date"]

    change = state.change_product("u", "monthly", "yearly", period_ms=365 * DAY_MS)["event"]
    assert (change["type"], change["product_id"], change["new_product_id"]) == ("PRODUCT_CHANGE", "monthly", "yearly")
    subs = get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]
    assert subs["monthly"]["expires_date"] <= subs["yearly"]["purchase_date"] < subs["yearly"]["expires_date"]

    promo = state.grant_promotional("u", "gold", duration_ms=DAY_MS)["event"]
    assert (promo["type"], promo["store"], promo["period_type"]) == (
        "NON_RENEWING_PURCHASE",
        "PROMOTIONAL",
        "PROMOTIONAL",
    )
    assert "app_id" not in promo and promo["environment"] == "PRODUCTION" and promo["entitlement_ids"] == ["gold"]
    body = get_subscriber(sim, api, "u").json()["subscriber"]
    assert body["subscriptions"]["rc_promo_gold_custom"]["store"] == "promotional"
    assert body["entitlements"]["gold"]["product_identifier"] == "rc_promo_gold_custom"

    state.purchase_subscription("ios_user", "monthly")
    with pytest.raises(SimulatorError):
        state.pause("ios_user", "monthly", resume_at_ms=resume)  # Play Store only
    paused = state.expire("u", "yearly", reason="SUBSCRIPTION_PAUSED")["event"]
    assert paused["expiration_reason"] == "SUBSCRIPTION_PAUSED"
