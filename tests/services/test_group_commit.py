"""The intake's group commit: webhooks waiting together are stored with one statement and
enqueued with one publish call, and each request gets the answer it would have got alone.

Run here with real threads (the web uses it under gevent, where the same code runs on
greenlets: tests/client/test_gevent_server.py). A batch is made to form deterministically by
holding the writer in the publish of a first webhook while the others arrive.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from persistence.database import make_engine
from persistence.inbox import Stored, store_webhook
from persistence.models import InboxEvent
from services.group_commit import GroupCommitter, StoreTimeout


def body(event_id: str, event_type: str = "INITIAL_PURCHASE") -> bytes:
    return json.dumps(
        {"api_version": "1.0", "event": {"id": event_id, "type": event_type, "app_user_id": "alice"}}
    ).encode()


class Publisher:
    """Records what the committer publishes; holds the first publish until released."""

    def __init__(self, fail: bool = False):
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, ids: list[int]) -> None:
        self.calls.append(list(ids))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail:
            raise ConnectionError("broker down")


def store_all(committer: GroupCommitter, webhooks: list[tuple[str, str]]) -> dict[int, Stored | BaseException]:
    """Store each webhook from its own thread; answers by position."""
    answers: dict[int, Stored | BaseException] = {}

    def one(i: int, event_id: str, event_type: str) -> None:
        try:
            answers[i] = committer.store(body(event_id, event_type), event_id, event_type)
        except BaseException as exc:
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i, e, t)) for i, (e, t) in enumerate(webhooks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return answers


def held_then(committer: GroupCommitter, publisher: Publisher, webhooks: list[tuple[str, str]]):
    """A first webhook holds the writer in its publish; ``webhooks`` queue meanwhile and go
    together in the next batch once it is released. Returns the first answer and theirs."""
    first: dict[str, Stored] = {}
    t = threading.Thread(
        target=lambda: first.setdefault("a", committer.store(body("first"), "first", "INITIAL_PURCHASE"))
    )
    t.start()
    assert publisher.entered.wait(10)
    done: dict[int, Stored | BaseException] = {}
    runner = threading.Thread(target=lambda: done.update(store_all(committer, webhooks)))
    runner.start()
    deadline = time.monotonic() + 10
    while len(committer._queue) < len(webhooks) and time.monotonic() < deadline:
        time.sleep(0.005)
    publisher.release.set()
    t.join(10)
    runner.join(15)
    return first["a"], done


def rows(runtime) -> dict[str, InboxEvent]:
    with runtime.session_factory() as session:
        return {r.event_id: r for r in session.scalars(select(InboxEvent))}


@pytest.fixture
def committer_and_publisher(runtime):
    publisher = Publisher()
    committer = GroupCommitter(runtime.db, publisher)
    yield committer, publisher
    publisher.release.set()
    committer.stop()


def test_webhooks_waiting_together_are_stored_in_one_batch_and_enqueued_in_one_publish(
    runtime, committer_and_publisher
):
    committer, publisher = committer_and_publisher
    webhooks = [(f"evt-{i}", "RENEWAL") for i in range(12)] + [("evt-test", "TEST")]
    first, answers = held_then(committer, publisher, webhooks)

    assert first.enqueue and not first.duplicate
    assert committer.batches == 2 and committer.rows == 14
    stored = rows(runtime)
    assert set(stored) == {"first", "evt-test", *(f"evt-{i}" for i in range(12))}
    for i, (event_id, _type) in enumerate(webhooks[:-1]):
        answer = answers[i]
        assert isinstance(answer, Stored) and answer == Stored(stored[event_id].id, False, True, "received")
        assert stored[event_id].body == body(event_id, "RENEWAL") and stored[event_id].status == "received"
    # an informational type is kept and answered, not enqueued
    assert answers[12] == Stored(stored["evt-test"].id, False, False, "ignored")
    # the batch's new rows in one publish, in the order the requests queued
    assert publisher.calls[0] == [first.inbox_id]
    assert len(publisher.calls) == 2 and sorted(publisher.calls[1]) == sorted(stored[e].id for e, _ in webhooks[:-1])


def test_duplicates_in_a_batch_and_of_stored_rows_are_answered_as_alone(runtime, committer_and_publisher):
    committer, publisher = committer_and_publisher
    store_webhook(runtime.db, body("old"), "old", "RENEWAL")
    webhooks = [("new", "RENEWAL"), ("new", "RENEWAL"), ("old", "RENEWAL"), ("new", "RENEWAL")]
    _first, answers = held_then(committer, publisher, webhooks)

    stored = rows(runtime)
    fresh = [a for a in answers.values() if isinstance(a, Stored) and not a.duplicate]
    assert len(fresh) == 1 and fresh[0] == Stored(stored["new"].id, False, True, "received")
    assert sum(1 for a in answers.values() if a == Stored(None, True, False, "duplicate")) == 3
    assert publisher.calls[1] == [stored["new"].id]  # enqueued once; the old row not again


def test_a_row_the_database_refuses_costs_only_its_own_request(runtime, committer_and_publisher):
    committer, publisher = committer_and_publisher
    # the view refuses such ids as malformed before they reach the committer; here one gets
    # through to show what one bad row does to a batch (any driver refuses a lone surrogate)
    webhooks = [("ok-1", "RENEWAL"), ("bad-\ud800", "RENEWAL"), ("ok-2", "RENEWAL")]
    _first, answers = held_then(committer, publisher, webhooks)

    assert isinstance(answers[1], Exception) and not isinstance(answers[1], Stored)
    stored = rows(runtime)
    assert answers[0] == Stored(stored["ok-1"].id, False, True, "received")
    assert answers[2] == Stored(stored["ok-2"].id, False, True, "received")
    assert sorted(publisher.calls[1]) == sorted([stored["ok-1"].id, stored["ok-2"].id])


def test_broker_down_the_rows_are_stored_and_answered_and_wait_for_redrive(runtime):
    publisher = Publisher(fail=True)
    publisher.release.set()
    committer = GroupCommitter(runtime.db, publisher)
    try:
        answers = store_all(committer, [(f"evt-{i}", "RENEWAL") for i in range(5)])
    finally:
        committer.stop()
    stored = rows(runtime)
    assert len(stored) == 5 and all(r.status == "received" for r in stored.values())
    assert all(isinstance(a, Stored) and a.enqueue for a in answers.values())


def test_database_down_every_request_gets_the_storage_error(settings, runtime):
    down = make_engine(settings.with_(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"), pool_pre_ping=False)
    publisher = Publisher()
    publisher.release.set()
    committer = GroupCommitter(down, publisher)
    try:
        answers = store_all(committer, [(f"evt-{i}", "RENEWAL") for i in range(4)])
    finally:
        committer.stop()
        down.dispose()
    assert len(answers) == 4 and all(isinstance(a, SQLAlchemyError) for a in answers.values())
    assert publisher.calls == []


def test_a_writer_that_does_not_answer_in_time_is_a_timeout_not_a_hang(runtime):
    publisher = Publisher()
    committer = GroupCommitter(runtime.db, publisher, answer_timeout_s=0.3)
    try:
        with pytest.raises(StoreTimeout):
            committer.store(body("slow"), "slow", "RENEWAL")
    finally:
        publisher.release.set()
        committer.stop()
    # the webhook was stored all the same: RevenueCat's retry of it is a duplicate
    assert "slow" in rows(runtime)
    assert store_webhook(runtime.db, body("slow"), "slow", "RENEWAL").duplicate


def test_batches_are_bounded_in_rows_and_bytes(runtime):
    publisher = Publisher()
    committer = GroupCommitter(runtime.db, publisher, max_rows=4, max_bytes=10_000)
    try:
        _first, answers = held_then(committer, publisher, [(f"evt-{i}", "RENEWAL") for i in range(10)])
    finally:
        publisher.release.set()
        committer.stop()
    assert all(isinstance(a, Stored) and a.enqueue for a in answers.values())
    assert committer.rows == 11 and committer.batches == 1 + 3  # 10 queued: 4 + 4 + 2
    assert [len(c) for c in publisher.calls] == [1, 4, 4, 2]


def test_a_webhook_still_queued_when_its_wait_ends_is_taken_out_and_never_stored(runtime):
    publisher = Publisher()
    committer = GroupCommitter(runtime.db, publisher, answer_timeout_s=0.5)
    first: list[BaseException] = []

    def store_first() -> None:
        with pytest.raises(StoreTimeout) as raised:
            committer.store(body("first"), "first", "RENEWAL")
        first.append(raised.value)

    t = threading.Thread(target=store_first)
    try:
        t.start()
        assert publisher.entered.wait(10)  # the writer is held with "first" in flight
        with pytest.raises(StoreTimeout, match="not stored"):
            committer.store(body("queued"), "queued", "RENEWAL")
    finally:
        publisher.release.set()
        t.join(10)
        committer.stop()
    assert "first" in rows(runtime) and "queued" not in rows(runtime)


class Killed(BaseException):
    """Stands for what kills a greenlet or thread (GreenletExit, a gevent Timeout)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer dies, as meant
