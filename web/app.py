"""Flask app factory (gunicorn: ``web.app:create_app()``)."""

from __future__ import annotations

from celery import Celery
from flask import Flask, jsonify

from config.settings import Settings
from services.wiring import wiring_for


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Bodies over the limit are refused with 413 while being read, before any parsing.
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_bytes
    app.config["ENGINE_SETTINGS"] = settings
    app.extensions["engine_wiring"] = wiring_for(settings)
    if celery is None:
        from tasks.celery_app import create_celery

        celery = create_celery(settings)
    app.extensions["celery"] = celery

    from config.observability import init_sentry

    init_sentry(settings, component="web")

    from web import api, cli, cli_inbox, health, intake

    app.register_blueprint(intake.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    from web import openapi, purchases, sync

    app.register_blueprint(purchases.bp)
    app.register_blueprint(sync.bp)
    app.register_blueprint(openapi.bp)
    cli.register(app)
    app.cli.add_command(cli_inbox.inbox_cli)
    intake.install(app, app.extensions["engine_wiring"], celery)

    @app.errorhandler(413)
    def too_large(_exc):
        return jsonify(error="payload_too_large", message=f"body exceeds {settings.webhook_max_bytes} bytes"), 413

    @app.errorhandler(400)
    def bad_request(exc):
        return jsonify(error="bad_request", message=getattr(exc, "description", None) or "bad request"), 400

    @app.errorhandler(404)
    def not_found(_exc):
        return jsonify(error="not_found", message="no such route"), 404

    @app.errorhandler(405)
    def not_allowed(exc):
        # RFC 9110: a 405 lists the methods the route supports.
        allow = ", ".join(sorted(getattr(exc, "valid_methods", None) or []))
        return jsonify(error="method_not_allowed", message="method not allowed on this route"), 405, {"Allow": allow}

    return app
