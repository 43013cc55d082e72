"""Operator commands (``flask --app web.app:create_app <command>``)."""

from __future__ import annotations

import json

import click
from flask import Flask, current_app

from engine.adapters.database import upgrade_database
from engine.adapters.inbox import unit_of_work
from engine.adapters.runtime import wall_clock_ms
from engine.ports import Cause
from engine.reconcile import reconcile_user


def register(app: Flask) -> None:
    @app.cli.command("migrate")
    @click.option("--revision", default="head", show_default=True)
    def migrate(revision: str) -> None:
        """Apply the database migrations."""
        upgrade_database(current_app.config["ENGINE_SETTINGS"], revision)
        click.echo(f"database at {revision}")

    @app.cli.command("reconcile-user")
    @click.argument("app_user_id")
    def reconcile_one(app_user_id: str) -> None:
        """Re-read one user from the provider and converge their access now."""
        rt = current_app.extensions["engine_runtime"]
        outcome = reconcile_user(
            app_user_id,
            provider=rt.provider,
            unit_of_work=unit_of_work(rt.session_factory),
            catalog=rt.catalog,
            now_ms=wall_clock_ms(),
            cause=Cause("operator", "cli"),
            policy=rt.policy,
        )
        click.echo(json.dumps({
            "customer_id": outcome.customer_id,
            "changes": [{"action": a.kind, "resource": a.resource} for a in outcome.actions],
            "unknown_products": list(outcome.unknown_products),
        }, indent=2))
