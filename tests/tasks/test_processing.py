"""Processing stored webhooks by re-reading the provider (the simulator, over HTTP)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select

from persistence.models import AuditEntry, Grant, InboxEvent, Subscriber, UnknownProduct
from services.inbox import process_inbox_event
from tests.conftest import API_TOKEN, WEBHOOK_AUTH

URL = "/webhooks/revenuecat"


def intake(client, body: dict) -> int:
    response = client.post(URL, json=body, headers={"Authorization": WEBHOOK_AUTH})
    assert response.status_code == 200, response.json
    return response.json["inbox_id"]


def process(runtime, inbox_id: int, *, max_attempts: int | None = None) -> str:
    ctx = runtime.event_processing
    if max_attempts is not None:
        ctx = replace(ctx, max_attempts=max_attempts)
    return process_inbox_event(inbox_id, ctx).status


def access(client, app_user_id: str) -> dict:
    response = client.get(f"/v1/users/{app_user_id}/access", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200
    return {a["resource"]: a for a in response.json["access"]}


def count(runtime, model) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def row(runtime, inbox_id: int) -> InboxEvent:
    with runtime.session_factory() as session:
        return session.get(InboxEvent, inbox_id)


def test_purchase_webhook_grants_access_readable_over_http(client, runtime, simulator):
    body = simulator.state.purchase_subscription("alice", "premium_monthly")
    assert process(runtime, intake(client, body)) == "processed"
    got = access(client, "alice")["module:algebra"]
    assert got["mode"] == "full" and got["expires_at"].endswith("Z")
    assert got["source"]["transactions"] == [body["event"]["transaction_id"]]


def test_processing_twice_changes_nothing(client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    process(runtime, inbox_id)
    audit = count(runtime, AuditEntry)
    assert process(runtime, inbox_id) == "skipped"
    with runtime.session_factory() as session:  # force a second real run of the same event
        session.get(InboxEvent, inbox_id).status = "received"
        session.commit()
    assert process(runtime, inbox_id) == "processed"
    assert count(runtime, AuditEntry) == audit == 1 and count(runtime, Grant) == 1


def test_event_content_does_not_matter_only_the_provider_state(client, runtime, simulator):
    purchase = simulator.state.purchase_subscription("alice", "premium_monthly")
    refund = simulator.state.refund("alice", purchase["event"]["transaction_id"])
    # The refund is processed first, then the (older) purchase arrives late: still no access.
    process(runtime, intake(client, refund))
    process(runtime, intake(client, purchase))
    assert access(client, "alice") == {}


def test_transfer_moves_access_from_the_previous_owner_to_the_restoring_user(client, runtime, simulator):
    process(runtime, intake(client, simulator.state.purchase_non_renewing("first-user", "h01enb")))
    assert "course:H01ENB" in access(client, "first-user")
    transfer = simulator.state.transfer("first-user", "second-user")
    assert "app_user_id" not in transfer["event"]
    process(runtime, intake(client, transfer))
    assert access(client, "first-user") == {}
    assert "course:H01ENB" in access(client, "second-user")


def test_aliases_find_the_same_customer(client, runtime, simulator):
    simulator.state.alias("$RCAnonymousID:abc", "learner-42")
    body = simulator.state.purchase_subscription("learner-42", "premium_monthly")
    process(runtime, intake(client, body))
    for app_user_id in ["learner-42", "$RCAnonymousID:abc"]:
        assert "module:algebra" in access(client, app_user_id)


def test_unknown_product_is_recorded_and_alerted_not_dropped(client, runtime, simulator, sentry_events):
    process(runtime, intake(client, simulator.state.purchase_non_renewing("alice", "mystery_product")))
    with runtime.session_factory() as session:
        [unknown] = session.scalars(select(UnknownProduct)).all()
    assert unknown.product_id == "mystery_product" and unknown.last_customer_id == "alice"
    assert access(client, "alice") == {}
    [alert] = sentry_events.items("event")
    assert alert["fingerprint"] == ["unknown-product", "mystery_product"] and alert["level"] == "error"


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, None), (429, 7)])
def test_transient_provider_error_degrades_then_retries(client, runtime, simulator, status, retry_after):
    body = simulator.state.purchase_subscription("alice", "premium_monthly")
    inbox_id = intake(client, body)
    simulator.state.fail_next(1, status=status, retry_after_s=retry_after)
    result = process_inbox_event(inbox_id, runtime.event_processing)
    assert result.status == "retrying"
    assert result.retry_in_ms is not None and result.retry_in_ms >= (retry_after or 0) * 1000
    failed = row(runtime, inbox_id)
    assert failed.last_error is not None
    assert (failed.status, failed.attempts) == ("retrying", 1) and str(status) in failed.last_error
    assert failed.next_attempt_ms is not None and failed.error_kind == "transient"
    # Degraded mode: the event's own facts granted access, and the customer is dirty.
    assert "module:algebra" in access(client, "alice")
    with runtime.session_factory() as session:
        assert session.get(Subscriber, "alice").dirty is True
    if status == 429:  # the whole budget pauses for Retry-After, for every process
        assert 6 < runtime.budget.paused_for_s() <= 7
        runtime.budget.resume()
    assert process(runtime, inbox_id) == "processed"
    done = row(runtime, inbox_id)
    assert (done.status, done.attempts, done.last_error) == ("processed", 2, None)
    with runtime.session_factory() as session:
        assert session.get(Subscriber, "alice").dirty is False
    assert count(runtime, Grant) == 1


def test_provider_down_on_the_last_attempt_leaves_the_event_degraded(client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    simulator.state.fail_next(1, status=502)
    assert process(runtime, inbox_id, max_attempts=1) == "degraded"
    assert row(runtime, inbox_id).status == "degraded"


def test_provider_timeout_is_transient(client, settings, simulator):
    from services.wiring import Wiring

    slow = Wiring(settings.with_(provider_read_timeout_s=0.2))
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    simulator.state.latency_ms = 1000
    try:
        assert process(slow, inbox_id) == "retrying"
        assert "unreachable" in (row(slow, inbox_id).last_error or "")
    finally:
        simulator.state.latency_ms = 0
        slow.close()


def test_url_encoded_ids_reach_the_provider(client, runtime, simulator):
    odd = "$RCAnonymousID:weird id/with?chars"
    process(runtime, intake(client, simulator.state.purchase_subscription(odd, "premium_monthly")))
    with runtime.session_factory() as session:
        assert session.get(Subscriber, odd) is not None


def test_access_api_requires_the_bearer_token(client):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": API_TOKEN}):
        response = client.get("/v1/users/alice/access", headers=headers)
        assert response.status_code == 401 and "error" in response.json


def test_access_api_shape(client, runtime, simulator):
    process(runtime, intake(client, simulator.state.purchase_non_renewing("alice", "h01enb")))
    response = client.get("/v1/users/alice/access", headers={"Authorization": f"Bearer {API_TOKEN}"}).json
    assert set(response) == {"app_user_id", "as_of", "access"}
    assert response["access"] == [
        {
            "resource": "course:H01ENB",
            "mode": "paid",
            "expires_at": None,
            "source": {"transactions": response["access"][0]["source"]["transactions"]},
        }
    ]
