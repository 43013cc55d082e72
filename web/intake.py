"""POST /webhooks/revenuecat: authenticate, store the raw body durably, enqueue, answer 200.

Nothing here decides anything about access: the row is the contract, the task does the work.

This is the service's hot path (bench/intake.py measures it): the row is stored with one
precompiled statement in autocommit mode (persistence/inbox.py store_webhook) on an engine
without checkout pings, and the task is published with a message template (tasks/publisher.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from spectree import Response as Documented
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters.task_publisher import publisher_for
from engine.revenuecat import MalformedEvent, envelope_key
from persistence.database import make_engine
from persistence.inbox import store_webhook
from services.group_commit import GroupCommitter, StoreTimeout
from tasks.names import INBOX_PROCESS
from web.greenlets import serve_requests, wait_until_idle
from web.openapi import documented_only
from web.payloads import load_json, read_body
from web.schemas import ErrorAnswer, WebhookBody, WebhookMalformed, WebhookStored

log = logging.getLogger(__name__)
bp = Blueprint("intake", __name__)
# Outcomes of answers the view does not label itself (refused before the body is read).
_REFUSALS = {401: "unauthorized", 413: "too_large", 503: "unavailable"}


@bp.before_request
def _start_clock() -> None:
    g.intake_started = time.perf_counter()


@bp.after_request
def _count_webhook(response: Response) -> Response:
    """engine_webhooks_total by type and outcome, and the intake's latency (buffered: no I/O)."""
    event_type, status = g.pop("webhook", (None, _REFUSALS.get(response.status_code, str(response.status_code))))
    elapsed = time.perf_counter() - g.pop("intake_started", time.perf_counter())
    current_app.extensions["engine_wiring"].metrics.webhook(event_type, status, elapsed)
    return response


@bp.post("/webhooks/revenuecat")
@documented_only(
    json=WebhookBody,
    resp=Documented(
        HTTP_200=(WebhookStored, "Stored (duplicates too)."),
        HTTP_400=(WebhookMalformed, "Not a RevenueCat event (kept for inspection)."),
        HTTP_401=(ErrorAnswer, "The Authorization header does not match REVENUECAT_WEBHOOK_AUTH."),
        HTTP_413=(ErrorAnswer, "Body too large (over 256 KiB, whatever the transfer encoding)."),
        HTTP_503=(ErrorAnswer, "Cannot store now (or REVENUECAT_WEBHOOK_AUTH unset): RevenueCat retries."),
    ),
    security={"webhookAuth": []},
    operation_id="revenuecatWebhook",
)
def revenuecat_webhook():
    """RevenueCat webhook intake: stored durably, then processed by a worker."""
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
    body = read_body()  # 413 past MAX_CONTENT_LENGTH, chunked or not
    db = intake_engine(current_app.extensions["engine_wiring"])
    try:
        parsed = load_json(body)  # ValueError too when nested deeper than the parser's stack
        key = envelope_key(parsed)
    except (ValueError, MalformedEvent) as exc:
        reason = str(exc) if isinstance(exc, MalformedEvent) else f"body is not valid JSON ({exc})"[:500]
        try:
            stored = store_webhook(db, body, None, None, malformed_reason=reason)
        except SQLAlchemyError:
            log.exception("could not keep a malformed webhook")
            return jsonify(error="storage_unavailable", message="could not store the webhook"), 503
        g.webhook = (None, "malformed")
        return jsonify(error="malformed", message=reason, inbox_id=stored.inbox_id), 400
    committer = group_committer(current_app)
    try:
        if committer is not None:  # stored, committed and enqueued with the webhooks beside it
            stored = committer.store(body, key.event_id, key.event_type)
        else:
            stored = store_webhook(db, body, key.event_id, key.event_type)
    except (SQLAlchemyError, StoreTimeout):
        log.exception("could not store webhook %s", key.event_id)
        # Not 200: RevenueCat retries (5, 10, 20, 40, 80 minutes) while the database is down.
        return jsonify(error="storage_unavailable", message="could not store the webhook, retry later"), 503
    if stored.enqueue and committer is None:
        try:
            publisher_for(current_app, INBOX_PROCESS).publish(stored.inbox_id)
        except Exception:
            log.warning("broker unavailable; inbox row %s waits for redrive", stored.inbox_id, exc_info=True)
    g.webhook = (key.event_type, "duplicate" if stored.duplicate else stored.status)
    return _stored_answer(stored.status, stored.duplicate, stored.inbox_id)


def _stored_answer(status: str, duplicate: bool, inbox_id: int | None) -> Response:
    """The 200 answer, byte for byte what ``jsonify`` gives (sorted keys, compact, newline)
    without going through the JSON provider on the hot path."""
    body = json.dumps({"duplicate": duplicate, "inbox_id": inbox_id, "status": status}, separators=(",", ":")) + "\n"
    return Response(body, status=200, mimetype="application/json")


# --- storage ---------------------------------------------------------------------------------

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def intake_engine(wiring) -> Engine:
    """The engine the intake stores with: on PostgreSQL one per process and database, in
    AUTOCOMMIT (store_webhook's single INSERT commits by itself: no BEGIN/COMMIT round trips,
    no switching per checkout) and without ``pool_pre_ping``, whose ``SELECT 1`` per checkout
    was a second round trip per webhook (store_webhook retries once when a pooled connection
    turns out dead); otherwise the wiring's own engine (SQLite)."""
    settings = wiring.settings
    if not settings.database_url.startswith("postgresql"):
        return wiring.db
    key = (os.getpid(), settings.database_url)
    engine = _engines.get(key)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = make_engine(settings, pool_pre_ping=False, isolation_level="AUTOCOMMIT")
    return engine


_committers_lock = threading.Lock()


def group_committer(app) -> GroupCommitter | None:
    """This process's group committer, when webhooks are served concurrently by greenlets
    (gunicorn's gevent worker, the Procfile's) and stored in PostgreSQL; otherwise None and
    each webhook is stored and enqueued on its own. Under sync workers there is never a second
    webhook in the process to group with, and with real threads the handoffs cost more than
    the grouping saves (bench/intake.py)."""
    pid, committer = app.extensions.get("intake_group_commit", (None, None))
    if pid == os.getpid():
        return committer
    with _committers_lock:
        pid, committer = app.extensions.get("intake_group_commit", (None, None))
        if pid != os.getpid():
            wiring = app.extensions["engine_wiring"]
            committer = None
            if wiring.settings.database_url.startswith("postgresql") and serve_requests():
                publisher = publisher_for(app, INBOX_PROCESS)
                committer = GroupCommitter(intake_engine(wiring), publisher.publish_many, settle=_settle_greenlets)
            app.extensions["intake_group_commit"] = (os.getpid(), committer)
    return committer


SETTLE_MAX_S = 0.001


def _settle_greenlets() -> None:
    """The group-commit writer's wait under load (services/group_commit.py): until every
    request that has arrived has been read, parsed and handed to the writer and every answer
    sent, SETTLE_MAX_S at most."""
    wait_until_idle(SETTLE_MAX_S)
