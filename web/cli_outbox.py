"""Operator commands for the LMS outbox: ``outbox list``, ``outbox retry``."""

from __future__ import annotations

import getpass
import json

import click
from flask import current_app
from flask.cli import AppGroup

from persistence.outbox_rows import OUTBOX_STATUSES, OutboxFilter, list_outbox
from services.console import retry_outbox
from tasks.names import LMS_DRAIN

outbox_cli = AppGroup("outbox", help="LMS enrollment changes (the sink outbox): list, retry failed ones.")


@outbox_cli.command("list")
@click.option("--status", type=click.Choice(OUTBOX_STATUSES), help="pending, done or failed")
@click.option("--user", help="a customer id")
@click.option("--before", "before_id", type=int, help="rows older than this id (the next page)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_command(*, status: str | None, user: str | None, before_id: int | None, limit: int, as_json: bool) -> None:
    """LMS changes, newest first."""
    wiring = current_app.extensions["engine_wiring"]
    rows = list_outbox(
        wiring.session_factory, OutboxFilter(status=status, customer_id=user), before_id=before_id, limit=limit
    )
    for row in rows:
        fields = {
            "id": row.id,
            "customer_id": row.customer_id,
            "resource": row.resource,
            "course_run_id": row.course_run_id,
            "mode": row.mode,
            "is_active": row.is_active,
            "status": row.status,
            "attempts": row.attempts,
            "created_ms": row.created_ms,
            "done_ms": row.done_ms,
            "last_error": row.last_error,
        }
        if as_json:
            click.echo(json.dumps(fields, sort_keys=True))
        else:
            wanted = f"{row.mode}{'' if row.is_active else ' (inactive)'}"
            error = f"  {row.last_error[:120]}" if row.last_error else ""
            click.echo(
                f"{row.id:>8}  {row.status:<8} {row.customer_id:<24} {row.course_run_id:<36} {wanted:<24} "
                f"attempts={row.attempts}{error}"
            )
    if not rows and not as_json:
        click.echo("no matching rows")


@outbox_cli.command("retry")
@click.argument("row_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="every failed row (of --user, if given); needed without ids")
@click.option("--user", help="only this customer's failed rows")
@click.option("--actor", default=None, help="who asks (recorded in the operator audit log); default: the OS user")
def retry_command(*, row_ids: tuple[int, ...], all_failed: bool, user: str | None, actor: str | None) -> None:
    """Put failed LMS changes back in line (those still the latest for their learner and course)."""
    if not row_ids and not all_failed:
        raise click.UsageError("name the rows to retry, or pass --all-failed (with --user to narrow it)")
    f = OutboxFilter(status="failed", customer_id=user, ids=row_ids or None)
    celery = current_app.extensions["celery"]
    result = retry_outbox(
        current_app.extensions["engine_wiring"],
        f,
        actor=actor or f"cli:{getpass.getuser()}",
        drain=lambda customer_id: celery.send_task(LMS_DRAIN, kwargs={"customer_id": customer_id}),
    )
    click.echo(
        f"retried {len(result.retried)} failed row(s)"
        + (f": {', '.join(map(str, result.retried))}" if 0 < len(result.retried) <= 20 else "")
    )
    if result.superseded:
        click.echo(
            f"left failed, a later change of the same learner and course supersedes them: {', '.join(map(str, result.superseded))}",
            err=True,
        )
    missing = sorted(set(row_ids) - set(result.retried) - set(result.superseded))
    if missing:
        click.echo(f"not failed rows (left as they are): {', '.join(map(str, missing))}", err=True)
