"""The /v1 API read by client apps."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from spectree import Response as Documented

from adapters.access_notifications import wait_for_change
from engine.client_flows import MAX_WAIT_S
from services.client import AccessView, current_access
from services.clock import wall_clock_ms
from web.answers import access_list, access_version, answer, iso_ms
from web.auth import require_user_access
from web.errors import error_response
from web.openapi import OPERATOR_OR_USER, api
from web.payloads import InvalidPayload, parse_query
from web.schemas import AccessAnswer, AccessQuery, ErrorAnswer
from web.sync import AUTH_REFUSALS, app_user_id_problem

bp = Blueprint("api", __name__, url_prefix="/v1")

__all__ = ["bp", "iso_ms"]


@bp.get("/users/<path:app_user_id>/access")
@require_user_access
@api.validate(
    query=AccessQuery,
    resp=Documented(
        HTTP_200=(AccessAnswer, "Current access (the access changed, or `wait` ran out)."),
        HTTP_400=(ErrorAnswer, "Invalid app_user_id or wait."),
        **AUTH_REFUSALS,
    ),
    security=OPERATOR_OR_USER,
    skip_validation=True,
    operation_id="getAccess",
)
def user_access(app_user_id: str) -> Response:
    """The user's current access; long-polls with `wait`.

    `?wait=N` (at most 30 s) long-polls until the access differs from `since` (an earlier
    answer's ETag) or, without `since`, from what it was when the request came in.
    """
    if problem := app_user_id_problem(app_user_id):
        return error_response(400, "invalid_request", f"app_user_id: {problem}")
    try:
        query = parse_query(AccessQuery)
    except InvalidPayload as exc:
        return error_response(400, "invalid_request", str(exc))
    wait_s = min(query.wait or 0.0, MAX_WAIT_S)
    wiring = current_app.extensions["engine_wiring"]

    def read() -> AccessView:
        return current_access(wiring.session_factory, app_user_id, wall_clock_ms())

    if wait_s > 0:
        view = wait_for_change(
            wiring.access_watch,
            app_user_id,  # usually its own customer id; an alias is resolved by the first read
            read,
            lambda v: access_version(access_list(v.accesses)),
            baseline=(query.since or "").strip().strip('"') or None,
            wait_s=wait_s,
            key_of=lambda v: v.customer_id,
            next_change_s=lambda v: None if v.next_expiry_ms is None else (v.next_expiry_ms - v.now_ms) / 1000,
        )
    else:
        view = read()
    access = access_list(view.accesses)
    headers = {"ETag": f'"{access_version(access)}"', "Cache-Control": "no-store"}
    return answer(AccessAnswer(app_user_id=app_user_id, as_of=iso_ms(view.now_ms), access=access), 200, headers)
