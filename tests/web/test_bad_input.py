"""Bad input over HTTP: deep JSON, chunked bodies, and JSON error answers from every route."""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import select

from config.settings import Settings
from persistence.models import InboxEvent
from tests.client.support import OPERATOR, USER_TOKEN_SECRET, WEBHOOK, android_payload

KIB = 1024
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000  # 195 KiB: under the size limit, past any parser's stack
DEEP_OBJECT = b'{"event": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_001


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(user_token_secret=USER_TOKEN_SECRET)


def inbox(runtime) -> list[InboxEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(InboxEvent).order_by(InboxEvent.id)))


def assert_json_error(response, status: int) -> None:
    assert response.status_code == status, response.get_data()[:200]
    assert response.mimetype == "application/json", response.get_data()[:200]
    assert {"error", "message"} <= set(response.get_json())


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT])
def test_a_deeply_nested_webhook_is_400_and_kept(client, runtime, body):
    response = client.post("/webhooks/revenuecat", data=body, headers={**WEBHOOK, "Content-Type": "application/json"})
    assert_json_error(response, 400)
    [row] = inbox(runtime)
    assert row.status == "malformed" and row.body == body and "nested too deep" in (row.last_error or "")


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT])
def test_a_deeply_nested_validation_is_400(client, body):
    response = client.post(
        "/v1/purchases/validate", data=body, headers={**OPERATOR, "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json["reason"] == "invalid_request"
    assert "body" in response.json["problems"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/purchases/validate"),
        ("post", "/v1/users/alice/token"),
        ("post", "/webhooks/revenuecat"),
    ],
)
def test_a_body_over_the_limit_is_a_json_413_on_every_route(client, method, path):
    headers = WEBHOOK if path.startswith("/webhooks") else OPERATOR
    response = getattr(client, method)(path, data=b"x" * (257 * KIB), headers=headers)
    assert_json_error(response, 413)


def test_werkzeugs_own_errors_are_json(client):
    assert_json_error(client.get("/no/such/route"), 404)
    for method, path in [("get", "/webhooks/revenuecat"), ("delete", "/v1/users/a/access"), ("put", "/healthz")]:
        response = getattr(client, method)(path)
        assert_json_error(response, 405)
        assert response.headers["Allow"]
    assert_json_error(client.get("/v1/users/bad%01id/access", headers=OPERATOR), 400)


def test_an_unexpected_failure_is_a_json_500_that_tells_nothing(client, monkeypatch):
    import web.api

    def broken(*_args, **_kwargs):
        raise RuntimeError("database password=hunter2 in a stack")

    monkeypatch.setattr(web.api, "current_access", broken)
    response = client.get("/v1/users/alice/access", headers=OPERATOR)
    assert_json_error(response, 500)
    assert "hunter2" not in response.get_data(as_text=True)


# ----- chunked transfer encoding, over a real HTTP server ------------------------------------


def chunks(data: bytes, size: int = 16 * KIB):
    """A generator body: requests sends it with Transfer-Encoding: chunked (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def purchase_webhook(padding: int) -> bytes:
    event = {"id": "evt-chunked", "type": "INITIAL_PURCHASE", "app_user_id": "a", "padding": "x" * padding}
    return json.dumps({"api_version": "1.0", "event": event}).encode()


def test_a_chunked_webhook_over_256_kib_is_413_and_nothing_is_stored(live_server, runtime):
    body = purchase_webhook(300 * KIB)
    response = requests.post(f"{live_server}/webhooks/revenuecat", data=chunks(body), headers=WEBHOOK, timeout=30)
    assert response.status_code == 413 and response.json()["error"] == "request_entity_too_large"
    assert inbox(runtime) == []


def test_a_chunked_webhook_of_exactly_256_kib_is_stored_whole(live_server, runtime):
    body = purchase_webhook(0)
    body = purchase_webhook(256 * KIB - len(body))
    assert len(body) == 256 * KIB
    response = requests.post(f"{live_server}/webhooks/revenuecat", data=chunks(body), headers=WEBHOOK, timeout=30)
    assert response.status_code == 200, response.text
    [row] = inbox(runtime)
    assert row.body == body and row.status == "received"


def test_a_chunked_token_request_is_read(live_server):
    body = json.dumps({"ttl_s": 3600}).encode()
    response = requests.post(f"{live_server}/v1/users/alice/token", data=chunks(body, 4), headers=OPERATOR, timeout=30)
    assert response.status_code == 201 and response.json()["expires_in"] == 3600
    bad = requests.post(
        f"{live_server}/v1/users/alice/token", data=chunks(b'{"ttl_s": 5}'), headers=OPERATOR, timeout=30
    )
    assert bad.status_code == 400 and "ttl_s" in bad.json()["message"]


def test_a_chunked_validation_is_read(live_server):
    body = json.dumps(android_payload("alice", "t", product_id="not_in_catalog")).encode()
    response = requests.post(f"{live_server}/v1/purchases/validate", data=chunks(body, 7), headers=OPERATOR, timeout=30)
    assert response.status_code == 422 and response.json()["reason"] == "unknown_product"
