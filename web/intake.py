"""POST /webhooks/revenuecat: authenticate, store the raw body durably, enqueue, answer 200.

Nothing here decides anything about access: the row is the contract, the task does the work.

This is the service's hot path (bench/intake.py measures it): the row is stored with one
precompiled statement in autocommit mode (engine/adapters/inbox.py store_webhook) on an engine
without checkout pings, and the task is published with a message template (_TaskPublisher).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import threading
import uuid
from typing import Callable, Mapping

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from engine.adapters.database import make_engine
from engine.adapters.inbox import store_webhook
from engine.revenuecat import MalformedEvent, envelope_key

log = logging.getLogger(__name__)
bp = Blueprint("intake", __name__)

PROCESS_EVENT = "engine.process_event"


@bp.post("/webhooks/revenuecat")
def revenuecat_webhook():  # noqa: ANN201
    settings = current_app.config["ENGINE_SETTINGS"]
    expected = settings.revenuecat_webhook_auth
    if not expected:
        # Never accept unauthenticated webhooks; 503 so RevenueCat retries once this is fixed.
        return jsonify(
            error="webhook_auth_not_configured",
            message="REVENUECAT_WEBHOOK_AUTH is empty: set it to the Authorization value configured in RevenueCat",
        ), 503
    provided = request.headers.get("Authorization", "")
    if not hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        return jsonify(error="unauthorized", message="Authorization header does not match"), 401
    body = request.get_data(cache=False)  # 413 is raised here past MAX_CONTENT_LENGTH
    db = _intake_engine(current_app.extensions["engine_runtime"])
    try:
        parsed = json.loads(body)
        key = envelope_key(parsed)
    except (ValueError, MalformedEvent) as exc:
        reason = str(exc) if isinstance(exc, MalformedEvent) else "body is not valid JSON"
        try:
            stored = store_webhook(db, body, None, None, malformed_reason=reason)
        except SQLAlchemyError:
            log.exception("could not keep a malformed webhook")
            return jsonify(error="storage_unavailable", message="could not store the webhook"), 503
        return jsonify(error="malformed", message=reason, inbox_id=stored.inbox_id), 400
    try:
        stored = store_webhook(db, body, key.event_id, key.event_type)
    except SQLAlchemyError:
        log.exception("could not store webhook %s", key.event_id)
        # Not 200: RevenueCat retries (5, 10, 20, 40, 80 minutes) while the database is down.
        return jsonify(error="storage_unavailable", message="could not store the webhook, retry later"), 503
    if stored.enqueue:
        try:
            _publisher(current_app).publish(stored.inbox_id)
        except Exception:  # noqa: BLE001 - any broker failure: the row is safe, redrive sends it
            log.warning("broker unavailable; inbox row %s waits for redrive", stored.inbox_id, exc_info=True)
    return jsonify(status=stored.status, duplicate=stored.duplicate, inbox_id=stored.inbox_id), 200


# --- storage ---------------------------------------------------------------------------------

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def _intake_engine(runtime) -> Engine:  # noqa: ANN001
    """The engine the intake stores with: on PostgreSQL one per process and database, in
    AUTOCOMMIT (store_webhook's single INSERT commits by itself: no BEGIN/COMMIT round trips,
    no switching per checkout) and without ``pool_pre_ping``, whose ``SELECT 1`` per checkout
    was a second round trip per webhook (store_webhook retries once when a pooled connection
    turns out dead); otherwise the runtime's own engine (SQLite)."""
    settings = runtime.settings
    if not settings.database_url.startswith("postgresql"):
        return runtime.db
    key = (os.getpid(), settings.database_url)
    engine = _engines.get(key)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = make_engine(settings, pool_pre_ping=False, isolation_level="AUTOCOMMIT")
    return engine


# --- publishing ------------------------------------------------------------------------------

class _NoTemplate(Exception):
    """This Celery/kombu set-up cannot be published with a template: use send_task."""


_SENTINELS = (
    ("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", 918273645546372819),
    ("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", 827364554637281909),
)


class _TaskPublisher:
    """Publishes ``engine.process_event(inbox_id)`` to Celery's Redis broker with one LPUSH.

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

    def __init__(self, celery) -> None:  # noqa: ANN001
        self.celery = celery
        self.lock = threading.Lock()
        self.ready = False
        self.fallback = not self._lean_possible(celery)
        self.connection = None
        self.client = None
        self.key = ""
        self.render: Callable[[str, str, str, str], str] | None = None
        self.render_body: Callable[[str], str] | None = None

    @staticmethod
    def _lean_possible(celery) -> bool:  # noqa: ANN001
        from celery import Celery
        from celery import signals

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
        if not self.ready and not self.fallback:
            self._build()
        if self.fallback:
            self.celery.send_task(PROCESS_EVENT, args=(inbox_id,), retry=False)
            return
        arg = str(int(inbox_id))
        task_id = str(uuid.uuid4())
        body = base64.b64encode(self.render_body(arg).encode("utf-8")).decode("ascii")
        self.client.lpush(self.key, self.render(task_id, arg, body, str(uuid.uuid4())))

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
                captures = [self._capture(channel, task_id, arg) for task_id, arg in _SENTINELS]
                key, render, render_body = self._template(captures)
                client = channel._create_client()  # kombu's client for its pool, as _put uses
            except Exception as exc:  # noqa: BLE001
                connection.release()
                if isinstance(exc, _NoTemplate):
                    log.info("intake publishes with celery.send_task: %s", exc)
                elif _is_broker_error(exc):
                    raise  # try again with the next webhook
                else:
                    log.warning("intake publishes with celery.send_task: no message template", exc_info=True)
                self.fallback = True
                return
            self.connection, self.client, self.key, self.render, self.render_body = connection, client, key, render, render_body
            self.ready = True

    def _capture(self, channel, task_id: str, arg: int) -> tuple[str, dict, str]:  # noqa: ANN001
        from kombu import Producer
        from kombu.utils.json import dumps

        captured: list[tuple[str, dict]] = []

        def put(queue, message, **kwargs):  # noqa: ANN001, ANN003, ANN202
            if kwargs.get("_publish_batch") is not None:
                raise _NoTemplate("kombu publishes in batches")
            captured.append((queue, message))

        channel._put = put  # the one place kombu's redis transport writes a message
        try:
            self.celery.send_task(PROCESS_EVENT, args=(arg,), task_id=task_id, retry=False, producer=Producer(channel))
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
    def _template(captures: list[tuple[str, dict, str]]):  # noqa: ANN205
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
    for slot, piece in zip(slots, pieces[1:]):
        out.append(values[slot])
        out.append(piece)
    return "".join(out)


def _is_broker_error(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, (OperationalError, RedisConnectionError, RedisTimeoutError, OSError))


_publishers_lock = threading.Lock()


def _publisher(app) -> _TaskPublisher:  # noqa: ANN001
    """This process's publisher for the app's Celery (a forked child builds its own)."""
    pid, publisher = app.extensions.get("intake_publisher", (None, None))
    if pid != os.getpid():
        with _publishers_lock:
            pid, publisher = app.extensions.get("intake_publisher", (None, None))
            if pid != os.getpid():
                publisher = _TaskPublisher(app.extensions["celery"])
                app.extensions["intake_publisher"] = (os.getpid(), publisher)
    return publisher
