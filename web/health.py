"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from engine.adapters.inbox import inbox_counts

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():  # noqa: ANN201
    runtime = current_app.extensions["engine_runtime"]
    checks: dict[str, str] = {}
    try:
        with runtime.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        with current_app.extensions["celery"].connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


@bp.get("/metrics")
def metrics():  # noqa: ANN201
    runtime = current_app.extensions["engine_runtime"]
    lines = ["# HELP engine_inbox_events Webhooks in the inbox by status.", "# TYPE engine_inbox_events gauge"]
    for status, count in sorted(inbox_counts(runtime.session_factory).items()):
        lines.append(f'engine_inbox_events{{status="{status}"}} {count}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
