"""Property: any body built from the published v1 field lists parses or raises a TerminalError.

Bodies are generated from the fields of reference/revenuecat.md §3 (the ``GET /v1/subscribers``
subscriber, its subscriptions, non-subscriptions and entitlements) and §1.3-1.4 (webhook event
fields), each field present or not, holding a value of its documented type (date-times in the
forms RFC 3339 allows, epoch ms, enums) or any JSON value at all (infinities, huge numbers,
NUL, lone surrogates, deep arrays). Whatever parses must be storable: ids of at most 255
characters without NUL or unpaired surrogates, instants within years 1-9999.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import TerminalError
from engine.facts import UNKNOWN, observe_snapshot
from engine.provider_values import MAX_INSTANT_MS, MIN_INSTANT_MS, storable
from engine.revenuecat import RECONCILE_EVENT_TYPES, parse_event, parse_subscriber

EXAMPLES = 400

# ----- values ---------------------------------------------------------------------------------

awkward_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udc80b", "x" * 256, "null", "$RCAnonymousID:1", ".."]),
)
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | awkward_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(awkward_text, children, max_size=3),
    max_leaves=8,
)
epoch_ms = st.integers(0, 2 * 10**12) | st.integers(0, 2 * 10**12) | st.integers(-(10**15), 10**15)
plain_id = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)


def mostly(valid: st.SearchStrategy, odds: int = 8) -> st.SearchStrategy:
    """The documented type ``odds`` times in ``odds + 1``, any JSON value otherwise."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda typed: valid if typed else any_json)


@st.composite
def date_times(draw) -> str:
    """RFC 3339 date-times (and near misses): lower case, leap seconds, offsets, fractions."""
    year = draw(st.sampled_from([2019, 2026, 1970, 4466, 1, 9999, 10000]))
    month, day = draw(st.integers(1, 12) | st.integers(0, 13)), draw(st.integers(1, 28) | st.integers(0, 32))
    hour, minute = draw(st.integers(0, 23) | st.integers(0, 24)), draw(st.integers(0, 59) | st.integers(0, 60))
    second = draw(st.integers(0, 59) | st.sampled_from([60, 61]))
    separator = draw(st.sampled_from("TTt "))
    fraction = draw(st.sampled_from(["", "", ".5", ".123", ".123456789", ","]))
    zone = draw(st.sampled_from(["Z", "Z", "z", "+00:00", "-14:00", "+0530", "", "+24:00"]))
    return f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


instant = mostly(st.one_of(st.none(), date_times(), date_times(), epoch_ms, epoch_ms.map(str), st.just("")))
ms_field = mostly(st.one_of(epoch_ms, epoch_ms, epoch_ms, st.none(), st.floats()))
identifier = mostly(st.one_of(plain_id, plain_id, awkward_text, st.integers(0, 10**20)))
stores = st.sampled_from(["app_store", "mac_app_store", "play_store", "amazon", "stripe", "promotional", "roku"])


def fields(spec: dict[str, st.SearchStrategy], required: tuple[str, ...] = ()) -> st.SearchStrategy[dict]:
    """An object holding the ``required`` fields and any subset of the others of ``spec``."""
    return st.fixed_dictionaries(
        {name: spec[name] for name in required},
        optional={name: value for name, value in spec.items() if name not in required},
    )


# ----- GET /v1/subscribers (§3) ---------------------------------------------------------------

subscription = fields(
    {
        "expires_date": instant,
        "purchase_date": instant,
        "original_purchase_date": instant,
        "period_type": mostly(st.sampled_from(["normal", "trial", "intro", "NORMAL"])),
        "store": mostly(stores),
        "is_sandbox": mostly(st.booleans()),
        "unsubscribe_detected_at": instant,
        "billing_issues_detected_at": instant,
        "grace_period_expires_date": instant,
        "refunded_at": instant,
        "auto_resume_date": instant,
        "ownership_type": mostly(st.sampled_from(["PURCHASED", "FAMILY_SHARED"])),
        "store_transaction_id": identifier,
        "price": fields({"amount": st.floats(), "currency": st.text(max_size=3)}),
        "display_name": awkward_text,
        "product_plan_identifier": awkward_text,
    }
)
non_subscription = fields(
    {
        "id": identifier,
        "store_transaction_id": identifier,
        "purchase_date": instant,
        "store": mostly(stores),
        "is_sandbox": mostly(st.booleans()),
        "price": any_json,
        "display_name": awkward_text,
    }
)
entitlement = fields(
    {
        "expires_date": instant,
        "grace_period_expires_date": instant,
        "product_identifier": awkward_text,
        "purchase_date": instant,
    }
)
product_ids = (
    mostly(st.sampled_from(["annual", "onetime", "h01enb"]) | plain_id, 4).filter(lambda key: isinstance(key, str))
    | awkward_text
)
subscriber = fields(
    {
        "entitlements": mostly(st.dictionaries(awkward_text, entitlement, max_size=2)),
        "first_seen": instant,
        "last_seen": instant,
        "management_url": awkward_text,
        "non_subscriptions": mostly(
            st.dictionaries(
                product_ids, mostly(st.lists(mostly(non_subscription), min_size=1, max_size=3)), min_size=1, max_size=3
            )
        ),
        "original_app_user_id": mostly(plain_id, 20),
        "original_application_version": awkward_text,
        "original_purchase_date": instant,
        "other_purchases": any_json,
        "subscriptions": mostly(st.dictionaries(product_ids, mostly(subscription), min_size=1, max_size=3)),
        "subscriber_attributes": any_json,
    },
    required=("original_app_user_id", "subscriptions", "non_subscriptions"),
)
subscriber_body = fields(
    {"request_date": instant, "request_date_ms": mostly(epoch_ms, 30), "subscriber": mostly(subscriber, 30)},
    required=("request_date_ms", "subscriber"),
)


