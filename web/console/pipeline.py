"""Console pages of the pipeline: the overview, the inbox (filters, one webhook, replay and
watching a replay), the LMS outbox (retry) and the operator activity log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from persistence.console_queries import INBOX_STATUSES, audit_caused_by
from persistence.inbox_rows import RowFilter, get_row, list_rows, users_of
from persistence.operator_log import recent_actions
from persistence.outbox_rows import OUTBOX_STATUSES, OutboxFilter, list_outbox
from services.clock import wall_clock_ms
from services.console import (
    LATENCY_TARGET_MS,
    SUCCESS_TARGET,
    WINDOWS,
    overview,
    remember_replay,
    replay,
    replay_progress,
    retry_outbox,
)
from services.wiring import Wiring
from tasks.names import INBOX_PROCESS, LMS_DRAIN
from web.console.auth import admin_required
from web.console.blueprint import bp
from web.console.format import drift_chart

PAGE = 50
# "received within" choices of the inbox filter
WITHIN = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
NOT_FINAL = {"received", "processing", "retrying"}


def wiring() -> Wiring:
    return current_app.extensions["engine_wiring"]


def send_task(name: str, **options: object) -> None:
    current_app.extensions["celery"].send_task(name, **options)


def page_of(rows: Sequence, limit: int = PAGE) -> tuple[list, int | None]:
    """The rows of one page (``limit + 1`` were read) and the key of the next, if any."""
    rows = list(rows)
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def with_query(path: str, values: dict[str, str]) -> str:
    """``path`` with the filter's non-empty values as its query."""
    query = urlencode({k: v for k, v in values.items() if v})
    return f"{path}?{query}" if query else path


def int_arg(name: str) -> int | None:
    value = request.values.get(name, "").strip()
    return int(value) if value.isdigit() else None


@bp.get("/", endpoint="overview")
def overview_page() -> str:
    window = request.args.get("window", "24h")
    if window not in WINDOWS:
        window = "24h"
    view = overview(wiring(), window)
    chart = drift_chart(view.drift, since_ms=view.since_ms, until_ms=view.until_ms, bucket_ms=view.bucket_ms)
    return render_template(
        "console/overview.html",
        view=view,
        chart=chart,
        windows=list(WINDOWS),
        success_target=SUCCESS_TARGET,
        latency_target_ms=LATENCY_TARGET_MS,
        now_ms=wall_clock_ms(),
    )


# --- inbox -----------------------------------------------------------------------------------


