"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from spectree import Response as Documented
from sqlalchemy import text

from adapters.metrics import render
from engine.errors import CatalogError
from persistence.inbox_rows import inbox_counts
from persistence.subscribers import count_due
from services.clock import wall_clock_ms
from services.startup import catalog_problem
from web.openapi import PUBLIC, api
from web.schemas import Health, Readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@api.validate(
    resp=Documented(HTTP_200=(Health, "Alive.")), security=PUBLIC, skip_validation=True, operation_id="healthz"
)
def healthz():
    """Liveness."""
    return jsonify(status="ok")


@bp.get("/readyz")
@api.validate(
    resp=Documented(HTTP_200=(Readiness, "Ready."), HTTP_503=(Readiness, "Not ready.")),
    security=PUBLIC,
    skip_validation=True,
    operation_id="readyz",
)
def readyz():
    """Readiness: database and broker."""
    wiring = current_app.extensions["engine_wiring"]
    checks: dict[str, str] = {}
    try:
        with wiring.db.connect() as conn:
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
        wiring.catalog  # noqa: B018 - loaded (and validated) on first use
        checks["catalog"] = "ok"
    except CatalogError as exc:
        checks["catalog"] = f"error: {catalog_problem(wiring.settings, exc)}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


@bp.get("/metrics")
@api.validate(resp=Documented("HTTP_200"), security=PUBLIC, skip_validation=True, operation_id="metrics")
def metrics():
    """Prometheus metrics (text format).

    Counters shared by every process (drift repaired by kind, reconciles,
    sweep selections) and gauges read from the database (inbox by status, subscribers due)."""

    wiring = current_app.extensions["engine_wiring"]
    gauges = {
        f'engine_inbox_events{{status="{status}"}}': n for status, n in inbox_counts(wiring.session_factory).items()
    }
    gauges["engine_subscribers_due"] = count_due(wiring.session_factory, now_ms=wall_clock_ms())
    gauges["engine_provider_requests_in_window"] = wiring.budget.used_in_window()
    return Response(render(wiring.metrics.counters(), gauges), mimetype="text/plain; version=0.0.4")
