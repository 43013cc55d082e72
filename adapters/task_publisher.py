"""Sending tasks by key from outside a worker (the intake's ``inbox.process`` and
``inbox.process_group``), with Celery's documented message API on its pooled producers.

``celery.send_task`` rebuilds everything for each message, and kombu's Redis transport makes a
new client for each publish: more CPU than storing the webhook. Here the message is made and
sent by the same calls send_task makes (``amqp.router``, ``amqp.create_task_message``,
``amqp.send_task_message``, so routes and publish signals still apply), on a producer from the
app's pool. The keys stored together go in one message (``publish_group``): kombu's cost is per
message, several times what storing a row costs. tests/tasks/test_publisher.py checks that the
message is send_task's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery

PUBLISH_POOL_WAIT_S = 5.0  # for a free producer; then the caller's row waits for the redrive


class TaskPublisher:
    """Publishes ``task_name(key)`` for one key, ``group_task_name([key, ...])`` for several.
    Its producers come from the app's producer pool, which Celery rebuilds in a forked child:
    one publisher serves a process before and after a fork. Raises the broker's error (kombu's,
    redis's) when the message may not have been taken: the caller decides what a lost message
    costs."""

    def __init__(self, celery: Celery, task_name: str, group_task_name: str) -> None:
        self.celery = celery
        self.task_name = task_name
        self.group_task_name = group_task_name

    def publish(self, key: int | str) -> None:
        self._send(self.task_name, (key,))

    def publish_group(self, keys: Sequence[int | str]) -> None:
        """One message for the keys, in the order given (the worker takes them in that order)."""
        if len(keys) == 1:
            self.publish(keys[0])
        elif keys:
            self._send(self.group_task_name, (list(keys),))

    def _send(self, name: str, args: tuple[Any, ...]) -> None:
        app = self.celery
        amqp = app.amqp
        with app.producer_pool.acquire(block=True, timeout=PUBLISH_POOL_WAIT_S) as producer:
            options = amqp.router.route({}, name, args, {})
            message = amqp.create_task_message(
                str(uuid.uuid4()),
                name,
                args,
                reply_to=app.thread_oid,
                create_sent_event=app.conf.task_send_sent_event,
                argsrepr=repr(args),  # what send_task's saferepr gives for a few keys, without its cost
                kwargsrepr="{}",
                **options,
            )
            amqp.send_task_message(producer, name, message, retry=False, **options)
