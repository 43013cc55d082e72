"""Operator commands for the inbox: ``inbox list``, ``inbox show``, ``inbox replay``."""

from __future__ import annotations

import getpass
import json

import click
from flask import current_app
from flask.cli import AppGroup

from persistence.inbox_rows import RowFilter
from services.clock import wall_clock_ms
from services.dead_letters import list_inbox, replay_dead_letters, show_inbox_row
from tasks.names import INBOX_PROCESS

inbox_cli = AppGroup("inbox", help="Webhooks as stored: list, show, replay dead letters.")

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since_ms(text: str | None) -> int | None:
    if not text:
        return None
    value, unit = text[:-1], text[-1:].lower()
    if unit not in DURATION_UNITS or not value.isdigit():
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 24h or 7d", param_hint="--since")
    return wall_clock_ms() - int(value) * DURATION_UNITS[unit] * 1000


def _filter(status: str | None, event_type: str | None, user: str | None, since: str | None) -> RowFilter:
    return RowFilter(status=status, event_type=event_type, app_user_id=user, since_ms=_since_ms(since))


def _factory():
    return current_app.extensions["engine_wiring"].session_factory


@inbox_cli.command("list")
@click.option("--status", help="received, processing, retrying, processed, degraded, ignored, malformed, dead")
@click.option("--type", "event_type", help="event type, e.g. RENEWAL")
@click.option("--user", help="an app_user_id the webhook names")
@click.option("--since", help="received within this long, e.g. 24h")
@click.option("--before", "before_id", type=int, help="rows older than this id (the next page)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_command(
    *,
    status: str | None,
    event_type: str | None,
    user: str | None,
    since: str | None,
    before_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Stored webhooks, newest first."""
    rows = list_inbox(_factory(), _filter(status, event_type, user, since), before_id=before_id, limit=limit)
    for row in rows:
        if as_json:
            click.echo(json.dumps(row.summary(), sort_keys=True))
        else:
            error = f"  {row.error_kind}: {row.last_error[:120]}" if row.last_error else ""
            click.echo(f"{row.id:>8}  {row.status:<10} {row.event_type or '-':<24} attempts={row.attempts}{error}")
    if not rows and not as_json:
        click.echo("no matching rows")


@inbox_cli.command("show")
@click.argument("inbox_id", type=int)
def show_command(inbox_id: int) -> None:
    """One stored webhook: its state, the users it names and its body."""
    row = show_inbox_row(_factory(), inbox_id)
    if row is None:
        raise click.ClickException(f"no inbox row {inbox_id}")
    click.echo(json.dumps({**row.summary(), "users": list(row.users), "body": row.body}, indent=2, sort_keys=True))


@inbox_cli.command("replay")
@click.argument("inbox_ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="every dead letter matching the filters (needed without ids)")
@click.option("--type", "event_type", help="only dead letters of this event type")
@click.option("--user", help="only dead letters naming this app_user_id")
@click.option("--since", help="only dead letters received within this long, e.g. 24h")
@click.option("--actor", default=None, help="who asks (recorded in the operator audit log); default: the OS user")
def replay_command(
    *,
    inbox_ids: tuple[int, ...],
    all_dead: bool,
    event_type: str | None,
    user: str | None,
    since: str | None,
    actor: str | None,
) -> None:
    """Put dead letters back in the queue, by id or by filter."""
    if not inbox_ids and not all_dead:
        raise click.UsageError("name the rows to replay, or pass --all-dead with optional filters")
    f = _filter("dead", event_type, user, since)
    if inbox_ids:
        f = RowFilter(status="dead", event_type=event_type, app_user_id=user, since_ms=f.since_ms, ids=inbox_ids)
    celery = current_app.extensions["celery"]
    who = actor or f"cli:{getpass.getuser()}"
    ids = replay_dead_letters(
        _factory(), f, actor=who, enqueue=lambda i: celery.send_task(INBOX_PROCESS, args=(i,)), now_ms=wall_clock_ms()
    )
    skipped = sorted(set(inbox_ids) - set(ids))
    click.echo(
        f"replayed {len(ids)} dead letter(s)" + (f": {', '.join(map(str, ids))}" if ids and len(ids) <= 20 else "")
    )
    if skipped:
        click.echo(f"not dead letters (left as they are): {', '.join(map(str, skipped))}", err=True)
