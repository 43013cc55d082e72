"""The operator console (/console): server-rendered pages over the services, for operators
(viewer and admin roles). ``init_console`` wires it into the Flask app."""

from __future__ import annotations

import logging
from datetime import timedelta

import click
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import generate_password_hash

from config.settings import Settings
from web.console import learners, pipeline, reports, sign_in  # noqa: F401 - their routes join bp
from web.console.auth import ConsoleConfigError, ConsoleSessionInterface, parse_operators
from web.console.blueprint import bp, csrf
from web.console.format import register_filters

log = logging.getLogger(__name__)
MIN_SECRET_CHARS = 32


def console_problem(settings: Settings) -> tuple[dict, str | None]:
    """The operators, and why the console is off (None: it is on)."""
    try:
        operators = parse_operators(settings.console_users)
    except ConsoleConfigError as exc:
        return {}, str(exc)
    if len(settings.console_secret_key) < MIN_SECRET_CHARS:
        return operators, f"CONSOLE_SECRET_KEY must be set, at least {MIN_SECRET_CHARS} characters"
    if not operators:
        return operators, "CONSOLE_USERS names no operator"
    return operators, None


def init_console(app: Flask, settings: Settings) -> None:
    operators, problem = console_problem(settings)
    if problem is not None and (settings.console_users or settings.console_secret_key):
        log.error("operator console off: %s", problem)  # configured, but wrongly
    app.extensions["console_operators"] = operators
    app.extensions["console_disabled"] = problem
    if problem is None:
        app.secret_key = settings.console_secret_key
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="engine_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.console_session_ttl_s),
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=settings.console_session_ttl_s,
        WTF_CSRF_SSL_STRICT=True,  # over HTTPS the Referer must be this host too
    )
    if settings.trust_proxy_headers:
        # Flask's documented way to put middleware around the app (wsgi_app is typed as a method)
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    csrf.init_app(app)
    register_filters(app)
    app.register_blueprint(bp)

    @app.cli.command("console-hash-password")
    @click.option("--name", help="print a whole CONSOLE_USERS entry for this operator")
    @click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True)
    @click.password_option(prompt="Password (not echoed)")
    def hash_password(name: str | None, role: str, password: str) -> None:
        """Hash an operator's password (scrypt) for CONSOLE_USERS."""
        if len(password) < 12:
            raise click.BadParameter("use at least 12 characters", param_hint="password")
        hashed = generate_password_hash(password, method="scrypt")
        click.echo(f"{name}:{role}:{hashed}" if name else hashed)
