"""The group commit when something fails: the broker (rows stored and answered, left for the
redrive), the database (each request gets the storage error), a writer too slow to answer or
killed outright (a timeout, never a hang, and the next webhook starts another writer)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import SQLAlchemyError

from persistence.database import make_engine
from persistence.inbox import Stored, store_webhook
from services.group_commit import GroupCommitter, StoreTimeout
from tests.services.group_commit_support import Publisher, body, rows, store_all


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
