"""POST /v1/users/<id>/sync (sync with the provider / restore purchases) and
POST /v1/users/<id>/token (a short-lived token for one user, minted for the operator's backend).

Thin: authenticate, limit, hand over to engine/adapters/client_service.py, map errors to HTTP.
"""

from __future__ import annotations

import logging
import math

import click
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from engine.client_flows import (
    DEFAULT_USER_TOKEN_TTL_S,
    MAX_USER_TOKEN_TTL_S,
    MIN_SECRET_LENGTH,
    MIN_USER_TOKEN_TTL_S,
    access_entries,
    app_user_id_problem,
    change_entries,
    iso_ms,
    mint_user_token,
)
from engine.errors import TerminalError, TransientError
from services.client import SyncLimiter, current_access, sync_user
from services.clock import wall_clock_ms
from web.auth import require_api_token, require_user_access

log = logging.getLogger(__name__)
bp = Blueprint("sync", __name__, url_prefix="/v1", cli_group=None)


def _error(status: int, error: str, message: str, retry_after_s: float | None = None):
    response = jsonify(error=error, message=message)
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


@bp.post("/users/<path:app_user_id>/sync")
@require_user_access
def sync(app_user_id: str):
    """Reconcile the user from the provider now; answer access and what changed.

    Repeated calls within a few seconds reuse the last sync (``reused: true``); the access in
    the answer is always read now.
    """
    if problem := app_user_id_problem(app_user_id):
        return _error(400, "invalid_request", f"app_user_id: {problem}")
    wiring = current_app.extensions["engine_wiring"]

    def run() -> dict:
        result = sync_user(wiring.client_flows, app_user_id)
        return {
            "synced_at": iso_ms(wall_clock_ms()),
            "changes": change_entries(result.actions),
            "previous_owners_reconciled": len(result.previous_owners),
        }

    try:
        last, reused = SyncLimiter(wiring.redis).run(app_user_id, run, wait_s=15.0)
    except TransientError as exc:
        log.info("sync of %r deferred: %s", app_user_id, exc)
        return _error(
            503,
            "provider_unavailable",
            "the provider cannot be read now; the user will be synced soon",
            exc.retry_after_s or 1,
        )
    except TerminalError as exc:
        return _error(502, "provider_refused", f"the provider refused this user: {exc}"[:500])
    except SQLAlchemyError:
        log.exception("sync of %r could not be recorded", app_user_id)
        return _error(503, "storage_unavailable", "the sync could not be recorded now; try again", 5)
    now = wall_clock_ms()
    view = current_access(wiring.session_factory, app_user_id, now)
    return jsonify(
        app_user_id=app_user_id, as_of=iso_ms(now), access=access_entries(view.accesses), reused=reused, **last
    )


@bp.post("/users/<path:app_user_id>/token")
@require_api_token
def mint_token(app_user_id: str):
    """A bearer token for this user only, for the operator's backend to hand to its app."""
    if problem := app_user_id_problem(app_user_id):
        return _error(400, "invalid_request", f"app_user_id: {problem}")
    settings = current_app.config["ENGINE_SETTINGS"]
    if len(settings.user_token_secret) < MIN_SECRET_LENGTH:
        return _error(
            503,
            "user_tokens_not_configured",
            f"USER_TOKEN_SECRET must be set (at least {MIN_SECRET_LENGTH} characters)",
        )
    ttl_s = DEFAULT_USER_TOKEN_TTL_S
    if request.content_length:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return _error(400, "invalid_request", "the body, when present, must be a JSON object")
        raw = payload.get("ttl_s", ttl_s)
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)  # 900.0 is an integer to JSON Schema
        if isinstance(raw, bool) or not isinstance(raw, int) or not MIN_USER_TOKEN_TTL_S <= raw <= MAX_USER_TOKEN_TTL_S:
            return _error(
                400, "invalid_request", f"ttl_s: an integer from {MIN_USER_TOKEN_TTL_S} to {MAX_USER_TOKEN_TTL_S}"
            )
        ttl_s = raw
    now_s = wall_clock_ms() // 1000
    token = mint_user_token(settings.user_token_secret, app_user_id, now_s=now_s, ttl_s=ttl_s)
    return jsonify(
        token=token,
        token_type="Bearer",
        app_user_id=app_user_id,
        expires_in=ttl_s,
        expires_at=iso_ms((now_s + ttl_s) * 1000),
    ), 201


@bp.cli.command("mint-user-token")
@click.argument("app_user_id")
@click.option("--ttl", "ttl_s", default=DEFAULT_USER_TOKEN_TTL_S, show_default=True, help="seconds the token is valid")
def mint_user_token_command(app_user_id: str, ttl_s: int) -> None:
    """Print a short-lived bearer token for one app_user_id (validate, sync, access)."""
    settings = current_app.config["ENGINE_SETTINGS"]
    if not MIN_USER_TOKEN_TTL_S <= ttl_s <= MAX_USER_TOKEN_TTL_S:
        raise click.BadParameter(f"from {MIN_USER_TOKEN_TTL_S} to {MAX_USER_TOKEN_TTL_S}", param_hint="--ttl")
    if problem := app_user_id_problem(app_user_id):
        raise click.BadParameter(problem, param_hint="APP_USER_ID")
    try:
        click.echo(mint_user_token(settings.user_token_secret, app_user_id, now_s=wall_clock_ms() // 1000, ttl_s=ttl_s))
    except ValueError as exc:
        raise click.ClickException(f"USER_TOKEN_SECRET: {exc}") from None
