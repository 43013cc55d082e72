"""The simulator's POST /v1/receipts: a store purchase recorded once, bad and pending tokens
refused, a restore by another user as a TRANSFER (or an alias, for an anonymous owner)."""

from __future__ import annotations

from typing import Any

import requests

from simulators.revenuecat import ProviderState, SimulatorServer


def post_receipt(
    sim: SimulatorServer, api: requests.Session, payload: dict[str, Any], platform: str | None = "android"
) -> requests.Response:
    headers = {"X-Platform": platform} if platform else {}
    return api.post(f"{sim.url}/v1/receipts", json=payload, headers=headers, timeout=5)


def test_receipts_record_once_and_reject_bad_tokens(sim: SimulatorServer, api: requests.Session) -> None:
    state = sim.state
    state.register_store_purchase("tok-1", platform="android", product_id="h01enb", transaction_id="GPA.1234-5678-9012")
    payload = {"app_user_id": "buyer", "fetch_token": "tok-1", "product_id": "h01enb"}

    missing_platform = post_receipt(sim, api, payload, platform=None)
    assert missing_platform.status_code == 400 and "X-Platform" in missing_platform.json()["message"]

    first = post_receipt(sim, api, payload)
    assert first.status_code == 200
    [purchase] = first.json()["subscriber"]["non_subscriptions"]["h01enb"]
    assert purchase["store_transaction_id"] == "GPA.1234-5678-9012" and purchase["store"] == "play_store"
    again = post_receipt(sim, api, payload)
    assert again.json()["subscriber"]["non_subscriptions"] == first.json()["subscriber"]["non_subscriptions"]

    unknown = post_receipt(sim, api, {**payload, "fetch_token": "nope"})
    assert unknown.status_code == 400 and unknown.json()["code"] == 7103
    state.register_store_purchase("tok-bad", platform="android", product_id="h01enb", status="invalid")
    assert post_receipt(sim, api, {**payload, "fetch_token": "tok-bad"}).json()["code"] == 7103

    state.register_store_purchase("tok-pending", platform="android", product_id="h01enb", status="pending")
    pending = post_receipt(sim, api, {**payload, "fetch_token": "tok-pending"})
    assert pending.status_code == 400 and "pending" in pending.json()["message"]
    state.register_store_purchase("tok-pending", platform="android", product_id="h01enb")  # payment completes
    assert (
        len(
            post_receipt(sim, api, {**payload, "fetch_token": "tok-pending"}).json()["subscriber"]["non_subscriptions"][
                "h01enb"
            ]
        )
        == 2
    )


def test_receipt_events_idempotency_and_transfer() -> None:
    state = ProviderState()
    state.register_store_purchase("sub-tok", platform="ios", product_id="monthly", kind="subscription")
    status, body, events = state.receipt("owner", "ios", "sub-tok")
    assert status == 200 and [e["event"]["type"] for e in events] == ["INITIAL_PURCHASE"]
    assert state.receipt("owner", "ios", "sub-tok").events == []  # same token twice records once

    status, body, events = state.receipt("restorer", "ios", "sub-tok")  # another identified user restores
    assert [e["event"]["type"] for e in events] == ["TRANSFER"]
    assert events[0]["event"]["transferred_from"] == ["owner"] and events[0]["event"]["transferred_to"] == ["restorer"]
    assert set(body["subscriber"]["subscriptions"]) == {"monthly"}
    assert state.subscriber("owner")[1]["subscriber"]["subscriptions"] == {}

    # An anonymous owner is merged into the restoring user instead: no TRANSFER (reference §6).
    anonymous = "$RCAnonymousID:0123456789abcdef"
    state.register_store_purchase("anon-tok", platform="ios", product_id="course")
    state.receipt(anonymous, "ios", "anon-tok")
    assert state.receipt("identified", "ios", "anon-tok").events == []
    assert state.aliases_of("identified") == sorted([anonymous, "identified"])
