"""The group commit's settle: under load (the last batch held several webhooks) the writer
first lets the webhooks on their way arrive, so that they join the next batch; never after a
lone webhook, and a settle that fails only shortens the wait."""

from __future__ import annotations

import threading
import time

from persistence.inbox import Stored
from services.group_commit import GroupCommitter
from tests.services.group_commit_support import Publisher, body, held_then, store_all


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
            while committer.queued < 5 and time.monotonic() < deadline:
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