def outcome(parse, *args, **kwargs):
    """(result, None) or (None, the TerminalError): anything else propagates and fails the test."""
    try:
        return parse(*args, **kwargs), None
    except TerminalError as exc:
        return None, exc


def assert_storable_id(value: object) -> None:
    assert isinstance(value, str) and 0 < len(value) <= 255 and storable(value), value


def assert_instant(value: object) -> None:
    assert value is None or value is UNKNOWN or (isinstance(value, int) and MIN_INSTANT_MS <= value <= MAX_INSTANT_MS)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=subscriber_body)
def test_any_subscriber_body_parses_or_is_a_terminal_error(body):
    snapshot, refused = outcome(parse_subscriber, body)
    if refused is not None:
        assert str(refused).isascii()  # quotes nothing a log or a dead letter cannot hold
        return
    assert_storable_id(snapshot.customer_id)
    assert_instant(snapshot.request_ms)
    for obs in snapshot.observations:
        assert_storable_id(obs.transaction_id)
        assert_storable_id(obs.product_id)
        for name in ("purchased_ms", "expires_ms", "grace_expires_ms", "refunded_ms"):
            assert_instant(getattr(obs, name))
        assert len(str(obs.store)) <= 32 and len(str(obs.period_type)) <= 20 and len(str(obs.ownership)) <= 20
    observe_snapshot({}, snapshot)  # the merge rules take whatever parsed


# ----- webhooks (§1.3, §1.4) ------------------------------------------------------------------

ids = mostly(st.lists(identifier, max_size=3))
event_types = st.sampled_from([*sorted(RECONCILE_EVENT_TYPES), "TEST", "SOMETHING_NEW"])
event = fields(
    {
        "id": mostly(plain_id, 20),
        "type": mostly(event_types, 20),
        "app_id": awkward_text,
        "event_timestamp_ms": mostly(epoch_ms, 20),
        "app_user_id": mostly(plain_id, 20),
        "original_app_user_id": mostly(plain_id, 20),
        "aliases": ids,
        "subscriber_attributes": any_json,
        "experiments": any_json,
        "product_id": identifier,
        "entitlement_ids": ids,
        "entitlement_id": awkward_text,
        "new_product_id": identifier,
        "presented_offering_id": awkward_text,
        "period_type": mostly(st.sampled_from(["TRIAL", "INTRO", "NORMAL", "PROMOTIONAL", "PREPAID"])),
        "purchased_at_ms": ms_field,
        "expiration_at_ms": ms_field,
        "grace_period_expiration_at_ms": ms_field,
        "auto_resume_at_ms": ms_field,
        "store": mostly(stores.map(str.upper)),
        "environment": mostly(st.sampled_from(["SANDBOX", "PRODUCTION"])),
        "is_trial_conversion": st.booleans(),
        "renewal_number": st.integers(),
        "cancel_reason": mostly(st.sampled_from(["UNSUBSCRIBE", "BILLING_ERROR", "CUSTOMER_SUPPORT", "UNKNOWN"])),
        "expiration_reason": awkward_text,
        "price": st.floats(),
        "currency": awkward_text,
        "price_in_purchased_currency": st.floats(),
        "tax_percentage": st.floats(),
        "commission_percentage": st.floats(),
        "takehome_percentage": st.floats(),
        "transaction_id": identifier,
        "original_transaction_id": identifier,
        "is_family_share": mostly(st.booleans()),
        "transferred_from": ids,
        "transferred_to": ids,
        "country_code": awkward_text,
        "offer_code": awkward_text,
    },
    required=("id", "type", "app_user_id", "event_timestamp_ms", "transaction_id", "product_id"),
)
webhook_body = fields({"api_version": st.just("1.0"), "event": mostly(event, 30)}, required=("event",))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=webhook_body, received_ms=epoch_ms)
def test_any_authenticated_webhook_parses_or_is_a_terminal_error(body, received_ms):
    parsed, refused = outcome(parse_event, body, received_ms=received_ms)
    if refused is not None:  # MalformedEvent is a TerminalError
        assert str(refused).isascii()
        return
    assert parsed.timestamp_ms <= received_ms
    for user in parsed.app_user_ids + parsed.transferred_from + parsed.transferred_to:
        assert_storable_id(user)
    for alias, customer in parsed.identities.items():
        assert_storable_id(alias)
        assert_storable_id(customer)
    for obs in parsed.observations:
        assert_storable_id(obs.transaction_id)
        assert obs.observed_ms <= received_ms
        for name in ("purchased_ms", "expires_ms", "grace_expires_ms", "refunded_ms"):
            assert_instant(getattr(obs, name))
