"""POST /v1/purchases/validate: a client app's purchase, validated before the app acknowledges it.

Thin: authenticate, hand the payload to engine/adapters/client_service.py, map errors to HTTP.
Answers (design.md): 200 ``acknowledged: true`` with the course once access is granted; 202
``status: pending`` (nothing granted yet); 422 ``acknowledged: false`` with a ``reason``; 400 for
a malformed payload; 503 with ``Retry-After`` and ``retryable: true`` when the provider (or its
budget, or our database) cannot answer now.
"""

from __future__ import annotations

import logging
import math

from flask import Blueprint, current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from engine.client_flows import InvalidRequest, Refusal, invalid_request_answer, refusal_answer
from engine.errors import TransientError
from services.client import validate_purchase
from web.auth import Refused, check_user, require_caller

log = logging.getLogger(__name__)
bp = Blueprint("purchases", __name__, url_prefix="/v1")


def unavailable(reason: str, message: str, retry_after_s: float | None):
    """503 ``acknowledged: false, retryable: true`` with a Retry-After (whole seconds, ≥ 1)."""
    response = jsonify(refusal_answer(Refusal(reason, message, retryable=True)))
    response.status_code = 503
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s or 1)))
    return response


@bp.post("/purchases/validate")
@require_caller
def validate():
    payload = request.get_json(silent=True)
    if isinstance(payload, dict) and isinstance(payload.get("app_user_id"), str):
        try:
            check_user(g.caller, payload["app_user_id"])
        except Refused as refused:
            return refused.response()
    elif not g.caller.is_operator:
        # A user token may validate for its own user only: the payload must name that user.
        return invalid(InvalidRequest({"app_user_id": "required"}))
    wiring = current_app.extensions["engine_wiring"]
    try:
        status, answer = validate_purchase(wiring.client_flows, payload)
    except InvalidRequest as exc:
        return invalid(exc)
    except TransientError as exc:
        log.info("validation deferred: %s", exc)
        return unavailable(
            "provider_unavailable", "the purchase could not be checked now; try again", exc.retry_after_s
        )
    except SQLAlchemyError:
        log.exception("validation could not be recorded")
        return unavailable("storage_unavailable", "the purchase could not be recorded now; try again", 5)
    return jsonify(answer), status


def invalid(exc: InvalidRequest):
    return jsonify(invalid_request_answer(exc)), 400
