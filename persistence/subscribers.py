"""The subscribers table as the sweep sees it: which customers are due for a provider read, their
leases and check times.

Selection serves the urgent checks first (dirty customers, customers whose expiry or renewal
passed since their last read) and then the rest, each walking an index from its low end, so its
cost depends on the batch size, not on how many subscribers exist or are overdue. Selected
customers are leased (their next check is pushed out) so a backlog is not selected twice while
its reconcile tasks wait in the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from engine.reconcile import RECHECK_AFTER_EXPIRY_MS
from persistence.ledger_store import SqlLedgerStore
from persistence.models import Grant, Identity, Subscriber

ID_CHUNK = 500  # ids per IN list (well inside every database's bound on parameters)


def _due_in_order(session: Session, *, now_ms: int, limit: int, lock: bool) -> list[str]:
    """Up to ``limit`` due customers, the urgent first: dirty ones (a degraded event, a failed
    read, a refused sync), most overdue first; then those whose projected expiry or renewal
    passed more than RECHECK_AFTER_EXPIRY_MS ago and who were not read since (where a lost
    RENEWAL or EXPIRATION shows), earliest expiry first, whatever their check time says; then
    the rest, most overdue first. Each is a walk of an index from its low end, so the cost
    follows ``limit``, not how many subscribers exist or are overdue."""
    chosen: list[str] = []

    def walk(*criteria: ColumnElement[bool], order: InstrumentedAttribute[Any]) -> None:
        stmt = select(Subscriber.customer_id).where(Subscriber.next_check_ms <= now_ms, *criteria)
        if chosen:
            stmt = stmt.where(Subscriber.customer_id.not_in(chosen))
        stmt = stmt.order_by(order).limit(limit - len(chosen))
        if lock and session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        chosen.extend(session.scalars(stmt))

    walk(Subscriber.dirty.expression, order=Subscriber.next_check_ms)
    # (a reconcile always sets next_change_ms in its future: one in the past is unread)
    if len(chosen) < limit:
        walk(Subscriber.next_change_ms <= now_ms - RECHECK_AFTER_EXPIRY_MS, order=Subscriber.next_change_ms)
    if len(chosen) < limit:
        walk(order=Subscriber.next_check_ms)
    return chosen


def select_due(factory: sessionmaker[Session], *, now_ms: int, limit: int, lease_ms: int) -> list[str]:
    """Up to ``limit`` customers whose check is due, the urgent ones first (dirty, then an
    expiry passed since the last read), then the most overdue; leased for ``lease_ms``."""
    if limit <= 0:
        return []
    with factory() as session, session.begin():
        ids = _due_in_order(session, now_ms=now_ms, limit=limit, lock=True)
        if ids:
            session.execute(
                update(Subscriber).where(Subscriber.customer_id.in_(ids)).values(next_check_ms=now_ms + lease_ms)
            )
    return ids


def peek_due(factory: sessionmaker[Session], *, now_ms: int, limit: int) -> list[str]:
    """The customers a sweep would select now, without leasing them (dry runs)."""
    with factory() as session:
        return _due_in_order(session, now_ms=now_ms, limit=limit, lock=False)


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


def defer_checks(factory: sessionmaker[Session], customer_ids: list[str], at_ms: int, *, dirty: bool = False) -> None:
    values: dict[str, object] = {"next_check_ms": at_ms}
    if dirty:
        values["dirty"] = True
    with factory() as session, session.begin():
        session.execute(update(Subscriber).where(Subscriber.customer_id.in_(customer_ids)).values(**values))


def record_read_failures(
    factory: sessionmaker[Session], customer_ids: list[str], *, now_ms: int, delay_ms: Callable[[int], int]
) -> None:
    """A provider read (or the reconcile after it) failed: one failure more in a row for each
    customer, dirty, and due again after ``delay_ms(failures in a row)``."""
    with factory() as session, session.begin():
        rows = session.execute(
            select(Subscriber.customer_id, Subscriber.read_failures).where(Subscriber.customer_id.in_(customer_ids))
        )
        failures = {str(customer_id): int(count) for customer_id, count in rows}
        for customer_id, count in failures.items():
            session.execute(
                update(Subscriber)
                .where(Subscriber.customer_id == customer_id)
                .values(read_failures=count + 1, dirty=True, next_check_ms=now_ms + delay_ms(count + 1))
            )


def mark_dirty(factory: sessionmaker[Session], app_user_id: str, *, now_ms: int) -> None:
    """A refused or failed read: the sweep reads this customer first, now (design.md, priority 1)."""
    with factory() as session, session.begin():
        store = SqlLedgerStore(session)
        customer_id = store.customer_for(app_user_id) or app_user_id
        store.lock_customer(customer_id)
        session.execute(
            update(Subscriber).where(Subscriber.customer_id == customer_id).values(dirty=True, next_check_ms=now_ms)
        )


def known_app_user_ids(factory: sessionmaker[Session], app_user_ids: list[str]) -> set[str]:
    """The ids among ``app_user_ids`` the engine knows: a customer of its own, or any id
    recorded as one of a customer's (an alias, an original id)."""
    known: set[str] = set()
    with factory() as session:
        for start in range(0, len(app_user_ids), ID_CHUNK):
            chunk = app_user_ids[start : start + ID_CHUNK]
            known.update(session.scalars(select(Identity.app_user_id).where(Identity.app_user_id.in_(chunk))))
            known.update(session.scalars(select(Subscriber.customer_id).where(Subscriber.customer_id.in_(chunk))))
    return known


def register_customers(session: Session, app_user_ids: list[str], *, now_ms: int) -> tuple[int, int]:
    """In the caller's transaction: every id due for a check now; an id the engine does not
    know becomes a customer of its own, one it knows (an alias too) makes its customer due.
    Returns (new, already known)."""
    store = SqlLedgerStore(session)
    new = known = 0
    for start in range(0, len(app_user_ids), ID_CHUNK):
        chunk = app_user_ids[start : start + ID_CHUNK]
        customer_of = dict(
            session.execute(select(Identity.app_user_id, Identity.customer_id).where(Identity.app_user_id.in_(chunk)))
            .tuples()
            .all()
        )
        customers = set(session.scalars(select(Subscriber.customer_id).where(Subscriber.customer_id.in_(chunk))))
        due = set()
        for app_user_id in chunk:
            customer_id = customer_of.get(app_user_id) or (app_user_id if app_user_id in customers else None)
            if customer_id is None:
                store.lock_customer(app_user_id)
                store.record_identities({app_user_id: app_user_id})
                customer_id = app_user_id
                new += 1
            else:
                known += 1
            due.add(customer_id)
        session.execute(
            update(Subscriber)
            .where(Subscriber.customer_id.in_(sorted(due)))
            .values(next_check_ms=now_ms)
            .execution_options(synchronize_session=False)
        )
    return new, known
