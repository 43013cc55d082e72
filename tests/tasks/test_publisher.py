"""The intake's publisher sends exactly the message celery.send_task would: one key as
``inbox.process``, several as one ``inbox.process_group`` in the order given; it fails loudly
(nothing half-sent silently) when the broker is down."""

import base64
import json

import pytest
import redis as redis_lib
from kombu.exceptions import OperationalError

from adapters.embedded_redis import redis_url
from adapters.task_publisher import TaskPublisher
from tasks.celery_app import create_celery
from tasks.names import INBOX_PROCESS, INBOX_PROCESS_GROUP


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


def publisher(app) -> TaskPublisher:
    return TaskPublisher(app, INBOX_PROCESS, INBOX_PROCESS_GROUP)


def test_the_message_is_the_one_send_task_sends(settings, queue):
    app = create_celery(settings)
    publisher(app).publish(41)
    app.send_task(INBOX_PROCESS, args=(41,), retry=False)
    published, reference = queue.lrange("celery", 0, -1)  # LPUSH: newest first
    assert normalised(published) == normalised(reference)
    assert json.loads(published)["headers"]["id"] != json.loads(reference)["headers"]["id"]
    assert json.loads(published)["headers"]["task"] == "inbox.process"


def test_keys_stored_together_are_one_group_message_in_order(settings, queue):
    app = create_celery(settings)
    publisher(app).publish_group([7, 8, 9])
    app.send_task(INBOX_PROCESS_GROUP, args=([7, 8, 9],), retry=False)
    published, reference = queue.lrange("celery", 0, -1)
    assert normalised(published) == normalised(reference)
    assert normalised(published)["body"][0] == [[7, 8, 9]]  # the order a worker takes them in
    assert json.loads(published)["headers"]["task"] == "inbox.process_group"


def test_a_group_of_one_is_a_plain_message_and_none_is_nothing(settings, queue):
    app = create_celery(settings)
    publisher(app).publish_group([])
    assert queue.llen("celery") == 0
    publisher(app).publish_group([5])
    [message] = queue.lrange("celery", 0, -1)
    assert json.loads(message)["headers"]["task"] == "inbox.process" and normalised(message)["body"][0] == [5]


def test_broker_down_raises_every_time_and_sends_nothing(settings, queue):
    app = create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    for _ in range(2):  # the next publish tries again, and fails again
        with pytest.raises(OperationalError):
            publisher(app).publish_group([1, 2])
    assert queue.llen("celery") == 0
