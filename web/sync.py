"""POST /v1/users/<id>/sync (sync with the provider / restore purchases) and
POST /v1/users/<id>/token (a short-lived token for one user, minted for the operator's backend).

Thin: authenticate, check, limit per user, hand over to services/client.py, map errors to HTTP.
A provider's error body or URL never reaches the client: it is logged here, without secrets
(the provider client keeps our API key out of its errors).
"""

from __future__ import annotations

import logging

import click
from flask import Blueprint, Response, current_app
from pydantic import TypeAdapter, ValidationError
from spectree import Response as Documented
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import TerminalError, TransientError
from engine.revenuecat import UnreadableSubscriber
from services.client import SyncLimiter, current_access, sync_user
from services.clock import wall_clock_ms
from web.answers import access_list, answer, change_list, iso_ms
from web.auth import require_api_token, require_user_access, user_tokens
from web.errors import error_response
from web.openapi import OPERATOR_OR_USER, api
from web.payloads import InvalidPayload, parse_payload, read_body
from web.schemas import AppUserId, ErrorAnswer, SyncAnswer, TokenAnswer, TokenRequest
from web.tokens import DEFAULT_USER_TOKEN_TTL_S, MAX_USER_TOKEN_TTL_S, MIN_USER_TOKEN_TTL_S

log = logging.getLogger(__name__)
bp = Blueprint("sync", __name__, url_prefix="/v1", cli_group=None)

_APP_USER_ID = TypeAdapter(AppUserId)
AUTH_REFUSALS = {
    "HTTP_401": (ErrorAnswer, "No acceptable bearer token: missing, wrong, malformed or expired."),
    "HTTP_403": (
        ErrorAnswer,
        "A valid user token asking about another user, or for something only the API token may do.",
    ),
    "HTTP_404": (ErrorAnswer, "No such route: e.g. an app_user_id with a line break does not match the path."),
}


def app_user_id_problem(app_user_id: str) -> str | None:
    """Why ``app_user_id`` cannot name a user (None when it can), by its schema, in words."""
    try:
        _APP_USER_ID.validate_python(app_user_id)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        return _ID_PROBLEMS.get(error["type"], error["msg"])
    return None


# The schema's refusals of an id, as an operator or an app developer would say them.
_ID_PROBLEMS = {
    "string_pattern_mismatch": "control characters are not allowed",
    "string_too_short": "a non-empty string is required",
    "string_too_long": "at most 255 characters",
    "string_type": "a non-empty string is required",
    "string_unicode": "not valid UTF-8",
}


@bp.post("/users/<path:app_user_id>/sync")
@require_user_access
@api.validate(
    resp=Documented(
        HTTP_200=(SyncAnswer, "Synced."),
        HTTP_400=(ErrorAnswer, "Invalid app_user_id."),
        HTTP_429=(ErrorAnswer, "Too many syncs of this user: sync again after Retry-After."),
        HTTP_502=(ErrorAnswer, "The provider refused this user, or its answer could not be read."),
        HTTP_503=(
            ErrorAnswer,
            "The provider (or its budget, or the database) cannot serve now; the user is synced soon.",
        ),
        **AUTH_REFUSALS,
    ),
    security=OPERATOR_OR_USER,
    skip_validation=True,
    operation_id="syncUser",
)
def sync(app_user_id: str) -> Response:
    """Sync with the provider now (restore purchases); answers access and what changed.

    Draws on the provider budget before the sweep. Calls within a few seconds of the last sync
    reuse it. A restore that moved purchases here revokes them from their previous owner.
    """
    if problem := app_user_id_problem(app_user_id):
        return error_response(400, "invalid_request", f"app_user_id: {problem}")
    retry_after_s = current_app.extensions["client_limits"].retry_after_s("sync", app_user_id)
    if retry_after_s is not None:
        return error_response(429, "too_many_requests", "too many syncs of this user", retry_after_s=retry_after_s)
    wiring = current_app.extensions["engine_wiring"]

    def run() -> dict:
        result = sync_user(wiring.client_flows, app_user_id)
        return {
            "synced_at": iso_ms(wall_clock_ms()),
            "changes": [c.model_dump(mode="json") for c in change_list(result.actions)],
            "previous_owners_reconciled": len(result.previous_owners),
        }

    try:
        last, reused = SyncLimiter(wiring.redis).run(app_user_id, run, wait_s=15.0)
    except TransientError as exc:
        log.info("sync of %r deferred: %s", app_user_id, exc)
        message = "the provider cannot be read now; the user will be synced soon"
        return error_response(503, "provider_unavailable", message, retry_after_s=exc.retry_after_s or 1)
    except UnreadableSubscriber as exc:
        log.warning("sync of %r: the provider's answer is unusable: %s", app_user_id, exc)
        return error_response(502, "provider_answer_unusable", "the provider's answer for this user could not be read")
    except TerminalError as exc:
        log.warning("sync of %r: the provider refused it: %s", app_user_id, exc)
        return error_response(502, "provider_refused", "the provider refused this user id")
    except SQLAlchemyError:
        log.exception("sync of %r could not be recorded", app_user_id)
        return error_response(
            503, "storage_unavailable", "the sync could not be recorded now; try again", retry_after_s=5
        )
    now = wall_clock_ms()
    view = current_access(wiring.session_factory, app_user_id, now)
    return answer(
        SyncAnswer(app_user_id=app_user_id, as_of=iso_ms(now), access=access_list(view.accesses), reused=reused, **last)
    )


