"""Sending tasks by key from outside a worker (the intake's ``inbox.process``), with Celery's
documented message API on its pooled producers.

``celery.send_task`` rebuilds everything for each message, and kombu's Redis transport makes a
new client for each publish: more CPU than storing the webhook. Here the message is made and
sent by the same calls send_task makes (``amqp.router``, ``amqp.create_task_message``,
``amqp.send_task_message``, so routes and publish signals still apply), and the messages of one
call go out in one ``Producer.batch()``: on Redis, one pipeline. tests/tasks/test_publisher.py
checks that the message is send_task's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from celery import Celery
from kombu import Queue

PUBLISH_POOL_WAIT_S = 5.0  # for a free producer; then the caller's row waits for the redrive


class TaskPublisher:
    """Publishes ``task_name(key)``. Its producers come from the app's producer pool, which
    Celery rebuilds in a forked child: one publisher serves a process before and after a fork.
    Raises the broker's error (kombu's, redis's) when the messages may not have been taken:
    the caller decides what a lost message costs."""

    def __init__(self, celery: Celery, task_name: str) -> None:
        self.celery = celery
        self.task_name = task_name

    def publish(self, key: int | str) -> None:
        self.publish_many([key])

    def publish_many(self, keys: Sequence[int | str]) -> None:
        """One message per key, queued in the order given (a worker takes the first first)."""
        if not keys:
            return
        app, name = self.celery, self.task_name
        amqp = app.amqp
        with app.producer_pool.acquire(block=True, timeout=PUBLISH_POOL_WAIT_S) as producer, producer.batch():
            bound: dict[str, Queue] = {}  # each queue bound to the producer's channel once, not per message
            for key in keys:
                args = (key,)
                options = amqp.router.route({}, name, args, {})
                queue = options.get("queue")
                if isinstance(queue, Queue):
                    options["queue"] = bound.get(queue.name) or bound.setdefault(
                        queue.name, queue.bind(producer.channel)
                    )
                message = amqp.create_task_message(
                    str(uuid.uuid4()),
                    name,
                    args,
                    reply_to=app.thread_oid,
                    create_sent_event=app.conf.task_send_sent_event,
                    argsrepr=repr(args),  # what send_task's saferepr gives for one key, without its cost
                    kwargsrepr="{}",
                    **options,
                )
                amqp.send_task_message(producer, name, message, retry=False, **options)
