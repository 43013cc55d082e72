"""The pure decisions of the client flows: payloads, statuses, refusals, grants, tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.access import Access
from engine.catalog import load_catalog
from engine.client_flows import (
    InvalidRequest,
    Refusal,
    TokenRefused,
    ValidationRequest,
    access_entries,
    access_version,
    app_user_id_problem,
    client_status_refusal,
    grants_purchase,
    http_status_of,
    mint_user_token,
    moved_from,
    normalise_status,
    parse_validation,
    parse_wait,
    receipt_body,
    receipt_refusal,
    verify_user_token,
)
from tests.client.support import android_payload, ios_payload

CATALOG = load_catalog(Path(__file__).resolve().parents[1] / "fixtures" / "catalog.toml")
SECRET = "s" * 32


def test_android_and_ios_payloads_normalise_to_the_same_catalog_product():
    android = parse_validation(android_payload("alice", "play-token"), CATALOG)
    ios = parse_validation(ios_payload("alice", "base64-receipt"), CATALOG)
    assert isinstance(android, ValidationRequest) and isinstance(ios, ValidationRequest)
    assert android.product is ios.product and android.product.name == "h01enb"
    assert (android.platform, android.fetch_token, android.store_product_id) == ("android", "play-token", "h01enb")
    assert (ios.platform, ios.fetch_token, ios.store_product_id) == ("ios", "base64-receipt", "me.hypnoelp.app.h01enb")
    assert android.transaction_ms == 1703347200000 and android.status == "completed"
    assert receipt_body(android) == {"app_user_id": "alice", "fetch_token": "play-token", "product_id": "h01enb"}


def test_unknown_product_is_a_refusal_not_a_bad_request():
    refusal = parse_validation(android_payload("alice", "t", product_id="nope"), CATALOG)
    assert isinstance(refusal, Refusal) and refusal.reason == "unknown_product" and http_status_of(refusal) == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"platform": "windows"}, "platform"),
        ({"platform": "Android"}, "platform"),
        ({"purchase_token": None}, "purchase_token"),
        ({"purchase_token": ""}, "purchase_token"),
        ({"receipt_data": 5}, "receipt_data"),
        ({"app_user_id": ""}, "app_user_id"),
        ({"app_user_id": "a" * 256}, "app_user_id"),
        ({"app_user_id": "bad\x00id"}, "app_user_id"),
        ({"product_id": 12}, "product_id"),
        ({"purchase_id": None}, "purchase_id"),
        ({"status": "maybe"}, "status"),
        ({"status": "purchased\n"}, "status"),
        ({"transaction_date": "yesterday"}, "transaction_date"),
        ({"transaction_date": True}, "transaction_date"),
        ({"transaction_date": -1}, "transaction_date"),
        ({"voice": ["Female"]}, "voice"),
    ],
)
def test_malformed_payloads_name_the_field(change, field):
    with pytest.raises(InvalidRequest) as raised:
        parse_validation({**android_payload("alice", "t"), **change}, CATALOG)
    assert field in raised.value.problems


def test_every_problem_is_reported_at_once_and_non_objects_are_refused():
    with pytest.raises(InvalidRequest) as raised:
        parse_validation({"platform": "ios"}, CATALOG)
    assert {"product_id", "purchase_id", "status", "app_user_id", "receipt_data"} <= set(raised.value.problems)
    for body in (None, [], "x", 3):
        with pytest.raises(InvalidRequest):
            parse_validation(body, CATALOG)


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
    pending = parse_validation(android_payload("a", "t", status="PurchaseStatus.pending"), CATALOG)
    deferred = parse_validation(ios_payload("a", "r", status="SKPaymentTransactionStateDeferred"), CATALOG)
    failed = parse_validation(android_payload("a", "t", status="PurchaseStatus.error"), CATALOG)
    for req in (pending, deferred):
        refusal = client_status_refusal(req)
        assert refusal.pending and refusal.reason == "purchase_pending" and http_status_of(refusal) == 202
    refusal = client_status_refusal(failed)
    assert refusal.reason == "purchase_not_completed" and not refusal.retryable and http_status_of(refusal) == 422
    assert client_status_refusal(parse_validation(android_payload("a", "t"), CATALOG)) is None


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
    granted = [Access("course:H01ENB", "paid", None, ("tx-1",))]
    assert grants_purchase(granted, product, "tx-1", now_ms=0)
    assert not grants_purchase(granted, product, "tx-2", now_ms=0)
    assert not grants_purchase([], product, "tx-1", now_ms=0)
    pack = CATALOG.product_named("geometry_pack")
    assert not grants_purchase([Access("module:geometry", "basic", 10, ("tx-1",))], pack, "tx-1", now_ms=10)


def test_previous_owners_are_those_whose_transactions_moved_here():
    before = {"t1": "first", "t2": None, "t3": "bob", "t4": "carol"}
    after = {"t1": "bob", "t2": "bob", "t3": "bob", "t4": "carol"}
    assert moved_from(before, after, "bob") == ["first"]
    assert moved_from({}, {}, "bob") == []


def test_wait_parameter():
    assert parse_wait(None) == 0 and parse_wait("0") == 0 and parse_wait("2.5") == 2.5
    assert parse_wait("31") == 30 and parse_wait("1e9") == 30
    for bad in ("", "-1", "abc", "nan", "inf", " 5", "1_0"):
        with pytest.raises(InvalidRequest):
            parse_wait(bad)


def test_app_user_ids():
    assert app_user_id_problem("$RCAnonymousID:abc") is None
    assert app_user_id_problem("weird id/with?chars") is None
    for bad in ("", None, 7, "x" * 256, "tab\there", "nul\x00"):
        assert app_user_id_problem(bad) is not None


def test_access_version_follows_the_visible_access_only():
    one = access_entries([Access("course:A", "paid", None, ("t1",))])
    same = access_entries([Access("course:A", "paid", None, ("t1",))])
    longer = access_entries([Access("course:A", "paid", 5_000, ("t1",))])
    assert access_version(one) == access_version(same) != access_version(longer) != access_version([])


def test_user_tokens_carry_one_user_and_expire():
    token = mint_user_token(SECRET, "alice", now_s=1000, ttl_s=60)
    assert token.startswith("ut1.")
    assert verify_user_token(SECRET, token, now_s=1059) == "alice"
    with pytest.raises(TokenRefused) as expired:
        verify_user_token(SECRET, token, now_s=1060)
    assert expired.value.reason == "token_expired"
    with pytest.raises(TokenRefused) as wrong_secret:
        verify_user_token("t" * 32, token, now_s=1000)
    assert wrong_secret.value.reason == "invalid_token"
    with pytest.raises(TokenRefused) as unset:
        verify_user_token("", token, now_s=1000)
    assert unset.value.reason == "user_tokens_not_configured"


def test_a_tampered_user_token_is_refused():
    token = mint_user_token(SECRET, "alice", now_s=1000, ttl_s=60)
    other = mint_user_token(SECRET, "mallory", now_s=1000, ttl_s=60)
    payload_of_other = other.split(".")[1]
    forged = f"ut1.{payload_of_other}.{token.rsplit('.', 1)[1]}"  # mallory's claims, alice's signature
    for bad in (forged, token + "x", "ut1.", "ut1.abc", "ut1..sig", token.replace("ut1.", "ut2.")):
        with pytest.raises(TokenRefused):
            verify_user_token(SECRET, bad, now_s=1000)


def test_minting_needs_a_long_enough_secret():
    with pytest.raises(ValueError):
        mint_user_token("short", "alice", now_s=0)
