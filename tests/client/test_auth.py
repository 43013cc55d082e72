"""Who may call what: the API token, user tokens for one user, and every refusal."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from tests.client.support import OPERATOR, android_payload
from tests.support import answer
from web.app import create_app


def mint(client, app_user_id: str, **body) -> str:
    response = client.post(f"/v1/users/{app_user_id}/token", json=body or None, headers=OPERATOR)
    assert response.status_code == 201, response.json
    assert response.json["app_user_id"] == app_user_id and response.json["token_type"] == "Bearer"
    return response.json["token"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_user_token_reads_validates_and_syncs_for_its_own_user(client, simulator):
    token = mint(client, "alice")
    simulator.state.register_store_purchase("tok", platform="android", product_id="h01enb")
    assert (
        client.post("/v1/purchases/validate", json=android_payload("alice", "tok"), headers=bearer(token)).status_code
        == 200
    )
    assert client.post("/v1/users/alice/sync", headers=bearer(token)).status_code == 200
    response = client.get("/v1/users/alice/access", headers=bearer(token))
    assert response.status_code == 200 and response.json["access"][0]["resource"] == "course:H01ENB"


def test_a_user_token_never_reads_or_changes_another_user(client, simulator):
    token = mint(client, "mallory")
    simulator.state.register_store_purchase("tok", platform="android", product_id="h01enb")
    refusals = [
        client.get("/v1/users/alice/access", headers=bearer(token)),
        client.get("/v1/users/alice/access?wait=5", headers=bearer(token)),
        client.post("/v1/users/alice/sync", headers=bearer(token)),
        client.post("/v1/purchases/validate", json=android_payload("alice", "tok"), headers=bearer(token)),
        client.post("/v1/users/alice/token", headers=bearer(token)),
        client.post("/v1/users/mallory/token", headers=bearer(token)),  # only the operator mints
    ]
    for response in refusals:
        assert response.status_code == 403 and response.json["error"] in {"forbidden", "operator_only"}, response.json
    assert simulator.state.request_count == 0  # nothing reached the provider for them
    # A validation payload without a user cannot borrow the token's user either.
    payload = android_payload("mallory", "tok")
    del payload["app_user_id"]
    assert client.post("/v1/purchases/validate", json=payload, headers=bearer(token)).status_code == 400


def test_expired_tampered_and_missing_tokens_are_401(client):
    with freeze_time("2026-01-01 00:00:00"):
        old = mint(client, "alice", ttl_s=60)
    tampered = mint(client, "alice")[:-2] + "xx"
    cases = {
        "token_expired": bearer(old),
        "invalid_token": bearer(tampered),
        "unauthorized": {},
    }
    for error, headers in cases.items():
        response = client.post("/v1/users/alice/sync", headers=headers)
        assert response.status_code == 401 and response.json["error"] == error
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        assert client.get("/v1/users/alice/access", headers=headers).status_code == 401


@pytest.mark.parametrize("body", [{"ttl_s": 5}, {"ttl_s": 3601}, {"ttl_s": "60"}, {"ttl_s": True}, []])
def test_token_lifetime_is_bounded(client, body):
    response = client.post("/v1/users/alice/token", json=body, headers=OPERATOR)
    assert response.status_code == 400
    assert "ttl_s" in response.json["message"] or "JSON object" in response.json["message"]


def test_token_answer_states_its_lifetime(client):
    response = client.post("/v1/users/alice/token", json={"ttl_s": 120}, headers=OPERATOR)
    assert (
        response.status_code == 201 and response.json["expires_in"] == 120 and response.json["expires_at"].endswith("Z")
    )


def test_without_a_secret_no_user_token_is_minted_or_accepted(settings, runtime):
    with_secret = create_app(settings).test_client()
    token = mint(with_secret, "alice")
    client = create_app(settings.with_(user_token_secret="")).test_client()
    minted = client.post("/v1/users/alice/token", headers=OPERATOR)
    assert minted.status_code == 503 and answer(minted)["error"] == "user_tokens_not_configured"
    refused = client.post("/v1/users/alice/sync", headers=bearer(token))
    assert refused.status_code == 401 and answer(refused)["error"] == "user_tokens_not_configured"


def test_without_an_api_token_only_user_tokens_work(settings, runtime, simulator):
    token = mint(create_app(settings).test_client(), "alice")
    client = create_app(settings.with_(api_token="")).test_client()
    assert answer(client.get("/v1/users/alice/access", headers=OPERATOR))["error"] == "api_token_not_configured"
    assert client.get("/v1/users/alice/access", headers=bearer(token)).status_code == 200


def test_operator_cli_mints_a_token(app, client):
    result = app.test_cli_runner().invoke(args=["mint-user-token", "alice", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert client.get("/v1/users/alice/access", headers=bearer(token)).status_code == 200
    assert client.get("/v1/users/bob/access", headers=bearer(token)).status_code == 403
