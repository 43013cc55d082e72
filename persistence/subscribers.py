"""The subscribers table as the sweep sees it: which customers are due for a provider read, their
leases and check times, and batch settlement of customers whose read needs no work.

Selection walks the ``next_check_ms`` index from its low end, so its cost depends on the batch
size, not on how many subscribers exist. Selected customers are leased (their next check is
pushed out) so a backlog is not selected twice while its reconcile tasks wait in the queue.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog import Catalog
from engine.facts import SubscriberSnapshot
from engine.ports import CustomerState
from engine.reconcile import ReconcilePolicy, unchanged_check_ms
from persistence.ledger_store import SqlLedgerStore
from persistence.models import Grant, Subscriber


def select_due(factory: sessionmaker[Session], *, now_ms: int, limit: int, lease_ms: int) -> list[str]:
    """Up to ``limit`` customers whose check is due, most overdue first; leased for ``lease_ms``."""
    if limit <= 0:
        return []
    with factory() as session, session.begin():
        stmt = (
            select(Subscriber.customer_id)
            .where(Subscriber.next_check_ms <= now_ms)
            .order_by(Subscriber.next_check_ms)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        ids = list(session.scalars(stmt))
        if ids:
            session.execute(
                update(Subscriber).where(Subscriber.customer_id.in_(ids)).values(next_check_ms=now_ms + lease_ms)
            )
    return ids


def peek_due(factory: sessionmaker[Session], *, now_ms: int, limit: int) -> list[str]:
    """The customers a sweep would select now, without leasing them (dry runs)."""
    with factory() as session:
        return list(
            session.scalars(
                select(Subscriber.customer_id)
                .where(Subscriber.next_check_ms <= now_ms)
                .order_by(Subscriber.next_check_ms)
                .limit(limit)
            )
        )


def customers_with_due_expiry(factory: sessionmaker[Session], *, now_ms: int, limit: int = 1000) -> list[str]:
    """Customers holding a grant whose expiry has passed (revoked from the ledger, no provider call)."""
    with factory() as session:
        return list(
            session.scalars(
                select(Grant.customer_id)
                .where(Grant.expires_ms.is_not(None), Grant.expires_ms <= now_ms)
                .group_by(Grant.customer_id)
                .limit(limit)
            )
        )


def track_customers(factory: sessionmaker[Session], customer_ids: list[str], *, now_ms: int) -> int:
    """Make customers known to the sweep (an operator's user list), due for a check now."""
    added = 0
    with factory() as session, session.begin():
        store = SqlLedgerStore(session)
        existing = set(session.scalars(select(Subscriber.customer_id).where(Subscriber.customer_id.in_(customer_ids))))
        for customer_id in customer_ids:
            if customer_id not in existing:
                store.lock_customer(customer_id)
                store.record_identities({customer_id: customer_id})
                added += 1
        session.execute(update(Subscriber).where(Subscriber.customer_id.in_(customer_ids)).values(next_check_ms=now_ms))
    return added


def all_customer_ids(factory: sessionmaker[Session], *, after: str = "", limit: int = 1000) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(Subscriber.customer_id)
                .where(Subscriber.customer_id > after)
                .order_by(Subscriber.customer_id)
                .limit(limit)
            )
        )


def count_due(factory: sessionmaker[Session], *, now_ms: int) -> int:
    with factory() as session:
        return int(
            session.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.next_check_ms <= now_ms)) or 0
        )


def count_customers(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Subscriber)) or 0)


def settle_unchanged(
    factory: sessionmaker[Session],
    connection: Connection,
    snapshots: dict[str, SubscriberSnapshot],
    *,
    now_ms: int,
    policy: ReconcilePolicy,
    catalog: Catalog,
) -> set[str]:
    """Settle, in one transaction, the customers whose snapshot needs no work (the fast path of
    ``reconcile_user``, decided by the same ``unchanged_check_ms``): only their check time
    moves. Rows another process holds locked (an event being processed) are skipped and go
    through ``reconcile_user``, which waits for them. Aliases (an id that is not the customer's
    own) also go through it, which records the identity."""
    candidates = {cid: snap for cid, snap in snapshots.items() if snap.customer_id == cid}
    if not candidates:
        return set()
    columns = Subscriber.__table__.c
    with factory(bind=connection) as session, session.begin():
        stmt = select(
            columns.customer_id,
            columns.last_snapshot_ms,
            columns.snapshot_digest,
            columns.dirty,
            columns.next_change_ms,
            columns.projection_key,
        ).where(columns.customer_id.in_(sorted(candidates)))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        checks = []
        for row in session.execute(stmt):
            state = CustomerState(*row)
            check_at = unchanged_check_ms(state, candidates[state.customer_id], now_ms, policy, catalog)
            if check_at is not None:
                checks.append({"cid": state.customer_id, "checked": now_ms, "next_check": check_at})
        if checks:
            session.connection().execute(
                update(Subscriber.__table__)
                .where(columns.customer_id == bindparam("cid"))
                .values(last_checked_ms=bindparam("checked"), next_check_ms=bindparam("next_check"), dirty=False),
                checks,
            )
    return {c["cid"] for c in checks}


def defer_checks(factory: sessionmaker[Session], customer_ids: list[str], at_ms: int, *, dirty: bool = False) -> None:
    values: dict[str, object] = {"next_check_ms": at_ms}
    if dirty:
        values["dirty"] = True
    with factory() as session, session.begin():
        session.execute(update(Subscriber).where(Subscriber.customer_id.in_(customer_ids)).values(**values))
