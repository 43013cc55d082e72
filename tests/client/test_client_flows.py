"""The pure decisions of the client flows (engine/client_flows.py): statuses, product lookup,
refusals, grants, restores. Payload shapes are web/schemas.py's (tests/client/test_schemas.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.access import Access
from engine.catalog import load_catalog
from engine.client_flows import (
    Refusal,
    ValidationRequest,
    client_status_refusal,
    grants_purchase,
    moved_from,
    normalise_status,
    receipt_body,
    receipt_refusal,
    validation_request,
)
from tests.client.support import android_payload, ios_payload
from web.answers import refusal_status
from web.schemas import ValidationPayload

CATALOG = load_catalog(Path(__file__).resolve().parents[1] / "fixtures" / "catalog.toml")


def parse_validation(payload: dict) -> ValidationRequest | Refusal:
    """A payload through its schema, then the engine's view of it."""
    p = ValidationPayload.model_validate(payload).root
    return validation_request(
        platform=p.platform,
        app_user_id=p.app_user_id,
        product_id=p.product_id,
        purchase_id=p.purchase_id,
        fetch_token=p.fetch_token,
        status=p.status,
        transaction_ms=p.transaction_ms,
        course_code=p.course_code,
        voice=p.voice,
        catalog=CATALOG,
    )


def test_android_and_ios_payloads_normalise_to_the_same_catalog_product():
    android = parse_validation(android_payload("alice", "play-token"))
    ios = parse_validation(ios_payload("alice", "base64-receipt"))
    assert isinstance(android, ValidationRequest) and isinstance(ios, ValidationRequest)
    assert android.product is ios.product and android.product.name == "h01enb"
    assert (android.platform, android.fetch_token, android.store_product_id) == ("android", "play-token", "h01enb")
    assert (ios.platform, ios.fetch_token, ios.store_product_id) == ("ios", "base64-receipt", "me.hypnoelp.app.h01enb")
    assert android.transaction_ms == 1703347200000 and android.status == "completed"
    assert receipt_body(android) == {"app_user_id": "alice", "fetch_token": "play-token", "product_id": "h01enb"}


def test_unknown_product_is_a_refusal_not_a_bad_request():
    refusal = parse_validation(android_payload("alice", "t", product_id="nope"))
    assert isinstance(refusal, Refusal) and refusal.reason == "unknown_product" and refusal_status(refusal) == 422


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("PurchaseStatus.purchased", "completed"),
        ("PurchaseStatus.restored", "completed"),
        ("purchased", "completed"),
        ("PURCHASED", "completed"),
        ("PurchaseStatus.pending", "pending"),
        ("PurchaseState.PENDING", "pending"),  # Play Billing
        ("SKPaymentTransactionStateDeferred", "pending"),  # iOS Ask to Buy
        ("deferred", "pending"),
        ("PurchaseStatus.error", "not_completed"),
        ("PurchaseStatus.canceled", "not_completed"),
        ("Cancelled", "not_completed"),
    ],
)
def test_statuses_as_the_apps_report_them(status, kind):
    assert normalise_status(status) == kind


def test_pending_and_failed_client_statuses_are_answered_without_the_provider():
    pending = parse_validation(android_payload("a", "t", status="PurchaseStatus.pending"))
    deferred = parse_validation(ios_payload("a", "r", status="SKPaymentTransactionStateDeferred"))
    failed = parse_validation(android_payload("a", "t", status="PurchaseStatus.error"))
    completed = parse_validation(android_payload("a", "t"))
    assert isinstance(pending, ValidationRequest) and isinstance(deferred, ValidationRequest)
    assert isinstance(failed, ValidationRequest) and isinstance(completed, ValidationRequest)
    for req in (pending, deferred):
        refusal = client_status_refusal(req)
        assert refusal is not None
        assert refusal.pending and refusal.reason == "purchase_pending" and refusal_status(refusal) == 202
    refusal = client_status_refusal(failed)
    assert refusal is not None
    assert refusal.reason == "purchase_not_completed" and not refusal.retryable and refusal_status(refusal) == 422
    assert client_status_refusal(completed) is None


@pytest.mark.parametrize(
    ("status", "text", "reason", "retryable", "pending"),
    [
        (
            400,
            'provider refused POST /v1/receipts: 400 {"code": 7103, "message": "The receipt is not valid."}',
            "invalid_receipt",
            False,
            False,
        ),
        (
            400,
            '400 {"code": 7226, "message": "The purchase is pending: the store has not completed the payment yet."}',
            "purchase_pending",
            True,
            True,
        ),
        (
            400,
            '{"code": 7102, "message": "The receipt is already in use by another subscriber."}',
            "receipt_in_use",
            False,
            False,
        ),
        (400, '{"code": 7101, "message": "There was a problem with the App Store."}', "store_problem", True, False),
        (400, '{"code": 7999, "message": "Something new"}', "provider_refused", False, False),
        (404, "not json at all", "provider_refused", False, False),
        (401, '{"message": "Invalid API key"}', "provider_rejected_credentials", True, False),
    ],
)
def test_provider_refusals_become_reasons(status, text, reason, retryable, pending):
    refusal = receipt_refusal(status, text)
    assert (refusal.reason, refusal.retryable, refusal.pending) == (reason, retryable, pending)
    assert refusal.message


def test_a_purchase_counts_as_granted_only_when_each_of_its_accesses_comes_from_it():
    product = CATALOG.product_named("h01enb")
    assert product is not None
    granted = [Access("course:H01ENB", "paid", None, ("tx-1",))]
    assert grants_purchase(granted, product, "tx-1", now_ms=0)
    assert not grants_purchase(granted, product, "tx-2", now_ms=0)
    assert not grants_purchase([], product, "tx-1", now_ms=0)
    pack = CATALOG.product_named("geometry_pack")
    assert pack is not None
    assert not grants_purchase([Access("module:geometry", "basic", 10, ("tx-1",))], pack, "tx-1", now_ms=10)


def test_previous_owners_are_those_whose_transactions_moved_here():
    before = {"t1": "first", "t2": None, "t3": "bob", "t4": "carol"}
    after = {"t1": "bob", "t2": "bob", "t3": "bob", "t4": "carol"}
    assert moved_from(before, after, "bob") == ["first"]
    assert moved_from({}, {}, "bob") == []


def test_a_providers_text_never_becomes_the_apps_message():
    text = 'provider refused POST /v1/receipts: 400 {"code": 7999, "message": "<html>sk_live_x at /v1/receipts</html>"}'
    refusal = receipt_refusal(400, text)
    assert refusal.reason == "provider_refused" and "7999" in refusal.message
    assert "html" not in refusal.message and "sk_live" not in refusal.message and "/v1/" not in refusal.message
    known = receipt_refusal(400, '{"code": 7103, "message": "Receipt 123 of user bob is not valid"}')
    assert known.reason == "invalid_receipt" and "bob" not in known.message
