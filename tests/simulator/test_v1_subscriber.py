"""The simulator's REST API v1 subscriber over real HTTP: the documented shape (checked against
the spec example in tests/fixtures/revenuecat/), what the engine's parser reads, auth, ids that
need encoding, injected faults."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from engine.revenuecat import parse_event, parse_subscriber
from simulators.revenuecat import SimulatorServer
from tests.simulator.support import API_KEY, FIXTURES, get_subscriber

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SUBSCRIBER_KEYS = {
    "entitlements",
    "first_seen",
    "last_seen",
    "management_url",
    "non_subscriptions",
    "original_app_user_id",
    "original_application_version",
    "original_purchase_date",
    "other_purchases",
    "subscriptions",
    "subscriber_attributes",
}


def iso_fields(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) in a body whose key names a date."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from iso_fields(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from iso_fields(item, key)
    elif key.endswith(("_date", "_at", "first_seen", "last_seen")):
        yield key, value


def test_subscriber_is_get_or_create_with_documented_shape(sim: SimulatorServer, api: requests.Session) -> None:
    first = get_subscriber(sim, api, "new_user")
    assert first.status_code == 201
    assert get_subscriber(sim, api, "new_user").status_code == 200

    sim.state.purchase_subscription("new_user", "monthly")
    sim.state.purchase_non_renewing("new_user", "course_h01", store="play_store")
    body = get_subscriber(sim, api, "new_user").json()

    spec = json.loads((FIXTURES / "subscriber-spec-example.json").read_text())
    assert set(body) == set(spec) == {"request_date", "request_date_ms", "subscriber"}
    assert set(body["subscriber"]) == SUBSCRIBER_KEYS
    sub = body["subscriber"]["subscriptions"]["monthly"]
    assert set(spec["subscriber"]["subscriptions"]["annual"]) <= set(sub)
    assert set(sub["price"]) == {"amount", "currency"}
    assert isinstance(sub["store_transaction_id"], str)
    assert (sub["period_type"], sub["store"], sub["ownership_type"]) == ("normal", "app_store", "PURCHASED")
    [one_time] = body["subscriber"]["non_subscriptions"]["course_h01"]
    assert {"id", "store_transaction_id", "purchase_date", "store", "is_sandbox", "price"} <= set(one_time)
    assert body["subscriber"]["entitlements"]["pro"]["expires_date"] is None  # the one-time purchase is lifetime
    assert body["subscriber"]["original_app_user_id"] == "new_user"
    dates = [(k, v) for k, v in iso_fields(body) if v is not None]
    assert dates and all(ISO_Z.match(v) for _, v in dates), dates
    assert ISO_Z.match(body["request_date"]) and isinstance(body["request_date_ms"], int)


def test_subscriber_body_is_what_the_engine_parser_reads(sim: SimulatorServer, api: requests.Session) -> None:
    event = sim.state.purchase_subscription("parsed", "monthly")
    snapshot = parse_subscriber(get_subscriber(sim, api, "parsed").json())
    [observation] = snapshot.observations
    assert observation.transaction_id == event["event"]["transaction_id"]
    assert observation.expires_ms == event["event"]["expiration_at_ms"]  # ms survive the ISO round trip
    assert parse_event(event).app_user_ids == ("parsed",)


def test_bad_or_missing_api_key_is_401(sim: SimulatorServer) -> None:
    url = f"{sim.url}/v1/subscribers/someone"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"message": "Invalid API key"}


@pytest.mark.parametrize(
    "app_user_id", ["$RCAnonymousID:8069238d6049ce87cc529853916d624c", "user with spaces", "a+b&c=d"]
)
def test_url_encoded_ids_resolve(sim: SimulatorServer, api: requests.Session, app_user_id: str) -> None:
    sim.state.purchase_subscription(app_user_id, "monthly")
    response = get_subscriber(sim, api, app_user_id)
    assert response.status_code == 200
    assert response.json()["subscriber"]["original_app_user_id"] == app_user_id
    assert "monthly" in response.json()["subscriber"]["subscriptions"]


def test_injected_faults_then_recovery(sim: SimulatorServer, api: requests.Session) -> None:
    sim.state.fail_next(2, status=500)
    assert [get_subscriber(sim, api, "f").status_code for _ in range(3)] == [500, 500, 201]

    sim.state.fail_next(1, status=429, retry_after_s=3)
    limited = get_subscriber(sim, api, "f")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {
        "type": "rate_limit_error",
        "message": "Rate limit exceeded",
        "retryable": True,
        "doc_url": "https://errors.rev.cat/rate-limit-error",
        "backoff_ms": 3000,
    }

    sim.state.down = True
    assert get_subscriber(sim, api, "f").status_code == 503
    assert requests.get(f"{sim.url}/_sim/stats", timeout=5).status_code == 200  # admin stays up
    sim.state.down = False
    assert get_subscriber(sim, api, "f").status_code == 200

    assert sim.state.request_count == 6
    assert [entry[:2] for entry in sim.state.request_log][-1] == ("GET", "/v1/subscribers/f")
