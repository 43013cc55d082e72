"""Console pages of learners: find one, their whole story (access now and its sources, ledger,
audit trail with causes, the webhooks that named them, LMS enrollments) and "sync now"."""

from __future__ import annotations

import json

from flask import abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from engine.errors import EngineError, TransientError
from persistence.console_queries import (
    customer_of,
    learner_audit,
    learner_outbox,
    learner_record,
    learners_from,
    webhooks_naming,
)
from persistence.course_mappings import lms_username, mappings_for
from services.clock import wall_clock_ms
from services.console import sync_learner
from web.console.auth import admin_required
from web.console.blueprint import bp
from web.console.pipeline import PAGE, int_arg, page_of, wiring


@bp.get("/learners")
def learners() -> Response | str:
    query = request.args.get("q", "").strip()
    start = request.args.get("from", "")
    if query and not start:
        known = customer_of(wiring().session_factory, query)
        if known is not None:
            return redirect(url_for("console.learner", app_user_id=query))
        start = query
    rows = learners_from(wiring().session_factory, start, limit=PAGE + 1)
    shown, more = rows[:PAGE], len(rows) > PAGE
    return render_template(
        "console/learners.html",
        rows=shown,
        next_from=rows[PAGE].customer_id if more else None,
        query=query,
        start=start,
        now_ms=wall_clock_ms(),
    )


@bp.get("/learners/<path:app_user_id>")
def learner(app_user_id: str) -> str:
    w = wiring()
    factory = w.session_factory
    customer_id = customer_of(factory, app_user_id)
    if customer_id is None:
        abort(404)
    record = learner_record(factory, customer_id)
    now = wall_clock_ms()
    audit, next_audit = page_of(learner_audit(factory, customer_id, before_id=int_arg("audit_before"), limit=PAGE + 1))
    webhooks = webhooks_naming(factory, sorted({customer_id, *record.aliases}), limit=20)
    outbox = learner_outbox(factory, customer_id)
    held = {r.resource for r in outbox} | {gr.resource for gr in record.grants}
    lms = lms_state(customer_id, held) if request.args.get("lms") == "read" else None
    return render_template(
        "console/learner.html",
        app_user_id=app_user_id,
        customer_id=customer_id,
        record=record,
        active=[gr for gr in record.grants if gr.expires_ms is None or gr.expires_ms > now],
        sources={gr.resource: json.loads(gr.sources or "[]") for gr in record.grants},
        audit=audit,
        next_audit=next_audit,
        webhooks=webhooks,
        outbox=outbox,
        lms=lms,
        sink_on=w.course_sink is not None,
        now_ms=now,
    )


def lms_state(customer_id: str, resources: set[str]) -> dict[str, str]:
    """The learner's enrollment in each mapped course run they hold or were sent, read from the
    LMS now (on request only: one LMS call per course)."""
    w = wiring()
    sink = w.course_sink
    if sink is None:
        return {}
    with w.session_factory() as session:
        username = lms_username(session, customer_id)
        mappings = mappings_for(session, resources)
    states: dict[str, str] = {}
    for resource, mapping in sorted(mappings.items()):
        if username is None:
            states[resource] = "no LMS username"
            continue
        try:
            state = sink.read(username, mapping.course_run_id)
        except EngineError as exc:
            states[resource] = f"unreadable: {exc}"
            continue
        states[resource] = (
            "not enrolled" if state is None else f"{state.mode} ({'active' if state.is_active else 'inactive'})"
        )
    return states


@bp.post("/learners/<path:app_user_id>/sync")
@admin_required
def sync(app_user_id: str) -> Response:
    try:
        changes = sync_learner(wiring(), app_user_id, actor=g.operator.actor)
    except TransientError as exc:
        flash(f"Sync failed for now (the learner is marked for the sweep): {exc}", "error")
    except EngineError as exc:
        flash(f"The provider refused to read {app_user_id}: {exc}", "error")
    else:
        flash(f"Synced from the provider: {', '.join(changes) if changes else 'no change was needed'}.", "ok")
    return redirect(url_for("console.learner", app_user_id=app_user_id))
