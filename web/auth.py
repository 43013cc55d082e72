"""Bearer-token authentication of the /v1 and admin APIs.

Two kinds of bearer token:

* ``API_TOKEN``: the operator's backend. May do anything the API offers, for any user.
* a user token (``ut2.…``, web/tokens.py): minted by the operator's backend through
  ``POST /v1/users/<id>/token`` for one app_user_id, signed with ``USER_TOKEN_SECRET`` (one
  secret or several for rotation) and short-lived, so that a mobile app can validate, sync and
  read access for its own user only.

Refusals: 401 when no acceptable token is presented (missing, wrong, malformed, expired, or the
kind of token is not configured); 403 when a valid user token asks for another user, or for
something only the operator may do. Both answer ``{"error", "message"}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Response, current_app, g, request

from services.clock import wall_clock_ms
from web.errors import error_response
from web.tokens import TokenRefused, UserTokens, is_user_token


@dataclass(frozen=True)
class Caller:
    """Who is calling: the operator (API token) or one app user (user token)."""

    app_user_id: str | None  # None: the operator

    @property
    def is_operator(self) -> bool:
        return self.app_user_id is None

    def may_act_for(self, app_user_id: str) -> bool:
        return self.is_operator or self.app_user_id == app_user_id


class Refused(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def response(self) -> Response:
        response = error_response(self.status, self.error, self.message)
        if self.status == 401:
            response.headers["WWW-Authenticate"] = f'Bearer realm="engine", error="{self.error}"'
        return response


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, provided = header.partition(" ")
    if scheme.lower() != "bearer" or not provided.strip():
        return None
    return provided.strip()


def user_tokens() -> UserTokens:
    """This app's user tokens (USER_TOKEN_SECRET)."""
    tokens: UserTokens = current_app.extensions["user_tokens"]
    return tokens


def authenticate(*, allow_user_token: bool) -> Caller:
    """The caller of this request, or Refused (401)."""
    settings = current_app.config["ENGINE_SETTINGS"]
    provided = _bearer()
    if provided is not None and allow_user_token and is_user_token(provided):
        try:
            return Caller(user_tokens().verify(provided, now_s=wall_clock_ms() // 1000))
        except TokenRefused as exc:
            raise Refused(401, exc.reason, str(exc)) from None
    token = settings.api_token
    if not token:
        raise Refused(401, "api_token_not_configured", "API_TOKEN is empty: the API is disabled")
    if provided is None or not hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), token.encode()):
        raise Refused(401, "unauthorized", "missing or wrong bearer token")
    return Caller(None)


def require_api_token(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless ``Authorization: Bearer <API_TOKEN>``; refused outright while API_TOKEN is unset.

    A valid user token is 403: it authenticates a user, who may not do this.
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            caller = authenticate(allow_user_token=True)
        except Refused as refused:
            return refused.response()
        if not caller.is_operator:
            return Refused(403, "operator_only", "this needs the API token; a user token cannot do it").response()
        g.caller = caller
        return view(*args, **kwargs)

    return wrapper


def require_user_access(view: Callable[..., Any]) -> Callable[..., Any]:
    """For routes with ``<app_user_id>``: the API token, or a user token for that very user."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            caller = authenticate(allow_user_token=True)
            check_user(caller, kwargs["app_user_id"])
        except Refused as refused:
            return refused.response()
        g.caller = caller
        return view(*args, **kwargs)

    return wrapper


def require_caller(view: Callable[..., Any]) -> Callable[..., Any]:
    """The API token or any valid user token; the view checks the user with ``check_user``."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            g.caller = authenticate(allow_user_token=True)
        except Refused as refused:
            return refused.response()
        return view(*args, **kwargs)

    return wrapper


def check_user(caller: Caller, app_user_id: str) -> None:
    """Refused (403) when a user token asks about anyone but its own user."""
    if not caller.may_act_for(app_user_id):
        raise Refused(403, "forbidden", "this user token is for another app_user_id")
