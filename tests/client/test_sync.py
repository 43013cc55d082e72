"""POST /v1/users/<id>/sync: sync with the provider, restore, per-user limit."""

from __future__ import annotations

import threading

import redis as redis_lib
from sqlalchemy import select

from adapters.embedded_redis import redis_url
from persistence.models import AuditEntry, Subscriber
from tests.client.support import OPERATOR, access, provider_requests
from web.app import create_app


def sync(client, app_user_id: str, headers=None):
    return client.post(f"/v1/users/{app_user_id}/sync", headers=headers or OPERATOR)


def forget_last_sync(settings) -> None:
    client = redis_lib.Redis.from_url(redis_url(settings))
    for key in client.scan_iter("sync:*"):
        client.delete(key)


def test_a_purchase_whose_webhook_never_arrived_is_granted_by_sync(client, runtime, simulator):
    simulator.state.purchase_subscription("alice", "premium_monthly")  # webhook lost
    assert access(client, "alice") == {}
    response = sync(client, "alice")
    assert response.status_code == 200
    answer = response.json
    assert answer["app_user_id"] == "alice" and answer["reused"] is False
    assert [a["resource"] for a in answer["access"]] == ["module:algebra"]
    assert answer["changes"] == [
        {
            "action": "grant",
            "resource": "module:algebra",
            "before": None,
            "after": {"mode": "full", "expires_at": answer["access"][0]["expires_at"]},
        }
    ]
    with runtime.session_factory() as session:
        assert session.scalars(select(AuditEntry.cause_kind)).all() == ["request"]


def test_repeated_syncs_within_seconds_reuse_the_last_answer(client, settings, runtime, simulator):
    simulator.state.purchase_non_renewing("alice", "h01enb")
    first = sync(client, "alice").json
    reads = provider_requests(simulator, "GET")
    # Another web process (another app on the same Redis) reuses it too.
    other = create_app(settings).test_client()
    for c in (client, other):
        again = sync(c, "alice").json
        assert (
            again["reused"] is True
            and again["changes"] == first["changes"]
            and again["synced_at"] == first["synced_at"]
        )
    assert provider_requests(simulator, "GET") == reads
    forget_last_sync(settings)  # the window has passed
    later = sync(client, "alice").json
    assert later["reused"] is False and later["changes"] == []
    assert provider_requests(simulator, "GET") == reads + 1


def test_concurrent_syncs_of_one_user_read_the_provider_once(client, app, runtime, simulator):
    simulator.state.purchase_non_renewing("alice", "h01enb")
    simulator.state.latency_ms = 300
    answers: list[dict] = []

    def call() -> None:
        answers.append(sync(app.test_client(), "alice").json)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    simulator.state.latency_ms = 0
    assert sorted(a["reused"] for a in answers) == [False, True, True, True]
    assert provider_requests(simulator, "GET") == 1


def test_restore_revokes_the_purchase_from_the_previous_owner(client, runtime, simulator):
    simulator.state.register_store_purchase("device-receipt", platform="ios", product_id="me.hypnoelp.app.h01enb")
    simulator.state.receipt("first-user", "ios", "device-receipt")
    sync(client, "first-user")
    assert "course:H01ENB" in access(client, "first-user")
    # The app of the second user restores purchases through the SDK: the provider moves the
    # purchase and sends TRANSFER, which is lost. The app then asks us to sync.
    result = simulator.state.receipt("second-user", "ios", "device-receipt")
    assert [e["event"]["type"] for e in result.events] == ["TRANSFER"]
    response = sync(client, "second-user")
    assert response.status_code == 200
    assert response.json["previous_owners_reconciled"] == 1
    assert [c["action"] for c in response.json["changes"]] == ["grant"]
    assert "course:H01ENB" in access(client, "second-user")
    assert access(client, "first-user") == {}


def test_restore_from_an_anonymous_id_merges_without_revoking(client, runtime, simulator):
    anonymous = "$RCAnonymousID:0123abcd"
    simulator.state.register_store_purchase("anon-receipt", platform="ios", product_id="me.hypnoelp.app.h01enb")
    simulator.state.receipt(anonymous, "ios", "anon-receipt")
    simulator.state.receipt("learner", "ios", "anon-receipt")  # aliased, no TRANSFER
    response = sync(client, "learner")
    assert response.json["previous_owners_reconciled"] == 0
    assert "course:H01ENB" in access(client, "learner") and "course:H01ENB" in access(client, anonymous)


def test_provider_down_is_503_with_retry_after_and_the_user_is_left_dirty(client, runtime, simulator):
    simulator.state.fail_next(1, status=503, retry_after_s=9)
    response = sync(client, "alice")
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 9
    assert response.json["error"] == "provider_unavailable"
    with runtime.session_factory() as session:
        row = session.get(Subscriber, "alice")
    assert row.dirty is True  # the sweep reads it first
    assert sync(client, "alice").status_code == 200  # nothing was cached for the failure


def test_sync_draws_on_the_budget_before_the_sweep(client, runtime, simulator):
    # The sweep takes what the pace lets it have now, short of the headroom kept for others.
    taken = 0
    while runtime.budget.try_take("sweep") == 0.0 and taken < 100:
        taken += 1
    assert 1 <= taken < 100
    assert runtime.budget.try_take("sweep") > 0  # the sweep must wait now...
    assert sync(client, "alice").status_code == 200  # ...but a client sync still goes through


def test_invalid_user_id_is_400(client):
    response = client.post("/v1/users/bad%01id/sync", headers=OPERATOR)
    assert response.status_code == 400 and "app_user_id" in response.json["message"]
