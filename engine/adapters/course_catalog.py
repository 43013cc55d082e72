"""Course mappings and LMS usernames in the database; CSV import (all or nothing) and export.

LMS username of a customer (documented choice): an ``lms_users`` row for the customer id or
one of its app_user_ids (aliases) wins; otherwise the LMS username *is* the app_user_id — the
customer id (RevenueCat's original_app_user_id) unless that is anonymous (``$RCAnonymousID:``),
then the customer's first non-anonymous alias. No username: the change cannot be sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session, sessionmaker

from engine.adapters.models import CourseMappingRow, Grant, Identity, LmsUser
from engine.sinks.enrollment import CourseMapping
from engine.sinks.mapping_csv import CsvProblem, MappingCsvError, MappingRow, format_mapping_csv, parse_mapping_csv

ANONYMOUS_PREFIX = "$RCAnonymousID:"


def to_mapping(row: CourseMappingRow) -> CourseMapping:
    return CourseMapping(row.resource, row.course_run_id, row.mode, row.active, row.expires_ms, row.on_revoke)  # type: ignore[arg-type]


def mappings_for(session: Session, resources: Iterable[str]) -> dict[str, CourseMapping]:
    """The mappings of these resources (active or not), by resource."""
    names = sorted(set(resources))
    if not names:
        return {}
    rows = session.execute(_MAPPINGS_OF, {"names": names})
    return {row.resource: to_mapping(row) for row in rows}


# Core rows from a statement built once, not ORM objects: this runs in every reconcile that
# changes a grant.
_MAPPINGS_OF = select(*CourseMappingRow.__table__.c).where(
    CourseMappingRow.__table__.c.resource.in_(bindparam("names", expanding=True))
)


def all_mappings(session: Session) -> list[CourseMapping]:
    return [to_mapping(row) for row in session.scalars(select(CourseMappingRow).order_by(CourseMappingRow.resource))]


def lms_username(session: Session, customer_id: str) -> str | None:
    """The LMS username for a customer (see the module docstring for the rule)."""
    aliases = sorted(set(session.scalars(select(Identity.app_user_id).where(Identity.customer_id == customer_id))) | {customer_id})
    mapped = dict(session.execute(select(LmsUser.app_user_id, LmsUser.username).where(LmsUser.app_user_id.in_(aliases))).all())
    if customer_id in mapped:
        return mapped[customer_id]
    for alias in aliases:
        if alias in mapped:
            return mapped[alias]
    if not customer_id.startswith(ANONYMOUS_PREFIX):
        return customer_id
    return next((a for a in aliases if not a.startswith(ANONYMOUS_PREFIX)), None)


def set_lms_username(session: Session, app_user_id: str, username: str | None) -> None:
    """Map an app_user_id to an LMS username (None: remove the mapping, back to equality)."""
    row = session.get(LmsUser, app_user_id)
    if username is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(LmsUser(app_user_id=app_user_id, username=username))
    else:
        row.username = username
    session.flush()


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
    from engine.adapters.outbox import enqueue_for_holders

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
        CsvProblem(r.line, f"course_run_id {r.mapping.course_run_id!r} is already mapped to {kept[r.mapping.course_run_id]!r} "
                           "(not in this file; use --replace or map that resource elsewhere)")
        for r in rows
        if r.mapping.course_run_id in kept
    ]
    if problems:
        raise MappingCsvError(problems)


def _new_row(m: CourseMapping, now_ms: int) -> CourseMappingRow:
    return CourseMappingRow(
        resource=m.resource, course_run_id=m.course_run_id, mode=m.mode, active=m.active,
        expires_ms=m.expires_ms, on_revoke=m.on_revoke, expiry_enqueued=False, updated_ms=now_ms,
    )


def export_course_mappings(factory: sessionmaker[Session]) -> str:
    """Every mapping as CSV (the format ``import_course_mappings`` reads)."""
    with factory() as session:
        return format_mapping_csv(all_mappings(session))


def holders_of(session: Session, resource: str) -> list[str]:
    """Customers holding a grant on ``resource``."""
    return list(session.scalars(select(Grant.customer_id).where(Grant.resource == resource).order_by(Grant.customer_id)))
