"""Operators of the console: who they are (``CONSOLE_USERS``), signing in and out, sessions that
expire, and the two roles (a viewer reads; an admin also replays, syncs, retries and edits).

Sessions are Flask's signed cookies (``CONSOLE_SECRET_KEY``), path /console, HttpOnly,
SameSite=Lax, Secure whenever the request came over HTTPS (behind a proxy only when
``TRUST_PROXY_HEADERS`` says its X-Forwarded-Proto can be believed). A session holds the
operator's name, a fingerprint of their password hash (changing the password ends every
session) and its times: it ends ``CONSOLE_SESSION_TTL_S`` after sign-in, or after
``CONSOLE_IDLE_TIMEOUT_S`` without a request. Roles are read from the configuration on every
request, so removing or demoting an operator takes effect at once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, wraps
from typing import Any, Literal, TypeGuard, get_args
from urllib.parse import urlsplit

from flask import Flask, Request, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.security import check_password_hash, generate_password_hash

from services.clock import wall_clock_ms

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
# werkzeug's strong hashes only: a plain or weak entry is a configuration error, not a password.
HASH_METHODS = ("scrypt:", "pbkdf2:")
MAX_FAILED_SIGN_INS = 10  # per name and client address, then refused for the rest of the window
FAILED_SIGN_IN_WINDOW_S = 15 * 60


class ConsoleConfigError(ValueError):
    """CONSOLE_USERS cannot be read (the message never includes a hash)."""


@dataclass(frozen=True)
class Operator:
    name: str
    role: Role
    password_hash: str = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]

    @property
    def actor(self) -> str:
        """How the operator audit log names changes made through the console."""
        return f"console:{self.name}"


def is_role(text: str) -> TypeGuard[Role]:
    return text in ROLES


def parse_operators(text: str) -> dict[str, Operator]:
    """``name:role:hash,...`` -> operators by name (a hash holds colons, never commas)."""
    operators: dict[str, Operator] = {}
    for position, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role, _, password_hash = rest.partition(":")
        name, role = name.strip(), role.strip()
        if not name or not is_role(role) or not password_hash.startswith(HASH_METHODS):
            raise ConsoleConfigError(
                f"CONSOLE_USERS entry {position} ({name or '?'}) is not name:viewer|admin:<scrypt or pbkdf2 hash> "
                "(make one with: flask --app web.app:create_app console-hash-password)"
            )
        if name in operators:
            raise ConsoleConfigError(f"CONSOLE_USERS names {name!r} twice")
        operators[name] = Operator(name, role, password_hash)
    return operators


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions for the console's pages only (the webhook intake and the
    API never open one), Secure whenever this request came over HTTPS."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith("/console"):
            return self.null_session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def operators() -> dict[str, Operator]:
    return current_app.extensions["console_operators"]


@cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown: a wrong name costs as long as a wrong password."""
    return generate_password_hash(secrets.token_hex(16), method="scrypt")


def authenticate(name: str, password: str) -> Operator | None:
    operator = operators().get(name)
    ok = check_password_hash(operator.password_hash if operator else _dummy_hash(), password)
    return operator if ok and operator is not None else None


def start_session(operator: Operator) -> None:
    session.clear()  # no fixation: a new session (and a new CSRF token) at each sign-in
    session.permanent = True
    now = wall_clock_ms()
    session.update(op=operator.name, fp=operator.fingerprint, t0=now, seen=now)


def current_operator() -> Operator | None:
    """The signed-in operator of this request, or None (the session is then cleared when it
    expired, or when the operator was removed or changed password)."""
    name = session.get("op")
    if name is None:
        return None
    settings = current_app.config["ENGINE_SETTINGS"]
    operator = operators().get(name)
    now = wall_clock_ms()
    expired = (
        now - int(session.get("t0", 0)) > settings.console_session_ttl_s * 1000
        or now - int(session.get("seen", 0)) > settings.console_idle_timeout_s * 1000
    )
    if operator is None or operator.fingerprint != session.get("fp") or expired:
        session.clear()
        session["ended"] = True  # the sign-in page says why
        return None
    if now - int(session.get("seen", 0)) > 30_000:  # refreshed every 30 s, not on every request
        session["seen"] = now
    return operator


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this console only (never another site)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/console") and "\\" not in target:
            return target
    return url_for("console.overview")


def login_required_redirect() -> Any:
    return redirect(url_for("console.login", next=request.full_path.rstrip("?")))


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For views that change something: 403 for a viewer."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not g.operator.is_admin:
            return render_template(
                "console/error.html",
                title="Admins only",
                message=(
                    f"{g.operator.name} is a viewer: replaying, syncing, retrying and editing need the admin role."
                ),
            ), 403
        return view(*args, **kwargs)

    return wrapper


def sign_in_refused_for(name: str) -> bool:
    """Too many failed sign-ins for this name from this address lately (kept in Redis)."""
    wiring = current_app.extensions["engine_wiring"]
    try:
        return int(wiring.redis.get(_failures_key(name)) or 0) >= MAX_FAILED_SIGN_INS
    except Exception:
        return False  # Redis down: sign-in still works (the hash check is slow anyway)


def record_failed_sign_in(name: str) -> None:
    wiring = current_app.extensions["engine_wiring"]
    try:
        key = _failures_key(name)
        pipe = wiring.redis.pipeline()
        pipe.set(key, 0, ex=FAILED_SIGN_IN_WINDOW_S, nx=True)  # the window starts at the first failure
        pipe.incr(key)
        pipe.execute()
    except Exception:
        current_app.logger.warning("could not count a failed console sign-in", exc_info=True)


def _failures_key(name: str) -> str:
    who = f"{name}\0{request.remote_addr or ''}".encode("utf-8", "surrogateescape")
    return "console:sign-in-failures:" + hashlib.sha256(who).hexdigest()[:32]
