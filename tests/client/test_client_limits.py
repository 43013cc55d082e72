"""Per-user limits of validate and sync: 429 with Retry-After, shared by every web process."""

from __future__ import annotations

import pytest

from config.settings import Settings
from tests.client.support import OPERATOR, android_payload, provider_requests
from web.app import create_app

LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(user_calls_per_minute=LIMIT)


def validate(client, app_user_id: str):
    payload = android_payload(app_user_id, "tok", product_id="not_in_catalog")  # refused without the provider
    return client.post("/v1/purchases/validate", json=payload, headers=OPERATOR)


def test_one_user_cannot_use_more_than_its_validations(client, settings, runtime, simulator):
    assert [validate(client, "alice").status_code for _ in range(LIMIT)] == [422] * LIMIT
    limited = validate(client, "alice")
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
    answer = limited.json
    assert (answer["acknowledged"], answer["retryable"], answer["reason"]) == (False, True, "too_many_requests")
    other_process = create_app(settings).test_client()  # another web process on the same Redis
    assert validate(other_process, "alice").status_code == 429
    assert validate(client, "bob").status_code == 422  # other users keep theirs
    assert provider_requests(simulator) == 0


def test_one_user_cannot_use_more_than_its_syncs(client, settings, runtime, simulator):
    simulator.state.purchase_non_renewing("alice", "h01enb")
    assert [client.post("/v1/users/alice/sync", headers=OPERATOR).status_code for _ in range(LIMIT)] == [200] * LIMIT
    limited = client.post("/v1/users/alice/sync", headers=OPERATOR)
    assert limited.status_code == 429 and limited.json["error"] == "too_many_requests"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    other_process = create_app(settings).test_client()
    assert other_process.post("/v1/users/alice/sync", headers=OPERATOR).status_code == 429
    assert client.post("/v1/users/bob/sync", headers=OPERATOR).status_code == 200
    assert provider_requests(simulator, "GET") == 2  # alice once (then reused), bob once


def test_a_flood_from_one_user_token_stops_at_the_limit(client, simulator):
    token = client.post("/v1/users/mallory/token", headers=OPERATOR).json["token"]
    statuses = [
        client.post(
            "/v1/purchases/validate",
            json=android_payload("mallory", "tok", product_id="not_in_catalog"),
            headers={"Authorization": f"Bearer {token}"},
        ).status_code
        for _ in range(40)
    ]
    assert statuses == [422] * LIMIT + [429] * (40 - LIMIT)
