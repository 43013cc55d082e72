"""Per-customer marks of REST v2 history reads (the ``history_marks`` table), and the ledger as
the decision to read one needs it: the customer's transactions, read without locking them (the
decision is taken outside any reconcile; the reconcile that follows locks what it merges)."""

from __future__ import annotations

import json
from typing import cast

from sqlalchemy import Table, select, text
from sqlalchemy.orm import Session, sessionmaker

from engine.facts import Transaction
from engine.history import HistoryMark
from persistence.models import HistoryReadMark, LedgerTransaction

_MARKS = cast(Table, HistoryReadMark.__table__)
_COLUMNS = ("v1_digest", "checked_ms", "reason", "recurring", "read_ms", "answer_digest", "requests")
# The same SQL on PostgreSQL and SQLite (3.24+). A decision without a read keeps what the last
# read answered (COALESCE): the mark always says when the history was last read.
_SAVE = text(
    f'INSERT INTO "{_MARKS.name}" (customer_id, {", ".join(_COLUMNS)}) '
    f"VALUES (:customer_id, {', '.join(':' + c for c in _COLUMNS)}) "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    "v1_digest = excluded.v1_digest, checked_ms = excluded.checked_ms, reason = excluded.reason, "
    "recurring = excluded.recurring, "
    f'read_ms = COALESCE(excluded.read_ms, "{_MARKS.name}".read_ms), '
    f'answer_digest = COALESCE(excluded.answer_digest, "{_MARKS.name}".answer_digest), '
    f'requests = COALESCE(excluded.requests, "{_MARKS.name}".requests)'
)


def load_mark(factory: sessionmaker[Session], customer_id: str) -> HistoryMark | None:
    with factory() as session:
        row = session.get(HistoryReadMark, customer_id)
        if row is None:
            return None
        return HistoryMark(row.v1_digest, row.checked_ms, row.reason, bool(row.recurring), row.read_ms)


def save_mark(
    factory: sessionmaker[Session],
    customer_id: str,
    mark: HistoryMark,
    *,
    answer_digest: str | None = None,
    requests: int | None = None,
) -> None:
    """Record a decision (and, with ``mark.read_ms``, the read it made: its answer and cost)."""
    values = {
        "customer_id": customer_id,
        "v1_digest": mark.v1_digest,
        "checked_ms": mark.checked_ms,
        "reason": mark.reason,
        "recurring": mark.recurring,
        "read_ms": mark.read_ms,
        "answer_digest": answer_digest,
        "requests": requests,
    }
    with factory() as session, session.begin():
        session.execute(_SAVE, values)


def owned_transactions(factory: sessionmaker[Session], customer_id: str) -> list[Transaction]:
    """The ledger's transactions owned by the customer, as they stand (no lock taken)."""
    with factory() as session:
        rows = session.scalars(select(LedgerTransaction).where(LedgerTransaction.owner == customer_id))
        return [
            Transaction(
                transaction_id=row.transaction_id,
                product_id=row.product_id,
                kind=row.kind,  # type: ignore[arg-type]
                original_transaction_id=row.original_transaction_id,
                store=row.store,
                is_sandbox=row.is_sandbox,
                purchased_ms=row.purchased_ms,
                period_type=row.period_type,
                ownership=row.ownership,
                expires_ms=row.expires_ms,
                grace_expires_ms=row.grace_expires_ms,
                refunded_ms=row.refunded_ms,
                owner=row.owner,
                observed=json.loads(row.observed or "{}"),
            )
            for row in rows
        ]
