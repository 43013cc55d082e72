"""Console pages of drift (report by window and kind, examples, CSV) and of the course mappings
(list, add, edit, delete, CSV import with a preview, export)."""

from __future__ import annotations

from flask import Response, abort, flash, g, redirect, render_template, request, stream_with_context, url_for
from werkzeug.wrappers import Response as BaseResponse

from engine.course_mapping_csv import COLUMNS, MappingCsvError, format_instant
from engine.enrollment import PAID_MODES, REVOKE_POLICIES
from persistence.audit import drift_report
from persistence.console_queries import drift_rows
from persistence.course_mappings import all_mappings
from services.clock import wall_clock_ms
from services.console import WINDOWS, drift_csv, window_bounds
from services.course_mappings import export_course_mappings
from services.mapping_edits import FormProblems, delete_mapping, import_mappings, problems_by_field, save_mapping
from web.console.auth import admin_required
from web.console.blueprint import bp
from web.console.pipeline import PAGE, int_arg, page_of, wiring

MAX_IMPORT_BYTES = 200 * 1024  # under the app's request limit (MAX_CONTENT_LENGTH)


def chosen_window() -> str:
    window = request.args.get("window", "24h")
    return window if window in WINDOWS else "24h"


@bp.get("/drift")
def drift() -> str:
    window, kind = chosen_window(), request.args.get("kind", "").strip() or None
    since, until, _ = window_bounds(window, wall_clock_ms())
    factory = wiring().session_factory
    rows, next_before = page_of(
        drift_rows(factory, since_ms=since, until_ms=until, kind=kind, before_id=int_arg("before"), limit=PAGE + 1)
    )
    return render_template(
        "console/drift.html",
        report=drift_report(factory, since_ms=since, until_ms=until),
        rows=rows,
        next_before=next_before,
        window=window,
        windows=list(WINDOWS),
        kind=kind,
        paged=int_arg("before") is not None,
        now_ms=wall_clock_ms(),
    )


@bp.get("/drift.csv")
def drift_download() -> BaseResponse:
    window, kind = chosen_window(), request.args.get("kind", "").strip() or None
    name = f"drift-{window}{'-' + kind if kind else ''}-{format_instant(wall_clock_ms())[:16].replace(':', '')}.csv"
    return Response(
        stream_with_context(drift_csv(wiring(), window, kind)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# --- course mappings -------------------------------------------------------------------------


def known_resources() -> set[str]:
    return {gr.resource for product in wiring().catalog.products.values() for gr in product.grants}


def form_context(values: dict[str, str], problems: FormProblems | None, *, creating: bool) -> dict[str, object]:
    return {
        "values": values,
        "problems": problems or FormProblems(),
        "creating": creating,
        "modes": sorted(PAID_MODES),
        "revoke_policies": sorted(REVOKE_POLICIES),
        "resources": sorted(known_resources()),
    }


@bp.get("/mappings")
def mappings() -> str:
    with wiring().session_factory() as session:
        rows = all_mappings(session)
    return render_template("console/mappings.html", rows=rows, format_instant=format_instant, now_ms=wall_clock_ms())


@bp.get("/mappings/new")
@admin_required
def mapping_new() -> str:
    values = dict.fromkeys(COLUMNS, "") | {
        "active": "true",
        "mode": "professional",
        "on_revoke": "audit",
        "resource": request.args.get("resource", ""),
    }
    return render_template("console/mapping_form.html", **form_context(values, None, creating=True))


@bp.get("/mappings/<path:resource>/edit")
@admin_required
def mapping_edit(resource: str) -> str:
    with wiring().session_factory() as session:
        found = [m for m in all_mappings(session) if m.resource == resource]
    if not found:
        abort(404)
    m = found[0]
    values = {
        "resource": m.resource,
        "course_run_id": m.course_run_id,
        "mode": m.mode,
        "active": "true" if m.active else "false",
        "expires_at": format_instant(m.expires_ms),
        "on_revoke": m.on_revoke,
    }
    return render_template("console/mapping_form.html", **form_context(values, None, creating=False))


@bp.post("/mappings")
@admin_required
def mapping_save() -> BaseResponse | tuple[str, int]:
    creating = request.form.get("creating") == "1"
    values = {c: request.form.get(c, "").strip() for c in COLUMNS}
    values["active"] = "true" if request.form.get("active") else "false"
    result = save_mapping(
        wiring().session_factory,
        values,
        known_resources=known_resources(),
        actor=g.operator.actor,
        now_ms=wall_clock_ms(),
        creating=creating,
    )
    if isinstance(result, FormProblems):
        return render_template("console/mapping_form.html", **form_context(values, result, creating=creating)), 422
    what = "created" if result.created else "updated" if result.updated else "unchanged"
    flash(f"Mapping {values['resource']} {what}; {result.enqueued} LMS change(s) queued for learners holding it.", "ok")
    return redirect(url_for("console.mappings"))


@bp.post("/mappings/<path:resource>/delete")
@admin_required
def mapping_delete(resource: str) -> BaseResponse:
    if delete_mapping(wiring().session_factory, resource, actor=g.operator.actor, now_ms=wall_clock_ms()):
        flash(f"Mapping {resource} deleted (LMS enrollments already made are left as they are).", "ok")
    else:
        flash(f"No mapping for {resource}.", "error")
    return redirect(url_for("console.mappings"))


@bp.get("/mappings.csv")
def mappings_download() -> BaseResponse:
    return Response(
        export_course_mappings(wiring().session_factory),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="course-mappings.csv"'},
    )


@bp.route("/mappings/import", methods=["GET", "POST"])
@admin_required
def mapping_import() -> BaseResponse | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("console/mapping_import.html", text="", preview=None, problems=None, replace=False)
    upload = request.files.get("file")
    text = upload.read(MAX_IMPORT_BYTES + 1).decode("utf-8-sig", "replace") if upload and upload.filename else ""
    text = text or request.form.get("text", "")
    replace = bool(request.form.get("replace"))
    confirmed = request.form.get("confirm") == "1"
    if len(text.encode()) > MAX_IMPORT_BYTES:
        flash(f"The file is over {MAX_IMPORT_BYTES // 1024} KiB.", "error")
        return render_template(
            "console/mapping_import.html", text="", preview=None, problems=None, replace=replace
        ), 413
    try:
        result = import_mappings(
            wiring().session_factory,
            text,
            known_resources=known_resources(),
            replace=replace,
            dry_run=not confirmed,
            actor=g.operator.actor,
            now_ms=wall_clock_ms(),
        )
    except MappingCsvError as exc:
        problems = problems_by_field(exc.problems)
        return render_template(
            "console/mapping_import.html",
            text=text,
            preview=None,
            problems=exc.problems,
            by_field=problems,
            replace=replace,
        ), 422
    if not confirmed:
        return render_template("console/mapping_import.html", text=text, preview=result, problems=None, replace=replace)
    flash(
        f"Imported: {len(result.created)} created, {len(result.updated)} updated, {len(result.deleted)} deleted, "
        f"{result.unchanged} unchanged; {result.enqueued} LMS change(s) queued.",
        "ok",
    )
    return redirect(url_for("console.mappings"))
