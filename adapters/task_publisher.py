"""Publishing the inbox task from the intake with one LPUSH (the intake's hot path).

``celery.send_task`` costs about 0.7 ms of CPU per webhook (routing, building the message, kombu
creating a redis client for every publish): more than storing the webhook. ``TaskPublisher``
builds the message through Celery and kombu themselves, once per process, and then only fills
in what differs between messages. It falls back to ``send_task`` whenever that is not provably
identical (see the class docstring); tests/tasks/test_publisher.py checks both give the same
message.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

PUBLISH_POOL_WAIT_S = 5.0  # for a free broker connection; then the row waits for the redrive


class _NoTemplate(Exception):
    """This Celery/kombu set-up cannot be published with a template: use send_task."""


_SENTINELS = (
    ("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", 918273645546372819),
    ("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", 827364554637281909),
)


class TaskPublisher:
    """Publishes ``<task_name>(inbox_id)`` to Celery's Redis broker with one LPUSH.

    ``celery.send_task`` cost about 0.7 ms of CPU per webhook here (routing, building the
    message, and kombu creating a redis client for every publish): more than storing the
    webhook. This builds the message through Celery and kombu themselves, once per process: a
    real ``send_task`` whose final LPUSH is captured, twice, with two sentinel task ids and
    arguments. Only what differs between messages is substituted afterwards: the task id (id,
    root_id, correlation_id), the argument (in the body and in argsrepr) and kombu's delivery
    tag, and the template must render both captured messages back byte for byte. The LPUSH goes
    through kombu's own redis client for that channel (same pool, timeouts, no retries).

    Plain ``send_task`` is used instead when anything else hooks publishing (task-publish
    signals, Sentry's send_task wrapper, sent events, custom routes) or the broker is not
    kombu's Redis transport, and whenever building the template fails for another reason than
    the broker being unreachable.
    """

    def __init__(self, celery, task_name: str) -> None:
        self.celery = celery
        self.task_name = task_name
        self.lock = threading.Lock()
        self.ready = False
        self.fallback = not self._lean_possible(celery)
        self.connection = None
        self.client = None
        self.key = ""
        self.render: Callable[[str, str, str, str], str] | None = None
        self.render_body: Callable[[str], str] | None = None

    @staticmethod
    def _lean_possible(celery) -> bool:
        from celery import Celery, signals

        conf = celery.conf
        routes = conf.task_routes or ()
        # routes given as mappings depend on the task name only (the captured message has
        # them applied); a router function could also depend on the arguments
        static_routes = isinstance(routes, Mapping) or all(isinstance(r, Mapping) for r in routes)
        return static_routes and not (
            signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
            or signals.task_sent.receivers
            or hasattr(Celery.send_task, "__wrapped__")  # e.g. sentry_sdk's Celery integration
            or hasattr(type(celery).send_task, "__wrapped__")
            or conf.task_send_sent_event
            or conf.task_always_eager
        )

    def publish(self, inbox_id: int) -> None:
        self.publish_many([inbox_id])

    def publish_many(self, inbox_ids: list[int]) -> None:
        """``publish`` for each id, in order; with the template, all in one LPUSH (the intake's
        group commit): the worker pops them in the order given."""
        if not inbox_ids:
            return
        if not self.ready and not self.fallback:
            self._build()
        if self.fallback:
            for inbox_id in inbox_ids:
                self.celery.send_task(self.task_name, args=(inbox_id,), retry=False)
            return
        self.client.lpush(self.key, *[self._message(inbox_id) for inbox_id in inbox_ids])

    def _message(self, inbox_id: int) -> str:
        arg = str(int(inbox_id))
        body = base64.b64encode(self.render_body(arg).encode("utf-8")).decode("ascii")
        return self.render(str(uuid.uuid4()), arg, body, str(uuid.uuid4()))

    def _build(self) -> None:
        with self.lock:
            if self.ready or self.fallback:
                return
            connection = self.celery.connection_for_write()
            try:
                channel = connection.default_channel  # connects: raises while the broker is down
            except Exception:
                connection.release()
                raise
            try:
                if connection.transport.driver_type != "redis" or getattr(channel, "_expires", None):
                    raise _NoTemplate("not kombu's redis transport, or queues that expire")
                from kombu.transport.redis import SentinelChannel

                if isinstance(channel, SentinelChannel):  # its clients find the master through the sentinels
                    raise _NoTemplate("a Sentinel-managed broker")
                captures = [self._capture(channel, task_id, arg) for task_id, arg in _SENTINELS]
                key, render, render_body = self._template(captures)
                client = _blocking_client(channel)
            except Exception as exc:
                connection.release()
                if isinstance(exc, _NoTemplate):
                    log.info("intake publishes with celery.send_task: %s", exc)
                elif _is_broker_error(exc):
                    raise  # try again with the next webhook
                else:
                    log.warning("intake publishes with celery.send_task: no message template", exc_info=True)
                self.fallback = True
                return
            self.connection, self.client, self.key, self.render, self.render_body = (
                connection,
                client,
                key,
                render,
                render_body,
            )
            self.ready = True

    def _capture(self, channel, task_id: str, arg: int) -> tuple[str, dict, str]:
        from kombu import Producer
        from kombu.utils.json import dumps

        captured: list[tuple[str, dict]] = []

        def put(queue, message, **kwargs):
            if kwargs.get("_publish_batch") is not None:
                raise _NoTemplate("kombu publishes in batches")
            captured.append((queue, message))

        channel._put = put  # the one place kombu's redis transport writes a message
        try:
            self.celery.send_task(self.task_name, args=(arg,), task_id=task_id, retry=False, producer=Producer(channel))
        finally:
            del channel._put
        if len(captured) != 1:
            raise _NoTemplate(f"send_task published {len(captured)} messages")
        queue, message = captured[0]
        if message.get("properties", {}).get("body_encoding") != "base64":
            raise _NoTemplate("message body is not base64-encoded")
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        return key, message, dumps(message)

    @staticmethod
    def _template(captures: list[tuple[str, dict, str]]):
        """Split the first captured message into constant pieces and slots; check that it
        renders both captured messages exactly."""
        (key, message, payload), (key2, message2, payload2) = captures
        if key != key2:
            raise _NoTemplate("the queue depends on the task id or argument")
        (task_id, arg), (task_id2, arg2) = _SENTINELS
        body = base64.b64decode(message["body"]).decode("utf-8")
        tag = message["properties"]["delivery_tag"]
        values = {"id": task_id, "arg": str(arg), "body": message["body"], "tag": tag}
        if payload.count(message["body"]) != 1 or payload.count(tag) != 1 or task_id not in payload:
            raise _NoTemplate("the message does not hold the captured values once each")
        pieces, slots = _split(payload, values)
        body_pieces, body_slots = _split(body, {"arg": str(arg)})

        def render_body(arg_text: str) -> str:
            return _join(body_pieces, body_slots, {"arg": arg_text})

        def render(task_id_text: str, arg_text: str, body_b64: str, tag_text: str) -> str:
            return _join(pieces, slots, {"id": task_id_text, "arg": arg_text, "body": body_b64, "tag": tag_text})

        for tid, a, msg, expected in ((task_id, arg, message, payload), (task_id2, arg2, message2, payload2)):
            b64 = base64.b64encode(render_body(str(a)).encode("utf-8")).decode("ascii")
            if b64 != msg["body"] or render(tid, str(a), b64, msg["properties"]["delivery_tag"]) != expected:
                raise _NoTemplate("the message holds other values that change between messages")
        return key, render, render_body


def _blocking_client(channel):
    """A client with the channel's own connection parameters (kombu's, as ``_put`` uses, max
    connections included) on a pool that waits for a free connection instead of failing.

    kombu's pool raises "Too many connections" past ``max_connections`` (10). Under the web's
    gevent workers more webhooks than that publish at once from one process, and each one
    over the limit used to wait for the redrive (a minute) instead of being queued."""
    import redis

    params = channel._connparams()
    pool = redis.BlockingConnectionPool(timeout=PUBLISH_POOL_WAIT_S, **params)
    kwargs = {"connection_pool": pool}
    credential_provider = pool.connection_kwargs.get("credential_provider")
    if credential_provider is not None:
        kwargs["credential_provider"] = credential_provider
    return channel.Client(**kwargs)


def _split(text: str, values: dict[str, str]) -> tuple[list[str], list[str]]:
    """Constant pieces of ``text`` between occurrences of the given values, and which value
    (slot name) stood between each two pieces."""
    pieces, slots, pos = [], [], 0
    while True:
        found = [(text.find(v, pos), k) for k, v in values.items() if text.find(v, pos) >= 0]
        if not found:
            pieces.append(text[pos:])
            return pieces, slots
        at, name = min(found)
        pieces.append(text[pos:at])
        slots.append(name)
        pos = at + len(values[name])


def _join(pieces: list[str], slots: list[str], values: dict[str, str]) -> str:
    out = [pieces[0]]
    for slot, piece in zip(slots, pieces[1:], strict=False):
        out.append(values[slot])
        out.append(piece)
    return "".join(out)


def _is_broker_error(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, (OperationalError, RedisConnectionError, RedisTimeoutError, OSError))


_publishers_lock = threading.Lock()


def publisher_for(app, task_name: str) -> TaskPublisher:
    """This process's publisher of ``task_name`` for the app's Celery (a forked child builds its own)."""
    pid, publisher = app.extensions.get("intake_publisher", (None, None))
    if pid != os.getpid():
        with _publishers_lock:
            pid, publisher = app.extensions.get("intake_publisher", (None, None))
            if pid != os.getpid():
                publisher = TaskPublisher(app.extensions["celery"], task_name)
                app.extensions["intake_publisher"] = (os.getpid(), publisher)
    return publisher
