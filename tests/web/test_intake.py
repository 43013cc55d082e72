"""POST /webhooks/revenuecat: every bad-input case, duplicates, storage and broker failures."""

from __future__ import annotations

import json

import pytest
from flask import jsonify
from sqlalchemy import select

from config.settings import Settings
from persistence.models import InboxEvent
from tests.conftest import WEBHOOK_AUTH
from tests.support import answer, queued_messages
from web.app import create_app

AUTH = {"Authorization": WEBHOOK_AUTH}
URL = "/webhooks/revenuecat"


def purchase(event_id: str = "evt-1", **event) -> dict:
    return {
        "api_version": "1.0",
        "event": {"id": event_id, "type": "INITIAL_PURCHASE", "app_user_id": "alice", "event_timestamp_ms": 1, **event},
    }


def inbox(runtime) -> list[InboxEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(InboxEvent).order_by(InboxEvent.id)))


def queued(settings: Settings) -> int:
    return len(queued_messages(settings))


def test_stores_commits_and_enqueues_then_answers_200(client, runtime, settings):
    response = client.post(URL, json=purchase(), headers=AUTH)
    assert response.status_code == 200 and response.json["status"] == "received"
    [row] = inbox(runtime)
    assert (row.event_id, row.event_type, row.status, row.provider) == (
        "evt-1",
        "INITIAL_PURCHASE",
        "received",
        "revenuecat",
    )
    assert json.loads(row.body) == purchase()
    assert queued(settings) == 1
    # the answer, built by hand on the hot path, is what jsonify would have answered
    with client.application.app_context():
        expected = jsonify(status="received", duplicate=False, inbox_id=row.id)
    assert (response.get_data(), response.mimetype) == (expected.get_data(), expected.mimetype)


def test_duplicate_delivery_answers_200_and_enqueues_nothing(client, runtime, settings):
    assert client.post(URL, json=purchase(), headers=AUTH).status_code == 200
    second = client.post(URL, json=purchase(), headers=AUTH)
    assert second.status_code == 200 and second.json["duplicate"] is True
    assert len(inbox(runtime)) == 1 and queued(settings) == 1


@pytest.mark.parametrize("header", [None, "", "Bearer wrong", WEBHOOK_AUTH + "x", WEBHOOK_AUTH.lower()])
def test_bad_authorization_is_401_and_keeps_nothing(client, runtime, header):
    headers = {} if header is None else {"Authorization": header}
    response = client.post(URL, json=purchase(), headers=headers)
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
    assert inbox(runtime) == []


def test_empty_webhook_auth_setting_refuses_every_webhook(settings, runtime):
    client = create_app(settings.with_(revenuecat_webhook_auth="")).test_client()
    for headers in ({}, {"Authorization": ""}, AUTH):
        response = client.post(URL, json=purchase(), headers=headers)
        assert response.status_code == 503 and "REVENUECAT_WEBHOOK_AUTH" in answer(response)["message"]
    assert inbox(runtime) == []


def test_body_over_256_kib_is_413(client, runtime):
    body = json.dumps(purchase(padding="x" * (256 * 1024))).encode()
    response = client.post(URL, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert inbox(runtime) == []


def test_body_just_under_the_limit_is_accepted(client):
    body = purchase()
    body["event"]["padding"] = ""
    size = len(json.dumps(body).encode())
    body["event"]["padding"] = "x" * (256 * 1024 - size)
    assert len(json.dumps(body).encode()) == 256 * 1024
    assert client.post(URL, data=json.dumps(body), headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"api_version": "1.0"}', "no 'event'"),
        (b'{"event": {"type": "RENEWAL"}}', "event.id"),
        (b'{"event": {"id": "e1"}}', "event.type"),
        (b'{"event": {"id": 12, "type": "RENEWAL"}}', "event.id"),
        # valid JSON that no database can store as text: kept as malformed, not a 500 or 503
        (b'{"event": {"id": "e\\u0000", "type": "RENEWAL"}}', "NUL"),
        (b'{"event": {"id": "e1", "type": "RENEWAL\\ud800"}}', "surrogate"),
    ],
)
def test_malformed_but_authenticated_is_400_and_kept_for_inspection(client, runtime, settings, raw, reason):
    response = client.post(URL, data=raw, headers=AUTH)
    assert response.status_code == 400 and reason in response.json["message"]
    [row] = inbox(runtime)
    assert row.status == "malformed" and row.body == raw and reason in (row.last_error or "")
    assert queued(settings) == 0


def test_unknown_event_type_is_stored_ignored_and_answered_200(client, runtime, settings):
    response = client.post(URL, json=purchase(type="SOMETHING_NEW"), headers=AUTH)
    assert response.status_code == 200 and response.json["status"] == "ignored"
    [row] = inbox(runtime)
    assert row.status == "ignored" and queued(settings) == 0


def test_database_unavailable_is_503_so_revenuecat_retries(settings, runtime):
    down = settings.with_(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = create_app(down).test_client().post(URL, json=purchase(), headers=AUTH)
    assert response.status_code == 503 and answer(response)["error"] == "storage_unavailable"


def test_broker_unavailable_still_answers_200_and_the_row_waits(settings, runtime):
    from tasks.celery_app import create_celery

    dead_broker = create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    client = create_app(settings, celery=dead_broker).test_client()
    response = client.post(URL, json=purchase(), headers=AUTH)
    assert response.status_code == 200
    [row] = inbox(runtime)
    assert row.status == "received" and queued(settings) == 0


def test_a_pooled_connection_lost_under_the_intake_is_replaced_and_the_webhook_stored(client, runtime, settings):
    """The intake's engine does not ping on checkout: a connection the server dropped (a
    restart) fails its first statement, SQLAlchemy discards it, and the webhook is stored on a
    fresh one, so the sender sees 200, not 503."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("a server-side disconnect needs PostgreSQL")
    assert client.post(URL, json=purchase("evt-1"), headers=AUTH).status_code == 200
    with runtime.intake_db.connect() as conn:  # the one pooled connection the intake has used
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with runtime.db.connect() as admin:
        admin.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,))
    response = client.post(URL, json=purchase("evt-2"), headers=AUTH)
    assert response.status_code == 200 and response.json["status"] == "received"
    assert [row.event_id for row in inbox(runtime)] == ["evt-1", "evt-2"]
