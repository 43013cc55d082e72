"""The simulator's webhook delivery (verbatim Authorization, retries, auto-delivery that never
fails an operation) and its admin API (operations, faults and the clock over HTTP)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from simulators.revenuecat import SimulatorServer
from simulators.revenuecat.records import DAY_MS
from tests.simulator.support import get_subscriber


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
