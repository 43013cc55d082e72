"""Signing in and out of the console."""

from __future__ import annotations

from flask import g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from persistence.operator_log import log_action
from services.clock import wall_clock_ms
from web.console.auth import (
    FAILED_SIGN_IN_WINDOW_S,
    authenticate,
    record_failed_sign_in,
    safe_next,
    sign_in_refused_for,
    start_session,
)
from web.console.blueprint import bp
from web.console.pipeline import wiring


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    next_url = safe_next(request.values.get("next"))
    if g.operator is not None and request.method == "GET":
        return redirect(next_url)
    if request.method == "GET":
        note = "Your session ended; sign in again." if session.pop("ended", None) else None
        return render_template("console/login.html", next=next_url, note=note)
    name = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    if sign_in_refused_for(name):
        message = f"Too many failed sign-ins for {name!r}; wait {FAILED_SIGN_IN_WINDOW_S // 60} minutes."
        return render_template("console/login.html", next=next_url, error=message, username=name), 429
    operator = authenticate(name, password)
    if operator is None:
        record_failed_sign_in(name)
        return render_template("console/login.html", next=next_url, error="Wrong name or password.", username=name), 401
    start_session(operator)
    log_action(wiring().session_factory, actor=operator.actor, action="console.sign_in", now_ms=wall_clock_ms())
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("console.login"))
