"""The audit log read back: drift repaired in a window, by kind, with examples."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import AuditEntry


@dataclass(frozen=True)
class DriftRow:
    drift_kind: str
    repairs: int
    customers: int


def drift_report(factory: sessionmaker[Session], *, since_ms: int, until_ms: int) -> list[DriftRow]:
    """Drift repaired in a time window, by kind (from the audit log)."""
    with factory() as session:
        rows = session.execute(
            select(AuditEntry.drift_kind, func.count(), func.count(func.distinct(AuditEntry.customer_id)))
            .where(AuditEntry.drift_kind.is_not(None), AuditEntry.at_ms >= since_ms, AuditEntry.at_ms < until_ms)
            .group_by(AuditEntry.drift_kind)
            .order_by(AuditEntry.drift_kind)
        ).all()
    return [DriftRow(kind, int(n), int(c)) for kind, n, c in rows]


def drift_examples(
    factory: sessionmaker[Session], *, since_ms: int, until_ms: int, limit: int = 20
) -> list[AuditEntry]:
    with factory() as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.drift_kind.is_not(None), AuditEntry.at_ms >= since_ms, AuditEntry.at_ms < until_ms)
                .order_by(AuditEntry.id.desc())
                .limit(limit)
            )
        )
