"""The baseline for bench/intake.py: a bare Flask endpoint that only parses the JSON body.

Same route as the intake, so the same load generator drives both; nothing is stored or queued.
Run under gunicorn as ``bench.bare_app:create_app()``; ``create_app(sentry=True)`` also sets up
Sentry exactly as the engine's web process does (SENTRY_DSN from the environment), so that the
intake with Sentry can be compared with a Flask endpoint paying the same per-request cost.
"""

from __future__ import annotations

import json

from flask import Flask, jsonify, request


def create_app(sentry: bool = False) -> Flask:
    if sentry:
        from config.observability import init_sentry
        from config.settings import Settings

        init_sentry(Settings.from_env(), component="web")
    app = Flask(__name__)

    @app.post("/webhooks/revenuecat")
    def webhook():
        event = json.loads(request.get_data(cache=False))["event"]
        return jsonify(status="parsed", event_id=event["id"]), 200

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app
