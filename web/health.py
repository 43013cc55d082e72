"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from engine.errors import CatalogError
from persistence.inbox import inbox_counts
from services.startup import catalog_problem

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    runtime = current_app.extensions["engine_runtime"]
    checks: dict[str, str] = {}
    try:
        with runtime.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        with current_app.extensions["celery"].connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc.__class__.__name__}"
    try:
        runtime.catalog  # noqa: B018 - loaded (and validated) on first use
        checks["catalog"] = "ok"
    except CatalogError as exc:
        checks["catalog"] = f"error: {catalog_problem(runtime.settings, exc)}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text: counters shared by every process (drift repaired by kind, reconciles,
    sweep selections) and gauges read from the database (inbox by status, subscribers due)."""
    from adapters.metrics import render
    from persistence.subscribers import count_due
    from services.wiring import wall_clock_ms

    runtime = current_app.extensions["engine_runtime"]
    gauges = {
        f'engine_inbox_events{{status="{status}"}}': n for status, n in inbox_counts(runtime.session_factory).items()
    }
    gauges["engine_subscribers_due"] = count_due(runtime.session_factory, now_ms=wall_clock_ms())
    gauges["engine_provider_requests_in_window"] = runtime.budget.used_in_window()
    return Response(render(runtime.metrics.counters(), gauges), mimetype="text/plain; version=0.0.4")
