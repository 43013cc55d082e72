"""The RevenueCat simulator over real HTTP: body shapes, operations, faults, receipts, delivery.

Shapes are checked against the official samples in tests/fixtures/revenuecat/ (verbatim copies of
reference/revenuecat.md §1.8 and the §3 spec example).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from engine.revenuecat import parse_event, parse_subscriber
from simulators.revenuecat import ProviderState, SimulatorError, SimulatorServer
from simulators.revenuecat.customer_info import iso_ms
from simulators.revenuecat.records import DAY_MS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "revenuecat"
API_KEY = "sk_test_sim"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SUBSCRIBER_KEYS = {
    "entitlements",
    "first_seen",
    "last_seen",
    "management_url",
    "non_subscriptions",
    "original_app_user_id",
    "original_application_version",
    "original_purchase_date",
    "other_purchases",
    "subscriptions",
    "subscriber_attributes",
}
# Documented fields (reference §1.3–1.4) that some official samples happen to omit.
DOCUMENTED_EXTRAS = {
    "app_id",
    "country_code",
    "is_family_share",
    "renewal_number",
    "grace_period_expiration_at_ms",
    "is_trial_conversion",
    "offer_code",
}


def sample_event_keys(name: str) -> set[str]:
    return set(json.loads((FIXTURES / name).read_text())["event"])


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(ProviderState(), api_key=API_KEY) as server:
        yield server


@pytest.fixture
def api(sim: SimulatorServer) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session


def get_subscriber(sim: SimulatorServer, api: requests.Session, app_user_id: str) -> requests.Response:
    return api.get(f"{sim.url}/v1/subscribers/{quote(app_user_id, safe='')}", timeout=5)


def iso_fields(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) in a body whose key names a date."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from iso_fields(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from iso_fields(item, key)
    elif key.endswith(("_date", "_at", "first_seen", "last_seen")):
        yield key, value


# ----- REST v1 shape -------------------------------------------------------------------------


def test_subscriber_is_get_or_create_with_documented_shape(sim: SimulatorServer, api: requests.Session) -> None:
    first = get_subscriber(sim, api, "new_user")
    assert first.status_code == 201
    assert get_subscriber(sim, api, "new_user").status_code == 200

    sim.state.purchase_subscription("new_user", "monthly")
    sim.state.purchase_non_renewing("new_user", "course_h01", store="play_store")
    body = get_subscriber(sim, api, "new_user").json()

    spec = json.loads((FIXTURES / "subscriber-spec-example.json").read_text())
    assert set(body) == set(spec) == {"request_date", "request_date_ms", "subscriber"}
    assert set(body["subscriber"]) == SUBSCRIBER_KEYS
    sub = body["subscriber"]["subscriptions"]["monthly"]
    assert set(spec["subscriber"]["subscriptions"]["annual"]) <= set(sub)
    assert set(sub["price"]) == {"amount", "currency"}
    assert isinstance(sub["store_transaction_id"], str)
    assert (sub["period_type"], sub["store"], sub["ownership_type"]) == ("normal", "app_store", "PURCHASED")
    [one_time] = body["subscriber"]["non_subscriptions"]["course_h01"]
    assert {"id", "store_transaction_id", "purchase_date", "store", "is_sandbox", "price"} <= set(one_time)
    assert body["subscriber"]["entitlements"]["pro"]["expires_date"] is None  # the one-time purchase is lifetime
    assert body["subscriber"]["original_app_user_id"] == "new_user"
    dates = [(k, v) for k, v in iso_fields(body) if v is not None]
    assert dates and all(ISO_Z.match(v) for _, v in dates), dates
    assert ISO_Z.match(body["request_date"]) and isinstance(body["request_date_ms"], int)


def test_subscriber_body_is_what_the_engine_parser_reads(sim: SimulatorServer, api: requests.Session) -> None:
    event = sim.state.purchase_subscription("parsed", "monthly")
    snapshot = parse_subscriber(get_subscriber(sim, api, "parsed").json())
    [observation] = snapshot.observations
    assert observation.transaction_id == event["event"]["transaction_id"]
    assert observation.expires_ms == event["event"]["expiration_at_ms"]  # ms survive the ISO round trip
    assert parse_event(event).app_user_ids == ("parsed",)


def test_bad_or_missing_api_key_is_401(sim: SimulatorServer) -> None:
    url = f"{sim.url}/v1/subscribers/someone"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"message": "Invalid API key"}


@pytest.mark.parametrize(
    "app_user_id", ["$RCAnonymousID:8069238d6049ce87cc529853916d624c", "user with spaces", "a+b&c=d"]
)
def test_url_encoded_ids_resolve(sim: SimulatorServer, api: requests.Session, app_user_id: str) -> None:
    sim.state.purchase_subscription(app_user_id, "monthly")
    response = get_subscriber(sim, api, app_user_id)
    assert response.status_code == 200
    assert response.json()["subscriber"]["original_app_user_id"] == app_user_id
    assert "monthly" in response.json()["subscriber"]["subscriptions"]


# ----- webhook bodies ------------------------------------------------------------------------


def _produce(state: ProviderState, event_type: str) -> dict[str, Any]:
    state.purchase_subscription("u", "monthly", period_type="trial")
    tx = state.subscriber("u")[1]["subscriber"]["subscriptions"]["monthly"]["store_transaction_id"]
    return {
        "INITIAL_PURCHASE.json": lambda: state.purchase_subscription("u", "yearly"),
        "RENEWAL.json": lambda: state.renew("u", "monthly"),
        "CANCELLATION_UNSUBSCRIBE.json": lambda: state.cancel("u", "monthly"),
        "CANCELLATION_REFUND.json": lambda: state.refund("u", tx),
        "EXPIRATION.json": lambda: state.expire("u", "monthly"),
        "TRANSFER.json": lambda: state.transfer("u", "v"),
        "BILLING_ISSUE.json": lambda: state.billing_issue("u", "monthly"),
        "PRODUCT_CHANGE.json": lambda: state.change_product("u", "monthly", "yearly"),
        "REFUND_REVERSED.json": lambda: (state.refund("u", tx), state.reverse_refund("u", tx))[1],
    }[event_type]()


SAMPLES = {
    "INITIAL_PURCHASE.json": "sample-events_1.json",
    "RENEWAL.json": "sample-events_2.json",
    "CANCELLATION_UNSUBSCRIBE.json": "sample-events_3.json",
    "CANCELLATION_REFUND.json": "sample-events_9.json",
    "EXPIRATION.json": "sample-events_13.json",
    "TRANSFER.json": "sample-events_8.json",
    "BILLING_ISSUE.json": "sample-events_7.json",
    "PRODUCT_CHANGE.json": "sample-events_10.json",
    "REFUND_REVERSED.json": "sample-event-refund-reversed.json",
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_event_keys_match_the_official_sample(case: str) -> None:
    body = _produce(ProviderState(), case)
    sample = json.loads((FIXTURES / SAMPLES[case]).read_text())
    assert set(body) == set(sample) == {"api_version", "event"}
    assert body["api_version"] == "1.0"
    event, expected = set(body["event"]), set(sample["event"])
    if case == "TRANSFER.json":
        assert event == expected
        return
    assert expected <= event, expected - event
    assert event - expected <= DOCUMENTED_EXTRAS | {"cancel_reason", "expiration_reason", "new_product_id"}
    assert body["event"]["type"] == sample["event"]["type"]
    uuid.UUID(body["event"]["id"])


def test_event_values_follow_the_operation() -> None:
    state = ProviderState(entitlements_by_product={"monthly": ["pro", "plus"]})
    t0 = state.now_ms()
    trial = state.purchase_subscription("u", "monthly", period_type="trial", period_ms=7 * DAY_MS, now_ms=t0)["event"]
    assert (trial["type"], trial["period_type"], trial["store"], trial["price"]) == (
        "INITIAL_PURCHASE",
        "TRIAL",
        "APP_STORE",
        0,
    )
    assert trial["entitlement_ids"] == ["pro", "plus"]
    assert trial["transaction_id"] == trial["original_transaction_id"]
    assert (trial["app_user_id"], trial["original_app_user_id"], trial["aliases"]) == ("u", "u", ["u"])

    renewal = state.renew("u", "monthly", now_ms=t0 + DAY_MS)["event"]
    assert renewal["is_trial_conversion"] is True and renewal["period_type"] == "NORMAL"
    assert renewal["purchased_at_ms"] == trial["expiration_at_ms"]  # starts where the trial ends
    assert renewal["expiration_at_ms"] == trial["expiration_at_ms"] + 7 * DAY_MS
    assert renewal["original_transaction_id"] == trial["transaction_id"] != renewal["transaction_id"]
    assert renewal["price"] == 9.99

    issue = state.billing_issue("u", "monthly", grace_ms=3 * DAY_MS, now_ms=t0 + 2 * DAY_MS)["event"]
    assert issue["grace_period_expiration_at_ms"] == renewal["expiration_at_ms"] + 3 * DAY_MS
    expired = state.expire("u", "monthly", reason="BILLING_ERROR", now_ms=t0 + 3 * DAY_MS)["event"]
    assert (expired["expiration_reason"], expired["expiration_at_ms"]) == ("BILLING_ERROR", t0 + 3 * DAY_MS)
    lapsed = state.renew("u", "monthly", now_ms=t0 + 30 * DAY_MS)["event"]
    assert lapsed["purchased_at_ms"] == t0 + 30 * DAY_MS and lapsed["is_trial_conversion"] is False

    sandbox = state.purchase_non_renewing("u", "coins", store="play_store", sandbox=True)["event"]
    assert (sandbox["type"], sandbox["environment"], sandbox["store"], sandbox["expiration_at_ms"]) == (
        "NON_RENEWING_PURCHASE",
        "SANDBOX",
        "PLAY_STORE",
        None,
    )
    assert sandbox["entitlement_ids"] is None  # unmapped products grant nothing


def test_cancel_uncancel_pause_change_and_promotional(sim: SimulatorServer, api: requests.Session) -> None:
    state = sim.state
    state.purchase_subscription("u", "monthly", store="play_store")
    assert state.cancel("u", "monthly")["event"]["cancel_reason"] == "UNSUBSCRIBE"
    sub = get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]["monthly"]
    assert sub["unsubscribe_detected_at"] is not None
    assert state.uncancel("u", "monthly")["event"]["type"] == "UNCANCELLATION"
    resume = state.now_ms() + 40 * DAY_MS
    assert state.pause("u", "monthly", resume_at_ms=resume)["event"]["auto_resume_at_ms"] == resume
    assert get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]["monthly"]["auto_resume_date"]

    change = state.change_product("u", "monthly", "yearly", period_ms=365 * DAY_MS)["event"]
    assert (change["type"], change["product_id"], change["new_product_id"]) == ("PRODUCT_CHANGE", "monthly", "yearly")
    subs = get_subscriber(sim, api, "u").json()["subscriber"]["subscriptions"]
    assert subs["monthly"]["expires_date"] <= subs["yearly"]["purchase_date"] < subs["yearly"]["expires_date"]

    promo = state.grant_promotional("u", "gold", duration_ms=DAY_MS)["event"]
    assert (promo["type"], promo["store"], promo["period_type"]) == (
        "NON_RENEWING_PURCHASE",
        "PROMOTIONAL",
        "PROMOTIONAL",
    )
    assert "app_id" not in promo and promo["environment"] == "PRODUCTION" and promo["entitlement_ids"] == ["gold"]
    body = get_subscriber(sim, api, "u").json()["subscriber"]
    assert body["subscriptions"]["rc_promo_gold_custom"]["store"] == "promotional"
    assert body["entitlements"]["gold"]["product_identifier"] == "rc_promo_gold_custom"

    state.purchase_subscription("ios_user", "monthly")
    with pytest.raises(SimulatorError):
        state.pause("ios_user", "monthly", resume_at_ms=resume)  # Play Store only
    paused = state.expire("u", "yearly", reason="SUBSCRIPTION_PAUSED")["event"]
    assert paused["expiration_reason"] == "SUBSCRIPTION_PAUSED"


# ----- refunds, transfers, aliases -----------------------------------------------------------


def test_subscription_refund_sets_refunded_at_and_reversal_restores(
    sim: SimulatorServer, api: requests.Session
) -> None:
    purchase = sim.state.purchase_subscription("r", "monthly")["event"]
    refund = sim.state.refund("r", purchase["transaction_id"])["event"]
    assert (refund["type"], refund["cancel_reason"], refund["price"]) == ("CANCELLATION", "CUSTOMER_SUPPORT", -9.99)
    sub = get_subscriber(sim, api, "r").json()["subscriber"]["subscriptions"]["monthly"]
    assert sub["refunded_at"] is not None and sub["expires_date"] == sub["refunded_at"]

    reversed_ = sim.state.reverse_refund("r", purchase["transaction_id"])["event"]
    assert (reversed_["type"], reversed_["price"]) == ("REFUND_REVERSED", 9.99)
    sub = get_subscriber(sim, api, "r").json()["subscriber"]["subscriptions"]["monthly"]
    assert sub["refunded_at"] is None
    assert sub["expires_date"] == iso_ms(purchase["expiration_at_ms"])


def test_non_subscription_refund_vanishes_and_reversal_restores(sim: SimulatorServer, api: requests.Session) -> None:
    purchase = sim.state.purchase_non_renewing("r", "course")["event"]
    refund = sim.state.refund("r", purchase["transaction_id"])["event"]
    assert refund["expiration_at_ms"] is None and refund["price"] == -9.99
    body = get_subscriber(sim, api, "r").json()["subscriber"]
    assert body["non_subscriptions"] == {} and body["entitlements"] == {}
    with pytest.raises(SimulatorError):
        sim.state.refund("r", purchase["transaction_id"])  # already refunded
    sim.state.reverse_refund("r", purchase["transaction_id"])
    [restored] = get_subscriber(sim, api, "r").json()["subscriber"]["non_subscriptions"]["course"]
    assert restored["store_transaction_id"] == purchase["transaction_id"]


def test_transfer_moves_every_purchase(sim: SimulatorServer, api: requests.Session) -> None:
    sim.state.purchase_subscription("alice", "monthly")
    sim.state.purchase_non_renewing("alice", "course")
    body = sim.state.transfer("alice", "bob")
    event = body["event"]
    assert (event["transferred_from"], event["transferred_to"]) == (["alice"], ["bob"])
    assert "app_user_id" not in event and event["store"] == "APP_STORE"
    alice = get_subscriber(sim, api, "alice").json()["subscriber"]
    bob = get_subscriber(sim, api, "bob").json()["subscriber"]
    assert alice["subscriptions"] == {} and alice["non_subscriptions"] == {}
    assert set(bob["subscriptions"]) == {"monthly"} and set(bob["non_subscriptions"]) == {"course"}
    assert parse_event(body).transferred_to == ("bob",)
    with pytest.raises(SimulatorError):
        sim.state.transfer("alice", "carol")  # nothing left to move


def test_aliases_resolve_to_one_customer(sim: SimulatorServer, api: requests.Session) -> None:
    anonymous = "$RCAnonymousID:87c6049c58069238dce29853916d624c"
    sim.state.purchase_subscription(anonymous, "monthly")
    sim.state.purchase_non_renewing("user_1234", "course")  # a second customer, seen later
    sim.state.alias(anonymous, "user_1234")
    for app_user_id in (anonymous, "user_1234"):
        subscriber = get_subscriber(sim, api, app_user_id).json()["subscriber"]
        assert subscriber["original_app_user_id"] == anonymous
        assert set(subscriber["subscriptions"]) == {"monthly"} and set(subscriber["non_subscriptions"]) == {"course"}
    event = sim.state.cancel("user_1234", "monthly")["event"]
    assert (event["app_user_id"], event["original_app_user_id"]) == ("user_1234", anonymous)
    assert event["aliases"] == sorted([anonymous, "user_1234"])
    sim.state.alias("user_1234", "user_1234@example.com")  # a brand-new id joins too
    assert sim.state.aliases_of("user_1234@example.com") == sorted([anonymous, "user_1234", "user_1234@example.com"])


def test_concurrent_operations_and_reads_stay_consistent(sim: SimulatorServer) -> None:
    def worker(n: int) -> list[str]:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        ids = []
        for i in range(10):
            ids.append(sim.state.purchase_non_renewing(f"c{n}", f"p{i}")["event"]["transaction_id"])
            assert get_subscriber(sim, session, f"c{n}").status_code == 200
        return ids

    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda n=n: results.append(worker(n))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({tx for ids in results for tx in ids}) == 80  # transaction ids never collide
    assert sim.state.request_count == 80


# ----- faults --------------------------------------------------------------------------------


def test_injected_faults_then_recovery(sim: SimulatorServer, api: requests.Session) -> None:
    sim.state.fail_next(2, status=500)
    assert [get_subscriber(sim, api, "f").status_code for _ in range(3)] == [500, 500, 201]

    sim.state.fail_next(1, status=429, retry_after_s=3)
    limited = get_subscriber(sim, api, "f")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {
        "type": "rate_limit_error",
        "message": "Rate limit exceeded",
        "retryable": True,
        "doc_url": "https://errors.rev.cat/rate-limit-error",
        "backoff_ms": 3000,
    }

    sim.state.down = True
    assert get_subscriber(sim, api, "f").status_code == 503
    assert requests.get(f"{sim.url}/_sim/stats", timeout=5).status_code == 200  # admin stays up
    sim.state.down = False
    assert get_subscriber(sim, api, "f").status_code == 200

    assert sim.state.request_count == 6
    assert [entry[:2] for entry in sim.state.request_log][-1] == ("GET", "/v1/subscribers/f")


# ----- receipts ------------------------------------------------------------------------------


def post_receipt(
    sim: SimulatorServer, api: requests.Session, payload: dict[str, Any], platform: str | None = "android"
) -> requests.Response:
    headers = {"X-Platform": platform} if platform else {}
    return api.post(f"{sim.url}/v1/receipts", json=payload, headers=headers, timeout=5)


def test_receipts_record_once_and_reject_bad_tokens(sim: SimulatorServer, api: requests.Session) -> None:
    state = sim.state
    state.register_store_purchase("tok-1", platform="android", product_id="h01enb", transaction_id="GPA.1234-5678-9012")
    payload = {"app_user_id": "buyer", "fetch_token": "tok-1", "product_id": "h01enb"}

    missing_platform = post_receipt(sim, api, payload, platform=None)
    assert missing_platform.status_code == 400 and "X-Platform" in missing_platform.json()["message"]

    first = post_receipt(sim, api, payload)
    assert first.status_code == 200
    [purchase] = first.json()["subscriber"]["non_subscriptions"]["h01enb"]
    assert purchase["store_transaction_id"] == "GPA.1234-5678-9012" and purchase["store"] == "play_store"
    again = post_receipt(sim, api, payload)
    assert again.json()["subscriber"]["non_subscriptions"] == first.json()["subscriber"]["non_subscriptions"]

    unknown = post_receipt(sim, api, {**payload, "fetch_token": "nope"})
    assert unknown.status_code == 400 and unknown.json()["code"] == 7103
    state.register_store_purchase("tok-bad", platform="android", product_id="h01enb", status="invalid")
    assert post_receipt(sim, api, {**payload, "fetch_token": "tok-bad"}).json()["code"] == 7103

    state.register_store_purchase("tok-pending", platform="android", product_id="h01enb", status="pending")
    pending = post_receipt(sim, api, {**payload, "fetch_token": "tok-pending"})
    assert pending.status_code == 400 and "pending" in pending.json()["message"]
    state.register_store_purchase("tok-pending", platform="android", product_id="h01enb")  # payment completes
    assert (
        len(
            post_receipt(sim, api, {**payload, "fetch_token": "tok-pending"}).json()["subscriber"]["non_subscriptions"][
                "h01enb"
            ]
        )
        == 2
    )


def test_receipt_events_idempotency_and_transfer() -> None:
    state = ProviderState()
    state.register_store_purchase("sub-tok", platform="ios", product_id="monthly", kind="subscription")
    status, body, events = state.receipt("owner", "ios", "sub-tok")
    assert status == 200 and [e["event"]["type"] for e in events] == ["INITIAL_PURCHASE"]
    assert state.receipt("owner", "ios", "sub-tok").events == []  # same token twice records once

    status, body, events = state.receipt("restorer", "ios", "sub-tok")  # another identified user restores
    assert [e["event"]["type"] for e in events] == ["TRANSFER"]
    assert events[0]["event"]["transferred_from"] == ["owner"] and events[0]["event"]["transferred_to"] == ["restorer"]
    assert set(body["subscriber"]["subscriptions"]) == {"monthly"}
    assert state.subscriber("owner")[1]["subscriber"]["subscriptions"] == {}

    # An anonymous owner is merged into the restoring user instead: no TRANSFER (reference §6).
    anonymous = "$RCAnonymousID:0123456789abcdef"
    state.register_store_purchase("anon-tok", platform="ios", product_id="course")
    state.receipt(anonymous, "ios", "anon-tok")
    assert state.receipt("identified", "ios", "anon-tok").events == []
    assert state.aliases_of("identified") == sorted([anonymous, "identified"])


# ----- admin API and webhook delivery --------------------------------------------------------


class _Receiver:
    """A tiny webhook endpoint recording what it receives and answering ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.received.append((dict(self.headers), json.loads(self.rfile.read(length))))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/revenuecat"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


