"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from spectree import Response as Documented
from sqlalchemy import text

from adapters.metrics import render
from engine.errors import CatalogError
from services.pipeline_state import pipeline_gauges
from services.startup import catalog_problem
from web.openapi import PUBLIC, api
from web.schemas import ErrorAnswer, Health, Readiness

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
@api.validate(
    resp=Documented(
        "HTTP_200", HTTP_401=(ErrorAnswer, "METRICS_TOKEN is set and the bearer token is missing or wrong.")
    ),
    security=PUBLIC,
    skip_validation=True,
    operation_id="metrics",
)
def metrics():
    """Prometheus text of the whole system: counters and histograms every process recorded (in
    Redis), gauges read now (backlogs, ages, budget). ``METRICS_TOKEN`` set: a bearer token."""
    token = current_app.config["ENGINE_SETTINGS"].metrics_token
    if token:
        scheme, _, provided = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            provided.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            response = jsonify(error="unauthorized", message="missing or wrong bearer token (METRICS_TOKEN)")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    wiring = current_app.extensions["engine_wiring"]
    return Response(render(wiring.metrics, pipeline_gauges(wiring)), content_type=CONTENT_TYPE_LATEST)
