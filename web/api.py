"""The /v1 API read by client apps."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify
from sqlalchemy import or_, select

from engine.adapters.models import Grant, Identity
from engine.adapters.runtime import wall_clock_ms
from engine.adapters.store import grant_to_access
from web.auth import require_api_token

bp = Blueprint("api", __name__, url_prefix="/v1")


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@bp.get("/users/<path:app_user_id>/access")
@require_api_token
def user_access(app_user_id: str):  # noqa: ANN201
    runtime = current_app.extensions["engine_runtime"]
    now_ms = wall_clock_ms()
    with runtime.session_factory() as session:
        customer_id = session.scalar(select(Identity.customer_id).where(Identity.app_user_id == app_user_id)) or app_user_id
        rows = session.scalars(
            select(Grant)
            .where(Grant.customer_id == customer_id, or_(Grant.expires_ms.is_(None), Grant.expires_ms > now_ms))
            .order_by(Grant.resource)
        ).all()
    access = [
        {
            "resource": a.resource,
            "mode": a.mode,
            "expires_at": iso_ms(a.expires_ms),
            "source": {"transactions": list(a.sources)},
        }
        for a in map(grant_to_access, rows)
    ]
    return jsonify(app_user_id=app_user_id, as_of=iso_ms(now_ms), access=access)
