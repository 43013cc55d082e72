"""Bearer-token authentication of the /v1 and admin APIs."""

from __future__ import annotations

import hmac
from functools import wraps
from typing import Any, Callable

from flask import current_app, jsonify, request


def require_api_token(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless ``Authorization: Bearer <API_TOKEN>``; refused outright while API_TOKEN is unset."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = current_app.config["ENGINE_SETTINGS"].api_token
        if not token:
            return jsonify(error="api_token_not_configured", message="API_TOKEN is empty: the API is disabled"), 401
        header = request.headers.get("Authorization", "")
        scheme, _, provided = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(provided.strip().encode(), token.encode()):
            return jsonify(error="unauthorized", message="missing or wrong bearer token"), 401
        return view(*args, **kwargs)

    return wrapper
