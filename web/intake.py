"""POST /webhooks/revenuecat: authenticate, store the raw body durably, enqueue, answer 200.

Nothing here decides anything about access: the row is the contract, the task does the work.

Storing and publishing are services.intake's (one WebhookIntake per process, built with the
process's Wiring by ``install``); bench/intake.py measures the path.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from celery import Celery
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from spectree import Response as Documented

from adapters.task_publisher import TaskPublisher
from engine.revenuecat import MalformedEvent, envelope_key
from services.intake import IntakeUnavailable, WebhookIntake
from services.wiring import Wiring
from tasks.names import INBOX_PROCESS, INBOX_PROCESS_GROUP
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
    intake: WebhookIntake = current_app.extensions["intake"]
    try:
        parsed = load_json(body)  # ValueError too when nested deeper than the parser's stack
        key = envelope_key(parsed)
    except (ValueError, MalformedEvent) as exc:
        reason = str(exc) if isinstance(exc, MalformedEvent) else f"body is not valid JSON ({exc})"[:500]
        try:
            stored = intake.keep_malformed(body, reason)
        except IntakeUnavailable:
            log.exception("could not keep a malformed webhook")
            return jsonify(error="storage_unavailable", message="could not store the webhook"), 503
        g.webhook = (None, "malformed")
        return jsonify(error="malformed", message=reason, inbox_id=stored.inbox_id), 400
    try:
        stored = intake.accept(body, key.event_id, key.event_type)  # stored, committed, task published
    except IntakeUnavailable:
        log.exception("could not store webhook %s", key.event_id)
        # Not 200: RevenueCat retries (5, 10, 20, 40, 80 minutes) while the database is down.
        return jsonify(error="storage_unavailable", message="could not store the webhook, retry later"), 503
    g.webhook = (key.event_type, "duplicate" if stored.duplicate else stored.status)
    return _stored_answer(stored.status, stored.duplicate, stored.inbox_id)


def _stored_answer(status: str, duplicate: bool, inbox_id: int | None) -> Response:
    """The 200 answer, byte for byte what ``jsonify`` gives (sorted keys, compact, newline)
    without going through the JSON provider on the hot path."""
    body = json.dumps({"duplicate": duplicate, "inbox_id": inbox_id, "status": status}, separators=(",", ":")) + "\n"
    return Response(body, status=200, mimetype="application/json")


# --- the intake's state in one process ----------------------------------------------------

SETTLE_MAX_S = 0.001


def install(app: Flask, wiring: Wiring, celery: Celery) -> None:
    """Build this process's WebhookIntake with its Wiring (the app factory, which gunicorn runs
    in each worker). Its engine is built now, not on the first webhook: that one would also pay
    for importing the database driver."""
    publisher = TaskPublisher(celery, INBOX_PROCESS, INBOX_PROCESS_GROUP)
    app.extensions["intake"] = WebhookIntake(
        wiring.intake_db, publisher, grouped=serve_requests, settle=settle_greenlets
    )


def settle_greenlets() -> None:
    """The group-commit writer's wait under load (services/group_commit.py): until every
    request that has arrived has been read, parsed and handed to the writer and every answer
    sent, SETTLE_MAX_S at most."""
    wait_until_idle(SETTLE_MAX_S)
