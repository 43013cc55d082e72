"""``inbox.process_group``: the rows one intake batch stored together, named by one message,
are each processed as ``inbox.process`` would; a row that must wait goes on as its own message,
and a group that runs long passes the rest on, so that no row holds the others."""

from __future__ import annotations

import pytest
import redis as redis_lib

from adapters.embedded_redis import redis_url
from tasks import inbox as inbox_tasks
from tasks.celery_app import create_celery
from tests.services.inbox_support import intake, row
from tests.support import queued_tasks


@pytest.fixture
def queue(settings, runtime):
    """The broker's default queue, emptied of what the test intake sent (one message per row)."""
    client = redis_lib.Redis.from_url(redis_url(settings))
    client.delete("celery")
    yield client
    client.close()


def purchases(client, simulator, users: list[str]) -> list[int]:
    return [intake(client, simulator.state.purchase_subscription(user, "premium_monthly")) for user in users]


def test_every_row_of_a_group_is_processed_in_turn(settings, runtime, simulator, client, queue):
    ids = purchases(client, simulator, ["ann", "ben", "cy"])
    queue.delete("celery")
    done = create_celery(settings).tasks["inbox.process_group"].apply(args=(ids,)).get()
    assert done == {"processed": 3}
    assert [row(runtime, i).status for i in ids] == ["processed"] * 3
    assert queue.llen("celery") == 0  # nothing left to send on


def test_a_row_that_must_wait_goes_on_alone_and_the_rest_are_not_held(settings, runtime, simulator, client, queue):
    ids = purchases(client, simulator, ["ann", "ben", "cy"])
    queue.delete("celery")
    simulator.state.fail_next(1, status=503)  # the first row's read fails: that row retries
    done = create_celery(settings).tasks["inbox.process_group"].apply(args=(ids,)).get()
    assert done == {"retrying": 1, "processed": 2}
    assert [row(runtime, i).status for i in ids] == ["retrying", "processed", "processed"]
    [(task, args, eta)] = queued_tasks(settings)
    assert (task, args) == ("inbox.process", [ids[0]]) and eta is not None  # after its backoff


def test_a_group_that_runs_long_passes_the_rest_on_in_one_message(
    settings, runtime, simulator, client, queue, monkeypatch
):
    ids = purchases(client, simulator, ["ann", "ben", "cy"])
    queue.delete("celery")
    monkeypatch.setattr(inbox_tasks, "GROUP_TIME_BUDGET_S", 0.0)  # spent once the first row is done
    done = create_celery(settings).tasks["inbox.process_group"].apply(args=(ids,)).get()
    assert done == {"processed": 1, "passed_on": 2}
    assert [row(runtime, i).status for i in ids] == ["processed", "received", "received"]
    assert queued_tasks(settings) == [("inbox.process_group", [ids[1:]], None)]
