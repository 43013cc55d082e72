"""Error answers: every error of every route is JSON ``{"error", "message"}`` (web/schemas.py
ErrorAnswer), never werkzeug's HTML page, including its own errors (404, 405, 413...) and 500s."""

from __future__ import annotations

import logging
import math
import re

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def error_response(
    status: int, error: str, message: str, *, retry_after_s: float | None = None, **fields: object
) -> Response:
    """``{"error", "message", **fields}`` with ``status``; a Retry-After in whole seconds (≥ 1)."""
    response = jsonify(error=error, message=message, **fields)
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def _code(exc: HTTPException) -> str:
    """``Method Not Allowed`` → ``method_not_allowed``."""
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def register_error_handlers(app: Flask, *, max_body_bytes: int) -> None:
    """JSON answers for werkzeug's HTTP errors and for anything a view did not handle."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"body exceeds {max_body_bytes} bytes"
        elif exc.code == 404:
            message = "no such route"
        response = error_response(exc.code or 500, _code(exc), message)
        # Keep what the error says about the route: a 405 lists the methods it supports (RFC 9110).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error answering a request")
        return error_response(500, "internal_error", "the request failed on our side; it has been logged")
