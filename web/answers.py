"""Answers built from the engine's results through their schemas (web/schemas.py), and the
HTTP status of each outcome (statuses belong to the web layer, not to engine/)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import overload

from flask import Response, jsonify
from pydantic import BaseModel

from engine.access import Access
from engine.client_flows import Refusal, Validated
from engine.plan import Action
from web.payloads import InvalidPayload
from web.schemas import (
    AccessEntry,
    AccessSide,
    AccessSource,
    Change,
    PurchasedCourse,
    ValidationRefusal,
    ValidationSuccess,
)


@overload
def iso_ms(ms: int) -> str: ...
@overload
def iso_ms(ms: None) -> None: ...
def iso_ms(ms: int | None) -> str | None:
    """Epoch ms as ISO 8601 UTC with milliseconds and ``Z`` (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def answer(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``model`` as the JSON answer (fields left unset, such as an empty ``problems``, omitted)."""
    response = jsonify(model.model_dump(mode="json", exclude_unset=True))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def access_list(accesses: Iterable[Access]) -> list[AccessEntry]:
    """The ``access`` list of the access, sync and validate answers, by resource."""
    return [
        AccessEntry(
            resource=a.resource,
            mode=a.mode,
            expires_at=iso_ms(a.expires_ms),
            source=AccessSource(transactions=list(a.sources)),
        )
        for a in sorted(accesses, key=lambda a: a.resource)
    ]


def access_version(entries: Sequence[AccessEntry]) -> str:
    """A short digest of an ``access`` list: equal exactly when the visible access is equal (ETag)."""
    canonical = json.dumps([e.model_dump(mode="json") for e in entries], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def change_list(actions: Iterable[Action]) -> list[Change]:
    """What a reconcile changed, as the sync answer reports it."""

    def side(access: Access | None) -> AccessSide | None:
        return None if access is None else AccessSide(mode=access.mode, expires_at=iso_ms(access.expires_ms))

    return [Change(action=a.kind, resource=a.resource, before=side(a.before), after=side(a.after)) for a in actions]


# ----- purchase validation --------------------------------------------------------------------


def validated_answer(validated: Validated) -> Response:
    """200 ``acknowledged: true``: the app may now complete (acknowledge) the store purchase."""
    req = validated.request
    return answer(
        ValidationSuccess(
            status="success",
            message="purchase validated: access granted",
            acknowledged=True,
            course=PurchasedCourse(
                course_code=validated.course_code,
                title=req.product.title or req.product.name,
                voice=req.voice,
                purchased_at=iso_ms(validated.purchased_ms),
            ),
            product=req.product.name,
            transaction_id=validated.observation.transaction_id,
            access=access_list(validated.product_access),
        )
    )


def refusal_status(refusal: Refusal) -> int:
    """202 pending; 503 when trying again later may help; otherwise 422."""
    if refusal.pending:
        return 202
    if refusal.retryable:
        return 503
    return 422


def refusal_answer(refusal: Refusal, status: int | None = None, *, retry_after_s: float | None = None) -> Response:
    """``acknowledged: false``: the app must not complete the purchase (the store refunds it)."""
    status = status or refusal_status(refusal)
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s or 1)))
    return answer(
        ValidationRefusal(
            status="pending" if refusal.pending else "failed",
            acknowledged=False,
            reason=refusal.reason,
            error=refusal.reason,
            message=refusal.message,
            retryable=refusal.retryable,
        ),
        status,
        headers,
    )


def invalid_payload_answer(exc: InvalidPayload) -> Response:
    """400 ``invalid_request``: ``problems`` names each field at fault."""
    return answer(
        ValidationRefusal(
            status="failed",
            acknowledged=False,
            reason="invalid_request",
            error="invalid_request",
            message=str(exc),
            retryable=False,
            problems=exc.problems,
        ),
        400,
    )