def test_a_killed_writer_fails_its_batch_with_a_storage_error_and_the_next_webhook_starts_another(runtime):
    calls: list[list[int]] = []

    def publish(ids: list[int]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise Killed()

    committer = GroupCommitter(runtime.db, publish)
    try:
        with pytest.raises(StoreTimeout, match="writer stopped"):
            committer.store(body("a"), "a", "RENEWAL")
        assert committer.store(body("b"), "b", "RENEWAL").enqueue  # a new writer
    finally:
        committer.stop()
    assert set(rows(runtime)) == {"a", "b"} and len(calls) == 2


def test_after_a_broker_failure_the_next_batches_skip_the_broker_for_a_moment(runtime):
    calls: list[list[int]] = []

    def publish(ids: list[int]) -> None:
        calls.append(ids)
        raise ConnectionError("broker hangs")

    committer = GroupCommitter(runtime.db, publish, broker_pause_s=60)
    try:
        answers = [committer.store(body(f"e{i}"), f"e{i}", "RENEWAL") for i in range(3)]
    finally:
        committer.stop()
    assert all(a.enqueue and not a.duplicate for a in answers)  # stored, answered 200, left for the redrive
    assert len(calls) == 1


def test_under_load_the_writer_settles_so_that_the_webhooks_on_their_way_join_the_next_batch(runtime):
    """``settle`` (under gevent: until the worker is idle, about 1 ms at most) runs before the
    batch that follows a batch of several webhooks, never after a lone one; what arrives while
    it runs goes in that next batch."""
    publisher = Publisher()
    publisher.release.set()  # nothing held
    settles: list[int] = []
    on_their_way: dict[int, Stored | BaseException] = {}
    late: list[threading.Thread] = []
    settled = threading.Event()

    def settle() -> None:
        settles.append(committer.batches)
        if len(settles) == 1:  # webhooks arriving while the writer settles
            arriving = threading.Thread(
                target=lambda: on_their_way.update(store_all(committer, [(f"way-{i}", "RENEWAL") for i in range(5)]))
            )
            arriving.start()
            late.append(arriving)
            settled.set()  # only once started: the test joins it as soon as this is set
            deadline = time.monotonic() + 10
            while len(committer._queue) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)

    committer = GroupCommitter(runtime.db, publisher, settle=settle)
    try:
        committer.store(body("lone-1"), "lone-1", "INITIAL_PURCHASE")
        committer.store(body("lone-2"), "lone-2", "INITIAL_PURCHASE")
        assert settles == []  # batches of one: no waiting
        publisher.calls.clear()
        publisher.entered.clear()
        publisher.release.clear()  # hold the next publish so that two webhooks queue behind it
        _first, answers = held_then(committer, publisher, [("load-1", "RENEWAL"), ("load-2", "RENEWAL")])
        assert all(isinstance(a, Stored) for a in answers.values()) and committer.batches == 4
        # the writer settles after it has answered the batch of two: wait for it, do not race it
        assert settled.wait(10), "the writer never settled"
        late[0].join(15)
        # after the batch of two, before the next (and, racing with this check, after the five)
        assert settles[0] == 4 and set(settles) <= {4, 5}
        assert all(isinstance(a, Stored) and a.enqueue for a in on_their_way.values()) and len(on_their_way) == 5
        assert committer.batches == 5 and committer.rows == 2 + 1 + 2 + 5  # the five went together
        new_ids = [a.inbox_id for a in on_their_way.values() if isinstance(a, Stored) and a.inbox_id is not None]
        assert sorted(publisher.calls[-1]) == sorted(new_ids)
    finally:
        publisher.release.set()
        committer.stop()


def test_a_settle_that_fails_only_shortens_the_wait(runtime):
    def failing_settle() -> None:
        raise ZeroDivisionError

    publisher = Publisher()
    publisher.release.clear()
    committer = GroupCommitter(runtime.db, publisher, settle=failing_settle)
    try:
        _first, answers = held_then(committer, publisher, [("a", "RENEWAL"), ("b", "RENEWAL")])
        assert all(isinstance(a, Stored) for a in answers.values())
        after = committer.store(body("after"), "after", "RENEWAL")  # settle raised: written anyway
        assert after.enqueue and committer.batches == 3
    finally:
        publisher.release.set()
        committer.stop()
