"""Granted access read back: what apps see through ``GET /v1/users/<id>/access``."""

from __future__ import annotations

from sqlalchemy import String, and_, func, literal, or_, select
from sqlalchemy.orm import Session, sessionmaker

from engine.access import Access
from persistence.ledger_store import grant_to_access
from persistence.models import Grant, Identity


def active_grants(factory: sessionmaker[Session], app_user_id: str, now_ms: int) -> tuple[str, list[Access]]:
    """(customer id, active grants) of the customer ``app_user_id`` belongs to (itself when
    unknown), in one round trip."""
    known = select(Identity.customer_id).where(Identity.app_user_id == app_user_id).scalar_subquery()
    customer = select(func.coalesce(known, literal(app_user_id, String())).label("customer_id")).subquery()
    stmt = (
        select(customer.c.customer_id, Grant)
        .select_from(customer)
        .outerjoin(
            Grant,
            and_(
                Grant.customer_id == customer.c.customer_id, or_(Grant.expires_ms.is_(None), Grant.expires_ms > now_ms)
            ),
        )
        .order_by(Grant.resource)
    )
    with factory() as session:
        rows = session.execute(stmt).all()
    customer_id = rows[0][0] if rows else app_user_id
    return customer_id, [grant_to_access(grant) for _, grant in rows if grant is not None]
