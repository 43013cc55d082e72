"""The intake's group commit: webhooks waiting together are stored with one statement and
enqueued with one publish call, and each request gets the answer it would have got alone.

Run with real threads; a batch is made to form deterministically by holding the writer in the
publish of a first webhook while the others arrive (tests/services/group_commit_support.py).
"""

from __future__ import annotations

import pytest

from persistence.inbox import Stored, store_webhook
from services.group_commit import GroupCommitter
from tests.services.group_commit_support import Publisher, body, held_then, rows


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