def inbox_filter() -> tuple[RowFilter, dict[str, str]]:
    """The filter of the inbox page from its query (or form), and its values for the form."""
    values = {k: request.values.get(k, "").strip() for k in ("status", "type", "user", "within", "until")}
    if values["status"] not in INBOX_STATUSES:
        values["status"] = ""
    if values["within"] not in WITHIN:
        values["within"] = ""
    now = wall_clock_ms()
    until_ms = None
    if values["until"]:
        try:
            until_ms = int(datetime.fromisoformat(values["until"]).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            flash(f"'{values['until']}' is not a date and time (UTC); ignored", "error")
            values["until"] = ""
    since_ms = (until_ms or now) - WITHIN[values["within"]] * 1000 if values["within"] else None
    f = RowFilter(
        status=values["status"] or None,
        event_type=values["type"] or None,
        app_user_id=values["user"] or None,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    return f, values


@bp.get("/inbox")
def inbox() -> str:
    f, values = inbox_filter()
    rows, next_before = page_of(list_rows(wiring().session_factory, f, before_id=int_arg("before"), limit=PAGE + 1))
    return render_template(
        "console/inbox.html",
        rows=rows,
        next_before=next_before,
        values=values,
        statuses=INBOX_STATUSES,
        within=list(WITHIN),
        paged=int_arg("before") is not None,
        now_ms=wall_clock_ms(),
    )


@bp.get("/inbox/<int:inbox_id>")
def inbox_row(inbox_id: int) -> str:
    w = wiring()
    row = get_row(w.session_factory, inbox_id)
    if row is None:
        abort(404)
    caused = audit_caused_by(w.session_factory, [f"{row.event_type}:{row.event_id}"]) if row.event_id else []
    return render_template(
        "console/inbox_row.html",
        row=row,
        users=users_of(w.session_factory, inbox_id),
        caused=caused,
        waiting=row.status in NOT_FINAL,
        now_ms=wall_clock_ms(),
    )


@bp.post("/inbox/<int:inbox_id>/replay")
@admin_required
def replay_one(inbox_id: int) -> Response:
    ids = replay(
        wiring(),
        RowFilter(ids=(inbox_id,)),
        actor=g.operator.actor,
        enqueue=lambda i: send_task(INBOX_PROCESS, args=(i,)),
    )
    if not ids:
        flash(f"Webhook {inbox_id} is not a dead letter: nothing replayed.", "error")
        return redirect(url_for("console.inbox_row", inbox_id=inbox_id))
    flash(f"Webhook {inbox_id} replayed: queued for processing.", "ok")
    return redirect(url_for("console.replay_watch", token=remember_replay(wiring(), ids)))


@bp.post("/inbox/replay")
@admin_required
def replay_matching() -> Response:
    f, values = inbox_filter()
    ids = replay(wiring(), f, actor=g.operator.actor, enqueue=lambda i: send_task(INBOX_PROCESS, args=(i,)))
    if not ids:
        flash("No dead letter matches this filter: nothing replayed.", "error")
        return redirect(with_query(url_for("console.inbox"), values))
    flash(f"{len(ids):,} dead letters replayed: queued for processing.", "ok")
    return redirect(url_for("console.replay_watch", token=remember_replay(wiring(), ids)))


@bp.get("/replays/<token>")
def replay_watch(token: str) -> str:
    w = wiring()
    progress = replay_progress(w, token)
    if progress is None:
        abort(404)
    shown = list_rows(w.session_factory, RowFilter(ids=tuple(progress.ids[:PAGE])), limit=PAGE)
    return render_template("console/replay.html", progress=progress, rows=shown, now_ms=wall_clock_ms())


# --- LMS outbox ------------------------------------------------------------------------------


def outbox_filter() -> tuple[OutboxFilter, dict[str, str]]:
    values = {k: request.values.get(k, "").strip() for k in ("status", "user")}
    if values["status"] not in OUTBOX_STATUSES:
        values["status"] = ""
    return OutboxFilter(status=values["status"] or None, customer_id=values["user"] or None), values


@bp.get("/outbox")
def outbox() -> str:
    f, values = outbox_filter()
    rows, next_before = page_of(list_outbox(wiring().session_factory, f, before_id=int_arg("before"), limit=PAGE + 1))
    return render_template(
        "console/outbox.html",
        rows=rows,
        next_before=next_before,
        values=values,
        statuses=OUTBOX_STATUSES,
        sink_on=wiring().course_sink is not None,
        paged=int_arg("before") is not None,
        now_ms=wall_clock_ms(),
    )


@bp.post("/outbox/retry")
@admin_required
def outbox_retry() -> Response:
    f, values = outbox_filter()
    row_id = int_arg("id")
    if row_id is not None:
        f = OutboxFilter(ids=(row_id,))
    result = retry_outbox(
        wiring(), f, actor=g.operator.actor, drain=lambda c: send_task(LMS_DRAIN, kwargs={"customer_id": c})
    )
    message = f"{len(result.retried):,} failed LMS changes put back in line"
    if result.superseded:
        message += f"; {len(result.superseded):,} left failed (a later change of the same course supersedes them)"
    flash(message + ".", "ok" if result.retried else "error")
    return redirect(with_query(url_for("console.outbox"), values))


# --- operator activity -----------------------------------------------------------------------


@bp.get("/activity")
def activity() -> str:
    rows, next_before = page_of(recent_actions(wiring().session_factory, limit=PAGE + 1, before_id=int_arg("before")))
    return render_template(
        "console/activity.html",
        rows=rows,
        next_before=next_before,
        paged=int_arg("before") is not None,
        now_ms=wall_clock_ms(),
    )
