"""GET /v1/users/<id>/access?wait=N: answers as soon as the access changes, and the
notifications behind it (published after commit, one subscription per process)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import redis as redis_lib
import requests
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from adapters.access_notifications import AccessNotifier, AccessWatch, channel_for, wait_for_change
from adapters.embedded_redis import redis_url
from persistence.models import Grant
from persistence.unit_of_work import unit_of_work
from services.clock import wall_clock_ms
from services.inbox import process_inbox_event
from tests.client.support import OPERATOR, WEBHOOK
from tests.support import answer, celery_worker, wait_for


class Timed:
    """A long-poll run in a thread: its answer, and how long after ``mark()`` it came."""

    def __init__(self, client: FlaskClient, path: str):
        self._response: TestResponse | None = None
        self.marked = self.done = 0.0
        self.thread = threading.Thread(target=self._run, args=(client, path))
        self.thread.start()

    def _run(self, client: FlaskClient, path: str) -> None:
        self._response = client.get(path, headers=OPERATOR)
        self.done = time.monotonic()

    @property
    def response(self) -> TestResponse:
        assert self._response is not None, "the long-poll has not answered"
        return self._response

    @property
    def access(self) -> list[dict[str, Any]]:
        return answer(self.response)["access"]

    def mark(self) -> None:
        self.marked = time.monotonic()

    def join(self, timeout: float = 30) -> float:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.done - self.marked


def purchase_processed(client, runtime, simulator, app_user_id: str) -> None:
    body = simulator.state.purchase_non_renewing(app_user_id, "h01enb")
    inbox_id = client.post("/webhooks/revenuecat", json=body, headers=WEBHOOK).json["inbox_id"]
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "processed"


def waiting(runtime, n: int = 1) -> None:
    wait_for(lambda: runtime.access_watch.waiting() >= n and runtime.access_watch.healthy, what="the long-poll to wait")


def test_wait_answers_as_soon_as_the_grant_is_committed(app, client, runtime, simulator):
    poll = Timed(app.test_client(), "/v1/users/alice/access?wait=20")
    waiting(runtime)
    # a waiting client holds no database connection (waited for: the wait may register a moment
    # before the request's own read has given its connection back; CI saw 1 once on PostgreSQL)
    wait_for(lambda: runtime.db.pool.checkedout() == 0, timeout=2, what="the connections to be returned")
    poll.mark()
    purchase_processed(client, runtime, simulator, "alice")
    poll.join(timeout=15)  # it waits 20 s for a change: answering at all means it woke on the grant
    assert poll.response.status_code == 200
    assert [a["resource"] for a in poll.access] == ["course:H01ENB"]


def test_a_waiter_on_an_alias_wakes_on_its_customers_change(app, client, runtime, simulator):
    simulator.state.alias("$RCAnonymousID:abc", "learner-42")  # the customer is the anonymous id
    purchase_processed(client, runtime, simulator, "learner-42")  # identities are known from here
    poll = Timed(app.test_client(), "/v1/users/learner-42/access?wait=20")
    waiting(runtime, 2)  # the alias and its customer
    poll.mark()
    body = simulator.state.purchase_non_renewing("learner-42", "geometry_pack_30")
    inbox_id = client.post("/webhooks/revenuecat", json=body, headers=WEBHOOK).json["inbox_id"]
    process_inbox_event(inbox_id, runtime.event_processing)
    poll.join(timeout=15)  # woken by the change, well before its 20 s ran out
    assert sorted(a["resource"] for a in poll.access) == ["course:H01ENB", "module:geometry"]


def test_wait_runs_out_when_nothing_changes(client):
    started = time.monotonic()
    response = client.get("/v1/users/alice/access?wait=0.5", headers=OPERATOR)
    assert time.monotonic() - started >= 0.45  # it waited its time
    assert response.status_code == 200 and response.json["access"] == []


def test_a_change_for_someone_else_does_not_end_the_wait(app, client, runtime, simulator):
    poll = Timed(app.test_client(), "/v1/users/alice/access?wait=1.5")
    waiting(runtime)
    poll.mark()
    purchase_processed(client, runtime, simulator, "bob")
    assert poll.join() >= 1.0 and poll.access == []


def test_since_answers_at_once_when_the_access_already_differs(client, runtime, simulator):
    before = client.get("/v1/users/alice/access", headers=OPERATOR)
    etag = before.headers["ETag"]
    purchase_processed(client, runtime, simulator, "alice")  # between the app's two requests
    answered = Timed(client, f"/v1/users/alice/access?wait=20&since={etag.strip(chr(34))}")
    answered.join(timeout=15)  # no wait: the access already differs from what the app has
    assert answered.access and answered.response.headers["ETag"] != etag
    # With the current version, the wait holds.
    started = time.monotonic()
    client.get(f"/v1/users/alice/access?wait=0.4&since={answered.response.headers['ETag']}", headers=OPERATOR)
    assert time.monotonic() - started >= 0.35


def test_an_access_expiring_during_the_wait_ends_it(app, client, runtime):
    with unit_of_work(runtime.session_factory)() as uow:
        uow.session.add(
            Grant(
                customer_id="alice",
                resource="module:algebra",
                mode="full",
                expires_ms=wall_clock_ms() + 600,
                sources="[]",
                updated_ms=0,
            )
        )
    poll = Timed(app.test_client(), "/v1/users/alice/access?wait=10")
    poll.mark()
    assert poll.join() < 3.0
    assert poll.access == []


def test_invalid_wait_is_400(client):
    for wait in ("-1", "soon", "", "nan"):
        response = client.get(f"/v1/users/alice/access?wait={wait}", headers=OPERATOR)
        assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_only_committed_grant_changes_are_published(settings, runtime):
    client = redis_lib.Redis.from_url(redis_url(settings))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel_for(client))
    pubsub.get_message(timeout=1)

    def add_grant(customer_id: str) -> None:
        with unit_of_work(runtime.session_factory)() as uow:
            uow.session.add(
                Grant(customer_id=customer_id, resource="r", mode="m", expires_ms=None, sources="[]", updated_ms=0)
            )
            uow.session.flush()
            if customer_id == "rolled-back":
                raise RuntimeError("abort the unit of work")

    with contextlib.suppress(RuntimeError):
        add_grant("rolled-back")
    add_grant("committed")
    with unit_of_work(runtime.session_factory)() as uow:  # a transaction touching no grant
        uow.ledger.lock_customer("someone")
    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message:
            messages.append(message["data"])
    pubsub.close()
    assert messages == [b'["committed"]']


def test_publishing_never_fails_the_caller():
    def unreachable():
        return redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)

    AccessNotifier(unreachable).publish(["alice"])  # logged, not raised


def test_waiters_poll_while_the_subscription_is_down():
    def unreachable():
        return redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)

    watch = AccessWatch(unreachable, retry_s=0.1)
    reads: list[int] = []

    def read() -> int:
        reads.append(1)
        return len(reads)

    result = wait_for_change(
        watch,
        "alice",
        read,
        lambda n: "changed" if n >= 3 else "same",
        baseline=None,
        wait_s=5,
        degraded_recheck_s=0.1,
    )
    watch.stop()
    assert result == 3  # re-read until it changed, long before the 5 s wait ran out


def test_purchase_to_visible_access_through_a_real_worker(settings, runtime, simulator, live_server):
    simulator.webhook_url = f"{live_server}/webhooks/revenuecat"
    simulator.auto_deliver = True
    simulator.state.add_listener(simulator._deliver_quietly)
    headers = OPERATOR
    with celery_worker(settings, concurrency=1):
        first = requests.get(f"{live_server}/v1/users/carol/access", headers=headers, timeout=5)
        etag = first.headers["ETag"].strip('"')
        result: dict = {}

        def poll() -> None:
            r = requests.get(f"{live_server}/v1/users/carol/access?wait=25&since={etag}", headers=headers, timeout=30)
            result["at"], result["body"] = time.monotonic(), r.json()

        thread = threading.Thread(target=poll)
        thread.start()
        wait_for(lambda: runtime.access_watch.waiting() >= 1, what="the long-poll to wait")
        simulator.state.purchase_non_renewing("carol", "h01enb")  # the simulator delivers the webhook
        thread.join(30)
    # The wait is 25 s: access in the answer means the grant woke it (latency is bench/'s).
    assert [a["resource"] for a in result["body"]["access"]] == ["course:H01ENB"]