def test_deliver_posts_body_with_verbatim_authorization(receiver: _Receiver) -> None:
    with SimulatorServer(webhook_url=receiver.url, webhook_auth="Bearer whsec_123") as sim:
        body = sim.state.purchase_subscription("d", "monthly")
        assert sim.deliver(body) == 200
        headers, received = receiver.received[0]
        assert received == body
        assert headers["Authorization"] == "Bearer whsec_123"
        receiver.status = 500
        assert sim.deliver(body, headers={"X-Retry": "1"}) == 500  # a retry re-sends the same id
        assert receiver.received[1][1]["event"]["id"] == body["event"]["id"]
        assert [d.status for d in sim.delivery_log] == [200, 500]


def test_auto_deliver_sends_every_operation_and_swallows_failures(receiver: _Receiver) -> None:
    with SimulatorServer(webhook_url=receiver.url, webhook_auth="secret", auto_deliver=True) as sim:
        sim.state.purchase_subscription("a", "monthly")
        requests.post(f"{sim.url}/_sim/cancel", json={"app_user_id": "a", "product_id": "monthly"}, timeout=5)
        assert [r[1]["event"]["type"] for r in receiver.received] == ["INITIAL_PURCHASE", "CANCELLATION"]
        sim.webhook_url = "http://127.0.0.1:9/unreachable"
        sim.state.expire("a", "monthly")  # must not raise
        assert sim.delivery_log[-1].status is None and sim.delivery_log[-1].error


