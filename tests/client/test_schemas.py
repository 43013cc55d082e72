"""Validation payloads against their schema (web/schemas.py): each malformed field named."""

from __future__ import annotations

import json

import pytest

from tests.client.support import android_payload, ios_payload
from web.payloads import InvalidPayload, parse_payload
from web.schemas import AccessQuery, TokenRequest, ValidationPayload


def problems(payload: object) -> dict[str, str]:
    with pytest.raises(InvalidPayload) as raised:
        parse_payload(ValidationPayload, payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return raised.value.problems


def test_both_platforms_parse():
    android = parse_payload(ValidationPayload, json.dumps(android_payload("alice", "t")).encode()).root
    ios = parse_payload(ValidationPayload, json.dumps(ios_payload("alice", "r")).encode()).root
    assert (android.platform, android.fetch_token, android.transaction_ms) == ("android", "t", 1703347200000)
    assert (ios.platform, ios.fetch_token) == ("ios", "r")
    numeric = parse_payload(ValidationPayload, json.dumps(android_payload("a", "t", transaction_date=5)).encode())
    assert numeric.root.transaction_ms == 5


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
        ({"app_user_id": 7}, "app_user_id"),
        ({"product_id": 12}, "product_id"),
        ({"purchase_id": None}, "purchase_id"),
        ({"status": "maybe"}, "status"),
        ({"status": "purchased\n"}, "status"),
        ({"transaction_date": "yesterday"}, "transaction_date"),
        ({"transaction_date": True}, "transaction_date"),
        ({"transaction_date": -1}, "transaction_date"),
        ({"transaction_date": 1.5}, "transaction_date"),
        ({"voice": ["Female"]}, "voice"),
        ({"course_code": "x" * 256}, "course_code"),
    ],
)
def test_malformed_payloads_name_the_field(change, field):
    assert field in problems({**android_payload("alice", "t"), **change})


def test_every_problem_is_reported_at_once_and_non_objects_are_refused():
    assert {"product_id", "purchase_id", "status", "app_user_id", "receipt_data"} <= set(problems({"platform": "ios"}))
    not_objects: list[object] = [None, [], "x", 3]
    for not_an_object in not_objects:
        assert set(problems(not_an_object)) <= {"body", "platform"}
    deep = b"[" * 1000 + b"]" * 1000
    assert "nested" in problems(deep)["body"] or "recursion" in problems(deep)["body"]
    assert "body" in problems(b"\xff\xfe not json")


def test_token_lifetimes_and_waits():
    assert parse_payload(TokenRequest, b'{"ttl_s": 900.0}').ttl_s == 900  # an integer to JSON
    for bad in (b'{"ttl_s": "60"}', b'{"ttl_s": true}', b'{"ttl_s": 9}', b'{"ttl_s": 3601}', b'{"ttl_s": 60.5}'):
        with pytest.raises(InvalidPayload):
            parse_payload(TokenRequest, bad)
    assert AccessQuery.model_validate({"wait": "2.5"}).wait == 2.5
    assert AccessQuery.model_validate({}).wait is None
    for wait in ("", "-1", "abc", "nan", "inf", " 5", "1_0", "0x10"):
        with pytest.raises(ValueError):
            AccessQuery.model_validate({"wait": wait})
