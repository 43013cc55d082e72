"""The v1 parser (engine.revenuecat) on bodies the published schema allows and on bad ones.

Every body gives facts or a TerminalError naming the field at fault: UnreadableSubscriber for
``GET /v1/subscribers``, MalformedEvent for webhooks (reference/revenuecat.md §1, §3).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.errors import TerminalError
from engine.revenuecat import MalformedEvent, UnreadableSubscriber, parse_event, parse_subscriber

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "revenuecat"
SPEC_EXAMPLE = json.loads((FIXTURES / "subscriber-spec-example.json").read_text())
REQUEST_MS = 1564162810884
YEAR_4466_MS = 78789789798798  # the TRANSFER sample's event_timestamp_ms


def subscriber_with(**changes) -> dict:
    """The spec example with fields set by path: ``{"subscriber.subscriptions.annual.store": 5}``."""
    body = copy.deepcopy(SPEC_EXAMPLE)
    for path, value in changes.items():
        *parents, last = path.split("/")
        node = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return body


def annual(snapshot):
    [obs] = [o for o in snapshot.observations if o.product_id == "annual"]
    return obs


# ----- subscriber bodies the schema allows ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected_ms"),
    [
        ("subscriber/subscriptions/annual/expires_date", "2019-08-14t21:07:40z", 1565816860000),  # RFC 3339 lower case
        ("subscriber/subscriptions/annual/expires_date", "2016-12-31T23:59:60Z", 1483228800000),  # leap second
        ("subscriber/subscriptions/annual/expires_date", "2019-08-14T23:07:40+02:00", 1565816860000),
        ("subscriber/subscriptions/annual/expires_date", "2019-08-14T21:07:40.123456Z", 1565816860123),
        ("subscriber/subscriptions/annual/expires_date", "2019-08-14 21:07:40Z", 1565816860000),
        ("subscriber/subscriptions/annual/expires_date", "1565816860000", 1565816860000),
        ("subscriber/subscriptions/annual/expires_date", "4466-09-01T00:00:00Z", 78787209600000),
    ],
)
def test_date_times_the_schema_allows_are_read(path, value, expected_ms):
    assert annual(parse_subscriber(subscriber_with(**{path: value}))).expires_ms == expected_ms


def test_an_empty_request_date_is_read_from_request_date_ms():
    snapshot = parse_subscriber(subscriber_with(request_date=""))
    assert snapshot.request_ms == REQUEST_MS
    without_ms = subscriber_with(request_date="2019-07-26T17:40:10z")
    del without_ms["request_date_ms"]
    assert parse_subscriber(without_ms).request_ms == 1564162810000


def test_null_collections_and_numeric_transaction_ids_are_read():
    body = subscriber_with(
        **{"subscriber/non_subscriptions": None, "subscriber/entitlements": None, "subscriber/subscriptions/annual": {}}
    )
    snapshot = parse_subscriber(body)
    assert {o.product_id for o in snapshot.observations} == {"annual", "onemonth", "rc_promo_pro_cat_monthly"}
    monthly = next(o for o in snapshot.observations if o.product_id == "onemonth")
    assert monthly.transaction_id == "1000000652379790"  # a number in the spec's example


# ----- subscriber bodies that cannot be used: one clear TerminalError ------------------------

BAD_SUBSCRIBER_FIELDS = [
    ("subscriber/subscriptions/annual/expires_date", "next tuesday", "expires_date"),
    ("subscriber/subscriptions/annual/expires_date", "2019-02-30T00:00:00Z", "expires_date"),
    ("subscriber/subscriptions/annual/expires_date", "2019-08-14T21:07:40", "expires_date"),  # no zone
    ("subscriber/subscriptions/annual/expires_date", "10000-01-01T00:00:00Z", "expires_date"),
    ("subscriber/subscriptions/annual/expires_date", "9999-12-31T23:59:59-14:00", "expires_date"),
    ("subscriber/subscriptions/annual/expires_date", float("inf"), "expires_date"),
    ("subscriber/subscriptions/annual/expires_date", 10**30, "expires_date"),
    ("subscriber/subscriptions/annual/purchase_date", True, "purchase_date"),
    ("subscriber/subscriptions/annual/refunded_at", {}, "refunded_at"),
    ("subscriber/subscriptions/annual/grace_period_expires_date", [], "grace_period_expires_date"),
    ("subscriber/subscriptions/annual/store", 5, "store"),
    ("subscriber/subscriptions/annual/is_sandbox", "yes", "is_sandbox"),
    ("subscriber/subscriptions/annual/period_type", {}, "period_type"),
    ("subscriber/subscriptions/annual/ownership_type", ["PURCHASED"], "ownership_type"),
    ("subscriber/subscriptions/annual/store_transaction_id", "x" * 256, "store_transaction_id"),
    ("subscriber/subscriptions/annual/store_transaction_id", "tx\x00", "store_transaction_id"),
    ("subscriber/subscriptions/annual/store_transaction_id", "tx\ud800", "store_transaction_id"),
    ("subscriber/subscriptions/annual/store_transaction_id", 1.5, "store_transaction_id"),
    ("subscriber/subscriptions/annual", "active", "annual"),
    ("subscriber/subscriptions", ["annual"], "subscriptions"),
    ("subscriber/non_subscriptions/onetime", {"id": "x"}, "onetime"),
    ("subscriber/non_subscriptions/onetime/0", 7, "onetime"),
    ("subscriber/non_subscriptions/onetime/0/id", {"x": 1}, ".id"),
    ("subscriber/non_subscriptions/onetime/0/purchase_date", "yesterday", "purchase_date"),
    ("subscriber/original_app_user_id", None, "original_app_user_id"),
    ("subscriber/original_app_user_id", "u" * 256, "original_app_user_id"),
    ("subscriber/original_app_user_id", "bad\x00id", "original_app_user_id"),
    ("subscriber/original_app_user_id", "\udc80", "original_app_user_id"),
    ("subscriber", "gone", "subscriber"),
    ("request_date_ms", float("nan"), "request_date_ms"),
    ("request_date_ms", "soon", "request_date_ms"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD_SUBSCRIBER_FIELDS)
def test_an_unusable_field_is_one_terminal_error_naming_it(path, value, named):
    with pytest.raises(UnreadableSubscriber) as raised:
        parse_subscriber(subscriber_with(**{path: value}))
    assert named in str(raised.value) and str(raised.value).isascii()


def test_a_product_id_no_column_can_hold_is_refused():
    body = subscriber_with()
    body["subscriber"]["subscriptions"]["p" * 256] = body["subscriber"]["subscriptions"].pop("annual")
    with pytest.raises(UnreadableSubscriber, match="subscriptions"):
        parse_subscriber(body)


@pytest.mark.parametrize("body", [[], "x", None, {"request_date": "", "subscriber": {"original_app_user_id": "a"}}])
def test_bodies_without_a_subscriber_or_a_date_are_refused(body):
    with pytest.raises(UnreadableSubscriber):
        parse_subscriber(body)


# ----- webhook events -----------------------------------------------------------------------


def sample(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def purchase_event(**fields) -> dict:
    body = sample("sample-events_1.json")
    body["event"].update(fields)
    return body


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*event*.json")))
def test_every_published_sample_parses(name):
    event = parse_event(sample(name), received_ms=YEAR_4466_MS + 1)
    assert event.event_id


BAD_EVENT_FIELDS = [
    ("event_timestamp_ms", float("inf")),  # JSON Infinity, and 1e400 as Python's json reads it
    ("event_timestamp_ms", json.loads("1e400")),
    ("event_timestamp_ms", "soon"),
    ("event_timestamp_ms", True),
    ("store", 5),
    ("environment", ["PRODUCTION"]),
    ("aliases", 5),
    ("aliases", [5.5]),
    ("aliases", ["a" * 256]),
    ("purchased_at_ms", {}),
    ("expiration_at_ms", []),
    ("grace_period_expiration_at_ms", "never"),
    ("transaction_id", {}),
    ("original_transaction_id", [1]),
    ("product_id", 3.5),
    ("period_type", 7),
    ("is_family_share", "no"),
    ("cancel_reason", {}),
    ("app_user_id", "u" * 256),
    ("app_user_id", "nul\x00"),
    ("app_user_id", "lone\ud800"),
    ("app_user_id", ["alice"]),
    ("original_app_user_id", {}),
]


@pytest.mark.parametrize(("name", "value"), BAD_EVENT_FIELDS)
def test_an_unusable_event_field_is_a_malformed_event_naming_it(name, value):
    with pytest.raises(MalformedEvent) as raised:
        parse_event(purchase_event(**{name: value}), received_ms=2_000_000_000_000)
    assert name in str(raised.value) and str(raised.value).isascii()
    assert isinstance(raised.value, TerminalError)  # dead-lettered, never retried on its own


@pytest.mark.parametrize(("name", "value"), [("transferred_from", 5), ("transferred_to", [None]), ("store", 5)])
def test_an_unusable_transfer_field_is_a_malformed_event(name, value):
    body = sample("sample-events_8.json")
    body["event"][name] = value
    with pytest.raises(MalformedEvent, match=name):
        parse_event(body)


def test_an_event_without_original_app_user_id_states_no_identity():
    grant = parse_event(sample("sample-event-temporary-entitlement-grant.json"))
    assert grant.app_user_ids == ("41234567890",) and grant.identities == {}
    stated = parse_event(purchase_event())
    assert stated.identities == {
        "1234567890": "$RCAnonymousID:87c6049c58069238dce29853916d624c",
        "$RCAnonymousID:87c6049c58069238dce29853916d624c": "$RCAnonymousID:87c6049c58069238dce29853916d624c",
        "$RCAnonymousID:8069238d6049ce87cc529853916d624c": "$RCAnonymousID:87c6049c58069238dce29853916d624c",
    }
    anonymous = purchase_event(original_app_user_id=None)
    [observation] = parse_event(anonymous).observations
    assert parse_event(anonymous).identities == {} and observation.owner is not None  # UNKNOWN: not asserted
    assert not isinstance(observation.owner, str)


def test_an_event_is_never_observed_after_it_was_received():
    received_ms = 1_700_000_000_000
    future = parse_event(purchase_event(event_timestamp_ms=YEAR_4466_MS), received_ms=received_ms)
    assert future.timestamp_ms == received_ms
    assert {o.observed_ms for o in future.observations} == {received_ms}
    past = parse_event(purchase_event(event_timestamp_ms=received_ms - 5), received_ms=received_ms)
    assert past.timestamp_ms == received_ms - 5
    transfer = sample("sample-events_8.json")  # dated 4466 too
    assert parse_event(transfer, received_ms=received_ms).timestamp_ms == received_ms
