"""POST /v1/purchases/validate: a client app's purchase, validated before the app acknowledges it.

Thin: authenticate, check the payload against its schema, limit per user, hand over to
services/client.py, map the outcome to HTTP. Answers (design.md): 200 ``acknowledged: true``
with the course once access is granted; 202 ``status: pending`` (nothing granted yet); 422
``acknowledged: false`` with a ``reason``; 400 for a malformed payload; 429 (this user's calls)
and 503 (the provider, its budget or our database) with ``Retry-After`` and ``retryable: true``;
502 when the provider's answer cannot be read.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g
from spectree import Response as Documented
from sqlalchemy.exc import SQLAlchemyError

from engine.client_flows import Refusal, Validated, validation_request
from engine.errors import TerminalError, TransientError
from services.client import validate_purchase
from web.answers import invalid_payload_answer, refusal_answer, validated_answer
from web.auth import Refused, check_user, require_caller
from web.openapi import OPERATOR_OR_USER, api
from web.payloads import InvalidPayload, parse_payload, read_body
from web.schemas import ErrorAnswer, ValidationPayload, ValidationRefusal, ValidationSuccess

log = logging.getLogger(__name__)
bp = Blueprint("purchases", __name__, url_prefix="/v1")


def unavailable(reason: str, message: str, retry_after_s: float | None, status: int = 503) -> Response:
    """``acknowledged: false, retryable: true`` with a Retry-After (whole seconds, ≥ 1)."""
    return refusal_answer(Refusal(reason, message, retryable=True), status, retry_after_s=retry_after_s)


@bp.post("/purchases/validate")
@require_caller
@api.validate(
    json=ValidationPayload,
    resp=Documented(
        HTTP_200=(ValidationSuccess, "Access granted: acknowledge the purchase."),
        HTTP_202=(ValidationRefusal, "Pending (Android PENDING, iOS Ask to Buy): nothing granted yet."),
        HTTP_400=(ValidationRefusal, "Malformed payload (`problems` names each field)."),
        HTTP_401=(ErrorAnswer, "No acceptable bearer token."),
        HTTP_403=(ErrorAnswer, "A user token for another user."),
        HTTP_413=(ErrorAnswer, "Body too large."),
        HTTP_422=(ValidationRefusal, "Refused (invalid receipt, unknown product, nothing granted...)."),
        HTTP_429=(ValidationRefusal, "Too many validations for this user: validate again after Retry-After."),
        HTTP_502=(ValidationRefusal, "The provider's answer could not be read: validate again later."),
        HTTP_503=(ValidationRefusal, "Cannot check now: validate again later."),
    ),
    security=OPERATOR_OR_USER,
    skip_validation=True,
    operation_id="validatePurchase",
)
def validate() -> Response:
    """Validate a store purchase before the app acknowledges it.

    Sends the receipt to the provider, reconciles the user and answers `acknowledged: true` only
    once access is granted. Validating the same purchase again answers the same, with no second
    credit.
    """
    try:
        payload = parse_payload(ValidationPayload, read_body()).root
    except InvalidPayload as exc:
        return invalid_payload_answer(exc)
    try:
        check_user(g.caller, payload.app_user_id)  # a user token validates for its own user only
    except Refused as refused:
        return refused.response()
    retry_after_s = current_app.extensions["client_limits"].retry_after_s("validate", payload.app_user_id)
    if retry_after_s is not None:
        return unavailable("too_many_requests", "too many validations for this user", retry_after_s, 429)
    wiring = current_app.extensions["engine_wiring"]
    request = validation_request(
        platform=payload.platform,
        app_user_id=payload.app_user_id,
        product_id=payload.product_id,
        purchase_id=payload.purchase_id,
        fetch_token=payload.fetch_token,
        status=payload.status,
        transaction_ms=payload.transaction_ms,
        course_code=payload.course_code,
        voice=payload.voice,
        catalog=wiring.catalog,
    )
    if isinstance(request, Refusal):
        return refusal_answer(request)
    try:
        outcome = validate_purchase(wiring.client_flows, request)
    except TransientError as exc:
        log.info("validation deferred: %s", exc)
        return unavailable(
            "provider_unavailable", "the purchase could not be checked now; try again", exc.retry_after_s
        )
    except TerminalError as exc:
        log.warning("validation of %r: the provider's answer is unusable: %s", request.purchase_id, exc)
        return unavailable(
            "provider_answer_unusable",
            "the provider's answer for this purchase could not be read; try again later",
            60,
            502,
        )
    except SQLAlchemyError:
        log.exception("validation could not be recorded")
        return unavailable("storage_unavailable", "the purchase could not be recorded now; try again", 5)
    if isinstance(outcome, Validated):
        return validated_answer(outcome)
    return refusal_answer(outcome)
