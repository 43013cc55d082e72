"""The /v1 API read by client apps."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from adapters.access_notifications import wait_for_change
from engine.client_flows import InvalidRequest, access_entries, access_version, app_user_id_problem, iso_ms, parse_wait
from services.client import AccessView, current_access
from services.clock import wall_clock_ms
from web.auth import require_user_access

bp = Blueprint("api", __name__, url_prefix="/v1")

__all__ = ["bp", "iso_ms"]


@bp.get("/users/<path:app_user_id>/access")
@require_user_access
def user_access(app_user_id: str):
    """Current access; ``?wait=N`` (≤ 30 s) long-polls until it differs from ``since`` (an
    earlier answer's ETag) or, without ``since``, from what it was when the request came in."""
    if problem := app_user_id_problem(app_user_id):
        return jsonify(error="invalid_request", message=f"app_user_id: {problem}"), 400
    try:
        wait_s = parse_wait(request.args.get("wait"))
    except InvalidRequest as exc:
        return jsonify(error="invalid_request", message=str(exc)), 400
    wiring = current_app.extensions["engine_wiring"]

    def read() -> AccessView:
        return current_access(wiring.session_factory, app_user_id, wall_clock_ms())

    if wait_s > 0:
        view = wait_for_change(
            wiring.access_watch,
            app_user_id,  # usually its own customer id; an alias is resolved by the first read
            read,
            lambda v: access_version(access_entries(v.accesses)),
            baseline=request.args.get("since", "").strip().strip('"') or None,
            wait_s=wait_s,
            key_of=lambda v: v.customer_id,
            next_change_s=lambda v: None if v.next_expiry_ms is None else (v.next_expiry_ms - v.now_ms) / 1000,
        )
    else:
        view = read()
    access = access_entries(view.accesses)
    response = jsonify(app_user_id=app_user_id, as_of=iso_ms(view.now_ms), access=access)
    response.headers["ETag"] = f'"{access_version(access)}"'
    response.headers["Cache-Control"] = "no-store"
    return response
