"""Course mappings edited one at a time in the console, with exactly the rules of the CSV import.

A mapping saved from a form is imported as a one-row CSV file (``import_course_mappings``,
``replace=False``): the same validation (engine/course_mapping_csv.py), the same uniqueness of
course runs against the stored rows, and the same LMS follow-up for learners already holding
the resource. Every problem message of the import names its column first, which is how each
is shown next to its field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from engine.course_mapping_csv import COLUMNS, CsvProblem, MappingCsvError
from persistence.models import CourseMappingRow
from persistence.operator_log import log_action
from services.course_mappings import ImportResult, import_course_mappings


@dataclass
class FormProblems:
    """Problems of one mapping form: by field, and those about the whole row."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.by_field or self.general)


def problems_by_field(problems: list[CsvProblem]) -> FormProblems:
    result = FormProblems()
    for problem in problems:
        first = problem.message.split(" ", 1)[0].rstrip(":")
        if first in COLUMNS:
            result.by_field.setdefault(first, []).append(problem.message)
        else:
            result.general.append(problem.message)
    return result


def one_row_csv(values: Mapping[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerow([(values.get(c) or "").strip() for c in COLUMNS])
    return out.getvalue()


def save_mapping(
    factory: sessionmaker[Session],
    values: Mapping[str, str],
    *,
    known_resources: Collection[str],
    actor: str,
    now_ms: int,
    creating: bool,
) -> FormProblems | ImportResult:
    """Save one mapping from a form: the import's result, or the problems by field (nothing
    written). ``creating``: refuse a resource that is already mapped (edit it instead)."""
    resource = (values.get("resource") or "").strip()
    if creating and resource:
        with factory() as session:
            if session.get(CourseMappingRow, resource) is not None:
                return FormProblems(
                    by_field={"resource": [f"resource {resource!r} is already mapped: edit it instead"]}
                )
    try:
        result = import_course_mappings(
            factory, one_row_csv(values), known_resources=known_resources, replace=False, now_ms=now_ms
        )
    except MappingCsvError as exc:
        return problems_by_field(exc.problems)
    log_action(
        factory,
        actor=actor,
        action="mapping.create" if creating else "mapping.update",
        target=resource,
        detail={c: (values.get(c) or "").strip() for c in COLUMNS} | {"lms_changes": result.enqueued},
        now_ms=now_ms,
    )
    return result


def delete_mapping(factory: sessionmaker[Session], resource: str, *, actor: str, now_ms: int) -> bool:
    """Forget a mapping (LMS enrollments already made are left as they are, as ``--replace``
    leaves them); False when there was none."""
    with factory() as session, session.begin():
        row = session.get(CourseMappingRow, resource)
        if row is not None:
            session.delete(row)
    if row is not None:
        log_action(factory, actor=actor, action="mapping.delete", target=resource, now_ms=now_ms)
    return row is not None


def import_mappings(
    factory: sessionmaker[Session],
    text: str,
    *,
    known_resources: Collection[str],
    replace: bool,
    dry_run: bool,
    actor: str,
    now_ms: int,
) -> ImportResult:
    """A CSV import from the console (a preview when ``dry_run``); MappingCsvError as the CLI's."""
    result = import_course_mappings(
        factory, text, known_resources=known_resources, replace=replace, now_ms=now_ms, dry_run=dry_run
    )
    if not dry_run:
        log_action(
            factory,
            actor=actor,
            action="mapping.import",
            detail={
                "replace": replace,
                "created": len(result.created),
                "updated": len(result.updated),
                "deleted": len(result.deleted),
                "unchanged": result.unchanged,
                "lms_changes": result.enqueued,
            },
            now_ms=now_ms,
        )
    return result
