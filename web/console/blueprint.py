"""The console's blueprint and its guard: every page needs a signed-in operator, every change a
CSRF token, and every answer carries headers that keep it out of frames, caches and scripts."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect

from web.console.auth import current_operator, login_required_redirect

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")
# Checks only where asked (the console's changes): the webhook intake and the /v1 API are not forms.
csrf = CSRFProtect()
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# No script at all: the console is server-rendered HTML, its chart inline SVG.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


@bp.before_request
def guard() -> Response | tuple[str, int] | None:
    problem = current_app.extensions["console_disabled"]
    if problem is not None:
        return render_template("console/disabled.html", problem=problem), 503
    if request.endpoint == "console.static":
        return None
    g.operator = current_operator()
    if request.method not in SAFE_METHODS:
        csrf.protect()  # CSRFError (400) without a valid token
    if g.operator is None and request.endpoint != "console.login":
        return login_required_redirect()
    return None


@bp.after_request
def headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(CSRFError)
def csrf_refused(exc: CSRFError) -> tuple[str, int]:
    message = (
        "This change was refused: the form did not carry a valid CSRF token "
        f"({exc.description.rstrip('.')}). Go back, reload the page and try again."
    )
    return render_template("console/error.html", title="Change refused", message=message), 400


@bp.app_context_processor
def console_context() -> dict[str, object]:
    return {"operator": g.get("operator")}