@bp.post("/users/<path:app_user_id>/token")
@require_api_token
@api.validate(
    json=TokenRequest,
    resp=Documented(
        HTTP_201=(TokenAnswer, "The token."),
        HTTP_400=(ErrorAnswer, "Invalid app_user_id or ttl_s."),
        HTTP_413=(ErrorAnswer, "Body too large."),
        HTTP_503=(ErrorAnswer, "USER_TOKEN_SECRET is not set."),
        **AUTH_REFUSALS,
    ),
    skip_validation=True,
    operation_id="mintUserToken",
)
def mint_token(app_user_id: str) -> Response:
    """Mint a short-lived bearer token for this user only (API token required).

    The body is optional (`ttl_s`, 900 s when absent), whatever its transfer encoding.
    """
    if problem := app_user_id_problem(app_user_id):
        return error_response(400, "invalid_request", f"app_user_id: {problem}")
    tokens = user_tokens()
    if not tokens.configured:
        return error_response(503, "user_tokens_not_configured", tokens.problem or "")
    body = read_body()
    try:
        ttl_s = parse_payload(TokenRequest, body).ttl_s if body.strip() else DEFAULT_USER_TOKEN_TTL_S
    except InvalidPayload as exc:
        message = "the body, when present, must be a JSON object" if "body" in exc.problems else str(exc)
        return error_response(400, "invalid_request", message, problems=exc.problems)
    now_s = wall_clock_ms() // 1000
    token = tokens.mint(app_user_id, now_s=now_s, ttl_s=ttl_s)
    minted = TokenAnswer(
        token=token,
        token_type="Bearer",
        app_user_id=app_user_id,
        expires_in=ttl_s,
        expires_at=iso_ms((now_s + ttl_s) * 1000),
    )
    return answer(minted, 201)


@bp.cli.command("mint-user-token")
@click.argument("app_user_id")
@click.option("--ttl", "ttl_s", default=DEFAULT_USER_TOKEN_TTL_S, show_default=True, help="seconds the token is valid")
def mint_user_token_command(app_user_id: str, ttl_s: int) -> None:
    """Print a short-lived bearer token for one app_user_id (validate, sync, access)."""
    if not MIN_USER_TOKEN_TTL_S <= ttl_s <= MAX_USER_TOKEN_TTL_S:
        raise click.BadParameter(f"from {MIN_USER_TOKEN_TTL_S} to {MAX_USER_TOKEN_TTL_S}", param_hint="--ttl")
    if problem := app_user_id_problem(app_user_id):
        raise click.BadParameter(problem, param_hint="APP_USER_ID")
    try:
        click.echo(user_tokens().mint(app_user_id, now_s=wall_clock_ms() // 1000, ttl_s=ttl_s))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
