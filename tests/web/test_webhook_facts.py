"""What a webhook's own facts may do in degraded mode (provider down), end to end over HTTP:
an event states only the identities it names, and its time never runs past its receipt."""

from __future__ import annotations

import json
from dataclasses import replace

from persistence.models import Identity
from services.inbox import process_inbox_event
from tests.client.support import OPERATOR, WEBHOOK, access
from tests.conftest import FIXTURES

YEAR_4466_MS = 78789789798798  # the published TRANSFER sample's event_timestamp_ms


def deliver(client, body: dict) -> int:
    response = client.post("/webhooks/revenuecat", json=body, headers=WEBHOOK)
    assert response.status_code == 200, response.json
    return response.json["inbox_id"]


def process_while_the_provider_is_down(runtime, simulator, inbox_id: int) -> None:
    simulator.state.down = True
    try:
        result = process_inbox_event(inbox_id, replace(runtime.event_processing, max_attempts=1))
    finally:
        simulator.state.down = False
    assert result.status == "degraded"


def test_an_event_dated_far_ahead_never_outranks_a_later_snapshot(client, runtime, simulator):
    body = simulator.state.purchase_subscription("alice", "premium_monthly")
    body["event"]["event_timestamp_ms"] = YEAR_4466_MS
    process_while_the_provider_is_down(runtime, simulator, deliver(client, body))
    assert "module:algebra" in access(client, "alice")  # the event's own facts, meanwhile
    simulator.state.expire("alice", "premium_monthly")  # the provider's truth, read later
    assert client.post("/v1/users/alice/sync", headers=OPERATOR).status_code == 200
    assert access(client, "alice") == {}


def test_an_event_without_original_app_user_id_leaves_the_known_identity(client, runtime, simulator):
    anonymous, user = "$RCAnonymousID:0f1e2d", "41234567890"
    simulator.state.purchase_non_renewing(anonymous, "h01enb")
    simulator.state.alias(anonymous, user)
    assert client.post(f"/v1/users/{user}/sync", headers=OPERATOR).status_code == 200
    grant = json.loads((FIXTURES / "revenuecat" / "sample-event-temporary-entitlement-grant.json").read_text())
    assert grant["event"]["app_user_id"] == user and "original_app_user_id" not in grant["event"]
    process_while_the_provider_is_down(runtime, simulator, deliver(client, grant))
    with runtime.session_factory() as session:
        assert session.get(Identity, user).customer_id == anonymous
    assert "course:H01ENB" in access(client, user)
