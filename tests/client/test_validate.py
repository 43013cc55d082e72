"""POST /v1/purchases/validate against the simulator's POST /v1/receipts, over HTTP."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from persistence.models import AuditEntry, Grant, LedgerTransaction
from tests.client.support import OPERATOR, access, android_payload, count, ios_payload, provider_requests

URL = "/v1/purchases/validate"


def validate(client, payload, headers=None):
    return client.post(URL, json=payload, headers=headers or OPERATOR)


def test_android_purchase_is_acknowledged_once_access_is_granted(client, runtime, simulator):
    simulator.state.register_store_purchase(
        "play-token-1", platform="android", product_id="h01enb", transaction_id="GPA.1234-5678-9012"
    )
    response = validate(client, android_payload("alice", "play-token-1"))
    assert response.status_code == 200, response.json
    answer = response.json
    assert (answer["status"], answer["acknowledged"]) == ("success", True) and answer["message"]
    course = answer["course"]
    assert (
        course["course_code"] == "H01ENB"
        and course["title"] == "Hypnosis course H01ENB"
        and course["voice"] == "Female"
    )
    assert course["purchased_at"].endswith("Z")
    assert answer["transaction_id"] == "GPA.1234-5678-9012"
    # Granted before the answer, and readable by the app at once.
    assert access(client, "alice")["course:H01ENB"]["source"]["transactions"] == ["GPA.1234-5678-9012"]
    assert ("POST", "/v1/receipts") in {(m, p) for m, p, _ in simulator.state.request_log}
    with runtime.session_factory() as session:
        [entry] = session.scalars(select(AuditEntry)).all()
    assert (entry.cause_kind, entry.cause_ref) == ("request", "validate:android:GPA.1234-5678-9012")


def test_ios_purchase_with_the_ios_store_product_id(client, simulator):
    simulator.state.register_store_purchase(
        "receipt-b64", platform="ios", product_id="me.hypnoelp.app.h01enb", transaction_id="1000000123456789"
    )
    response = validate(client, ios_payload("bob", "receipt-b64"))
    assert response.status_code == 200 and response.json["acknowledged"] is True
    assert response.json["product"] == "h01enb" and "course:H01ENB" in access(client, "bob")


def test_duplicate_validation_answers_the_same_success_without_a_second_credit(client, runtime, simulator):
    simulator.state.register_store_purchase(
        "pack-token", platform="android", product_id="geometry_pack_30", transaction_id="GPA.7"
    )
    payload = android_payload(
        "alice", "pack-token", product_id="geometry_pack_30", purchase_id="GPA.7", course_code=None
    )
    first = validate(client, payload)
    expiry = access(client, "alice")["module:geometry"]["expires_at"]
    second = validate(client, payload)
    assert first.status_code == second.status_code == 200
    assert first.json == second.json
    assert access(client, "alice")["module:geometry"]["expires_at"] == expiry  # 30 days, credited once
    assert count(runtime, AuditEntry) == 1 and count(runtime, LedgerTransaction) == 1


def test_invalid_receipt_is_not_acknowledged_and_grants_nothing(client, runtime, simulator):
    response = validate(client, android_payload("alice", "forged-token"))
    assert response.status_code == 422
    assert response.json == {
        "status": "failed",
        "acknowledged": False,
        "reason": "invalid_receipt",
        "error": "invalid_receipt",
        "message": "The receipt is not valid.",
        "retryable": False,
    }
    assert access(client, "alice") == {} and count(runtime, Grant) == 0


def test_receipt_for_another_product_is_refused(client, runtime, simulator):
    simulator.state.register_store_purchase("tok", platform="android", product_id="h01enb")
    response = validate(client, android_payload("alice", "tok", product_id="geometry_pack_30"))
    assert response.status_code == 422 and response.json["reason"] == "invalid_receipt"
    assert count(runtime, Grant) == 0


def test_unknown_product_is_refused_without_asking_the_provider(client, simulator):
    response = validate(client, android_payload("alice", "tok", product_id="not_in_catalog"))
    assert response.status_code == 422 and response.json["reason"] == "unknown_product"
    assert provider_requests(simulator) == 0


@pytest.mark.parametrize("status", ["PurchaseStatus.pending", "SKPaymentTransactionStateDeferred"])
def test_pending_purchase_reported_by_the_app_grants_nothing(client, runtime, simulator, status):
    response = validate(client, ios_payload("alice", "receipt", status=status))
    assert response.status_code == 202
    assert (
        response.json["status"] == "pending"
        and response.json["acknowledged"] is False
        and response.json["retryable"] is True
    )
    assert provider_requests(simulator) == 0 and count(runtime, Grant) == 0


def test_pending_at_the_store_then_completed(client, runtime, simulator):
    simulator.state.register_store_purchase("slow-token", platform="android", product_id="h01enb", status="pending")
    pending = validate(client, android_payload("alice", "slow-token"))
    assert pending.status_code == 202 and pending.json["reason"] == "purchase_pending"
    assert access(client, "alice") == {}
    simulator.state.register_store_purchase("slow-token", platform="android", product_id="h01enb", status="purchased")
    done = validate(client, android_payload("alice", "slow-token"))
    assert done.status_code == 200 and done.json["acknowledged"] is True
    assert "course:H01ENB" in access(client, "alice")


def test_failed_or_canceled_purchase_is_refused(client, runtime, simulator):
    response = validate(client, android_payload("alice", "tok", status="PurchaseStatus.canceled"))
    assert response.status_code == 422 and response.json["reason"] == "purchase_not_completed"
    assert provider_requests(simulator) == 0


def test_sandbox_purchase_grants_nothing_unless_the_operator_opts_in(client, runtime, simulator):
    simulator.state.register_store_purchase("sandbox-token", platform="android", product_id="h01enb", sandbox=True)
    response = validate(client, android_payload("alice", "sandbox-token"))
    assert response.status_code == 422 and response.json["reason"] == "sandbox_purchase"
    assert count(runtime, Grant) == 0


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, 7), (429, 4)])
def test_provider_trouble_is_503_retryable_with_retry_after(client, runtime, simulator, status, retry_after):
    simulator.state.register_store_purchase("tok", platform="android", product_id="h01enb")
    simulator.state.fail_next(1, status=status, retry_after_s=retry_after)
    response = validate(client, android_payload("alice", "tok"))
    assert response.status_code == 503
    assert response.json["acknowledged"] is False and response.json["retryable"] is True
    assert int(response.headers["Retry-After"]) >= (retry_after or 1)
    assert count(runtime, Grant) == 0
    runtime.budget.resume()  # a 429 paused the shared budget
    assert validate(client, android_payload("alice", "tok")).status_code == 200


def test_budget_exhausted_is_503_and_the_provider_is_not_called(client, runtime, simulator):
    runtime.budget.pause(30)
    response = validate(client, android_payload("alice", "tok"))
    assert response.status_code == 503 and 25 <= int(response.headers["Retry-After"]) <= 30
    assert provider_requests(simulator) == 0
    runtime.budget.resume()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"platform": "android"}', b"null"],
)
def test_malformed_payloads_are_400_with_the_problems(client, body):
    response = client.post(URL, data=body, headers={**OPERATOR, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json["acknowledged"] is False and response.json["reason"] == "invalid_request"


def test_a_restore_by_validation_moves_the_purchase_and_revokes_the_previous_owner(client, runtime, simulator):
    simulator.state.register_store_purchase("shared-device-token", platform="ios", product_id="me.hypnoelp.app.h01enb")
    assert validate(client, ios_payload("first-user", "shared-device-token")).status_code == 200
    assert "course:H01ENB" in access(client, "first-user")
    # Another user signs in on the same device and the app validates the same receipt: the
    # provider transfers it (its TRANSFER webhook is never processed here).
    response = validate(client, ios_payload("second-user", "shared-device-token"))
    assert response.status_code == 200 and response.json["acknowledged"] is True
    assert "course:H01ENB" in access(client, "second-user")
    assert access(client, "first-user") == {}
