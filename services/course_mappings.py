"""Course mappings imported from CSV (all or nothing, validated line by line) and exported.

Customers already holding a new or changed resource get an outbox row so that the LMS follows
the new mapping; a moved course run gets the old run revoked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from engine.course_mapping_csv import CsvProblem, MappingCsvError, MappingRow, format_mapping_csv, parse_mapping_csv
from engine.enrollment import CourseMapping
from persistence.course_mappings import all_mappings, to_mapping
from persistence.models import CourseMappingRow
from persistence.outbox import enqueue_for_holders


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    enqueued: int = 0  # outbox rows for customers already holding a changed resource


def import_course_mappings(
    factory: sessionmaker[Session],
    text: str,
    *,
    known_resources: Collection[str] | None,
    replace: bool,
    now_ms: int,
    dry_run: bool = False,
) -> ImportResult:
    """Validate ``text`` entirely, then write every row in one transaction (or nothing).

    ``replace``: rows absent from the file are deleted (their LMS enrollments are left as
    they are). Customers already holding a new or changed resource get an outbox row so that
    the LMS follows the new mapping; a moved course run gets the old run revoked.
    Raises MappingCsvError with every problem, line by line.
    """
    rows = parse_mapping_csv(text, known_resources=known_resources)
    result = ImportResult()
    with factory() as session:
        session.begin()
        stored = {row.resource: row for row in session.scalars(select(CourseMappingRow).with_for_update())}
        _check_runs_stay_unique(rows, stored, replace)
        incoming = {r.mapping.resource for r in rows}
        for row in rows:
            new = row.mapping
            old_row = stored.get(new.resource)
            old = to_mapping(old_row) if old_row is not None else None
            if old == new:
                result.unchanged += 1
                continue
            if old_row is None:
                session.add(_new_row(new, now_ms))
                result.created.append(new.resource)
            else:
                if old is not None and old.active and old.course_run_id != new.course_run_id:
                    result.enqueued += enqueue_for_holders(session, old, now_ms=now_ms, ref="csv-import", revoke=True)
                old_row.course_run_id, old_row.mode, old_row.active = new.course_run_id, new.mode, new.active
                old_row.expires_ms, old_row.on_revoke, old_row.updated_ms = new.expires_ms, new.on_revoke, now_ms
                old_row.expiry_enqueued = False
                result.updated.append(new.resource)
            session.flush()
            result.enqueued += enqueue_for_holders(session, new, now_ms=now_ms, ref="csv-import")
        if replace:
            gone = sorted(set(stored) - incoming)
            if gone:
                session.execute(delete(CourseMappingRow).where(CourseMappingRow.resource.in_(gone)))
            result.deleted = gone
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return result


def _check_runs_stay_unique(rows: Sequence[MappingRow], stored: dict[str, CourseMappingRow], replace: bool) -> None:
    """One course run per resource, counting stored rows the file leaves in place."""
    incoming = {r.mapping.resource for r in rows}
    kept = {} if replace else {row.course_run_id: row.resource for res, row in stored.items() if res not in incoming}
    problems = [
        CsvProblem(
            r.line,
            f"course_run_id {r.mapping.course_run_id!r} is already mapped to {kept[r.mapping.course_run_id]!r} "
            "(not in this file; use --replace or map that resource elsewhere)",
        )
        for r in rows
        if r.mapping.course_run_id in kept
    ]
    if problems:
        raise MappingCsvError(problems)


def _new_row(m: CourseMapping, now_ms: int) -> CourseMappingRow:
    return CourseMappingRow(
        resource=m.resource,
        course_run_id=m.course_run_id,
        mode=m.mode,
        active=m.active,
        expires_ms=m.expires_ms,
        on_revoke=m.on_revoke,
        expiry_enqueued=False,
        updated_ms=now_ms,
    )


def export_course_mappings(factory: sessionmaker[Session]) -> str:
    """Every mapping as CSV (the format ``import_course_mappings`` reads)."""
    with factory() as session:
        return format_mapping_csv(all_mappings(session))
