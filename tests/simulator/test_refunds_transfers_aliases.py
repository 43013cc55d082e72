"""The simulator's refunds and their reversal, transfers and aliases as v1 reads show them, and
operations with reads from many threads at once."""

from __future__ import annotations

import threading

import pytest
import requests

from engine.revenuecat import parse_event
from simulators.revenuecat import SimulatorError, SimulatorServer
from simulators.revenuecat.customer_info import iso_ms
from tests.simulator.support import API_KEY, get_subscriber


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
