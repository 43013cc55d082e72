"""The intake's template publisher sends exactly the message celery.send_task would."""

import base64
import json

import redis as redis_lib

from adapters.embedded_redis import redis_url
from adapters.task_publisher import TaskPublisher
from tasks.celery_app import create_celery
from tasks.names import INBOX_PROCESS


def normalised(raw: bytes) -> dict:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for key in ("id", "root_id", "correlation_id"):
        message["headers"].pop(key, None)
    message["properties"].pop("correlation_id", None)
    message["properties"].pop("delivery_tag", None)
    return message


def test_template_message_equals_send_task_message(settings, runtime):
    app = create_celery(settings)
    client = redis_lib.Redis.from_url(redis_url(settings))
    publisher = TaskPublisher(app, INBOX_PROCESS)
    assert not publisher.fallback, "the template path should be available on the Redis broker"
    publisher.publish(41)
    assert publisher.ready and not publisher.fallback
    app.send_task("inbox.process", args=(41,), retry=False)
    template, reference = client.lrange("celery", 0, -1)  # LPUSH: newest first
    assert normalised(template) == normalised(reference)
    assert json.loads(template)["headers"]["id"] != json.loads(reference)["headers"]["id"]


def test_broker_down_raises_and_the_next_publish_tries_again(settings, runtime):
    app = create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    publisher = TaskPublisher(app, INBOX_PROCESS)
    for _ in range(2):
        try:
            publisher.publish(1)
        except Exception:
            pass
        else:
            raise AssertionError("publishing to a dead broker must fail")
    assert not publisher.ready
