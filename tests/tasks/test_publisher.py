"""The intake's publisher sends exactly the message celery.send_task would, several per call in
the order given, and fails loudly (nothing half-sent silently) when the broker is down."""

import base64
import json

import pytest
import redis as redis_lib
from kombu.exceptions import OperationalError

from adapters.embedded_redis import redis_url
from adapters.task_publisher import TaskPublisher
from tasks.celery_app import create_celery
from tasks.names import INBOX_PROCESS


def normalised(raw: bytes) -> dict:
    """A queued message without what differs between any two messages (ids, delivery tag)."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for key in ("id", "root_id", "correlation_id"):
        message["headers"].pop(key, None)
    message["properties"].pop("correlation_id", None)
    message["properties"].pop("delivery_tag", None)
    return message


@pytest.fixture
def queue(settings, runtime):
    client = redis_lib.Redis.from_url(redis_url(settings))
    yield client
    client.close()


def test_the_message_is_the_one_send_task_sends(settings, queue):
    app = create_celery(settings)
    TaskPublisher(app, INBOX_PROCESS).publish(41)
    app.send_task(INBOX_PROCESS, args=(41,), retry=False)
    published, reference = queue.lrange("celery", 0, -1)  # LPUSH: newest first
    assert normalised(published) == normalised(reference)
    assert json.loads(published)["headers"]["id"] != json.loads(reference)["headers"]["id"]
    assert json.loads(published)["headers"]["task"] == "inbox.process"


def test_many_keys_are_queued_in_order_each_its_own_task(settings, queue):
    app = create_celery(settings)
    TaskPublisher(app, INBOX_PROCESS).publish_many([7, 8, 9])
    # a worker pops from the right: the first key published is the first taken
    taken = [normalised(m) for m in reversed(queue.lrange("celery", 0, -1))]
    assert [m["body"][0] for m in taken] == [[7], [8], [9]]
    assert len({json.loads(m)["headers"]["id"] for m in queue.lrange("celery", 0, -1)}) == 3


def test_broker_down_raises_every_time_and_sends_nothing(settings, queue):
    app = create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    publisher = TaskPublisher(app, INBOX_PROCESS)
    for _ in range(2):  # the next publish tries again, and fails again
        with pytest.raises(OperationalError):
            publisher.publish_many([1, 2])
    assert queue.llen("celery") == 0