def test_admin_api_drives_operations_faults_and_clock(sim: SimulatorServer, api: requests.Session) -> None:
    admin = f"{sim.url}/_sim"
    created = requests.post(
        f"{admin}/purchase_subscription", json={"app_user_id": "x", "product_id": "monthly"}, timeout=5
    )
    assert created.status_code == 200 and created.json()["event"]["type"] == "INITIAL_PURCHASE"
    assert (
        requests.post(f"{admin}/alias", json={"app_user_id": "x", "other_app_user_id": "y"}, timeout=5).json() is None
    )
    assert requests.post(f"{admin}/renew", json={"app_user_id": "x"}, timeout=5).status_code == 400  # missing argument
    assert (
        requests.post(f"{admin}/cancel", json={"app_user_id": "nobody", "product_id": "m"}, timeout=5).status_code
        == 400
    )
    assert requests.post(f"{admin}/subscriber", json={"app_user_id": "x"}, timeout=5).status_code == 404

    faults = requests.post(
        f"{admin}/faults", json={"fail_next": 1, "status": 503, "retry_after_s": 2}, timeout=5
    ).json()
    assert faults["pending_faults"] == 1
    unavailable = get_subscriber(sim, api, "y")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "2"
    assert get_subscriber(sim, api, "y").json()["subscriber"]["original_app_user_id"] == "x"

    before = get_subscriber(sim, api, "x").json()["request_date_ms"]
    clock = requests.post(f"{admin}/clock", json={"advance_ms": 40 * DAY_MS}, timeout=5).json()
    assert clock["clock_offset_ms"] == 40 * DAY_MS
    later = get_subscriber(sim, api, "x").json()
    assert later["request_date_ms"] >= before + 40 * DAY_MS
    stats = requests.get(f"{admin}/stats", timeout=5).json()
    assert stats["request_count"] == 4 and stats["customers"] == 1
    assert requests.post(f"{admin}/deliver", json={"event": created.json()}, timeout=5).status_code == 409  # no URL
