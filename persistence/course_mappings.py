"""Course mappings and LMS usernames in the database.

LMS username of a customer (documented choice): an ``lms_users`` row for the customer id or
one of its app_user_ids (aliases) wins; otherwise the LMS username *is* the app_user_id — the
customer id (RevenueCat's original_app_user_id) unless that is anonymous (``$RCAnonymousID:``),
then the customer's first non-anonymous alias. No username: the change cannot be sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, select
from sqlalchemy.orm import Session

from engine.enrollment import CourseMapping, RevokePolicy
from persistence.models import CourseMappingRow, Grant, Identity, LmsUser

ANONYMOUS_PREFIX = "$RCAnonymousID:"


def to_mapping(row: CourseMappingRow | Row[Any]) -> CourseMapping:
    """A stored mapping (an ORM row or a Core row of the same columns) as the engine's."""
    on_revoke = cast(RevokePolicy, row.on_revoke)  # checked on import (engine/course_mapping_csv.py)
    return CourseMapping(row.resource, row.course_run_id, row.mode, row.active, row.expires_ms, on_revoke)


def mappings_for(session: Session, resources: Iterable[str]) -> dict[str, CourseMapping]:
    """The mappings of these resources (active or not), by resource."""
    names = sorted(set(resources))
    if not names:
        return {}
    rows = session.execute(_MAPPINGS_OF, {"names": names})
    return {row.resource: to_mapping(row) for row in rows}


# Core rows from a statement built once, not ORM objects: this runs in every reconcile that
# changes a grant.
_MAPPINGS_TABLE = cast(Table, CourseMappingRow.__table__)
_MAPPINGS_OF = select(*_MAPPINGS_TABLE.c).where(_MAPPINGS_TABLE.c.resource.in_(bindparam("names", expanding=True)))


def all_mappings(session: Session) -> list[CourseMapping]:
    return [to_mapping(row) for row in session.scalars(select(CourseMappingRow).order_by(CourseMappingRow.resource))]


def lms_username(session: Session, customer_id: str) -> str | None:
    """The LMS username for a customer (see the module docstring for the rule)."""
    aliases = sorted(
        set(session.scalars(select(Identity.app_user_id).where(Identity.customer_id == customer_id))) | {customer_id}
    )
    rows = session.execute(select(LmsUser.app_user_id, LmsUser.username).where(LmsUser.app_user_id.in_(aliases)))
    mapped: dict[str, str] = {str(app_user_id): str(username) for app_user_id, username in rows}
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


def holders_of(session: Session, resource: str) -> list[str]:
    """Customers holding a grant on ``resource``."""
    return list(
        session.scalars(select(Grant.customer_id).where(Grant.resource == resource).order_by(Grant.customer_id))
    )
