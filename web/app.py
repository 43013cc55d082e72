"""Flask app factory (gunicorn: ``web.app:create_app()``)."""

from __future__ import annotations

from celery import Celery
from flask import Flask, request

from config.logs import bind_log_context, clear_log_context
from config.observability import init_sentry
from config.settings import Settings
from services.wiring import wiring_for
from tasks.celery_app import create_celery
from web import api, cli, cli_customers, cli_inbox, cli_outbox, health, intake, openapi, purchases, sync
from web.client_limits import ClientLimits
from web.console import init_console
from web.errors import register_error_handlers
from web.tokens import UserTokens


def register_routes(app: Flask) -> None:
    """Every route of the API (their OpenAPI document is built from these alone)."""
    for blueprint in (intake.bp, api.bp, health.bp, purchases.bp, sync.bp, openapi.bp):
        app.register_blueprint(blueprint)


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Bodies over the limit are refused with 413 while being read, before any parsing.
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_bytes
    app.config["ENGINE_SETTINGS"] = settings
    # Built here, in each gunicorn worker after its fork (the app is not preloaded).
    app.extensions["engine_wiring"] = wiring_for(settings).build()
    app.extensions["celery"] = celery if celery is not None else create_celery(settings)
    init_sentry(settings, component="web")

    app.extensions["user_tokens"] = UserTokens.from_setting(settings.user_token_secret)
    wiring = app.extensions["engine_wiring"]
    app.extensions["client_limits"] = ClientLimits(lambda: wiring.redis, per_minute=settings.user_calls_per_minute)

    register_routes(app)
    register_error_handlers(app, max_body_bytes=settings.webhook_max_bytes)

    cli.register(app)
    app.cli.add_command(cli_inbox.inbox_cli)
    app.cli.add_command(cli_customers.customers_cli)
    app.cli.add_command(cli_outbox.outbox_cli)
    init_console(app, settings)

    @app.before_request
    def _log_context() -> None:
        # Lines logged while serving /v1/users/<app_user_id>/... name the user.
        clear_log_context()
        bind_log_context(app_user_id=(request.view_args or {}).get("app_user_id"))

    app.teardown_request(lambda _exc: clear_log_context())
    intake.install(app, app.extensions["engine_wiring"], app.extensions["celery"])

    return app
