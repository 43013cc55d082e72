"""The sweep's storage side: which customers are due for a provider read, and drift figures.

Selection walks the ``next_check_ms`` index from its low end, so its cost depends on the batch
size, not on how many subscribers exist. Selected customers are leased (their next check is
pushed out) so a backlog is not selected twice while its reconcile tasks wait in the queue.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.observability import report_drift, report_unknown_products
from engine.adapters.inbox import unit_of_work
from engine.adapters.models import AuditEntry, Grant, Subscriber
from engine.adapters.runtime import RECONCILE_OVERLAP, wall_clock_ms
from engine.errors import TerminalError, TransientError
from engine.facts import SubscriberSnapshot
from engine.ports import Cause, CustomerState
from engine.reconcile import ReconcileOutcome, reconcile_user, unchanged_check_ms
from engine.revenuecat import parse_subscriber

log = logging.getLogger(__name__)


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
    from engine.adapters.store import SqlLedgerStore

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
                select(Subscriber.customer_id).where(Subscriber.customer_id > after).order_by(Subscriber.customer_id).limit(limit)
            )
        )


def count_due(factory: sessionmaker[Session], *, now_ms: int) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.next_check_ms <= now_ms)) or 0)


def count_customers(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Subscriber)) or 0)


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


def drift_examples(factory: sessionmaker[Session], *, since_ms: int, until_ms: int, limit: int = 20) -> list[AuditEntry]:
    with factory() as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.drift_kind.is_not(None), AuditEntry.at_ms >= since_ms, AuditEntry.at_ms < until_ms)
                .order_by(AuditEntry.id.desc())
                .limit(limit)
            )
        )


@dataclass
class BatchResult:
    reconciled: int = 0
    changed: int = 0
    drift: dict[str, int] | None = None
    failed: int = 0
    deferred: list[str] | None = None  # budget ran out: looked at again soon
    lms_repairs: list[str] = field(default_factory=list)  # customers with LMS repairs queued


def reconcile_customers(
    customer_ids: list[str],
    *,
    runtime,  # noqa: ANN001 - engine.adapters.runtime.Runtime
    cause_kind: str = "sweep",
    max_wait_s: float = 20.0,
) -> BatchResult:
    """Reconcile each customer from the provider, spending the budget at sweep priority.

    Provider reads go out ``provider_fetch_concurrency`` at a time, each on a budget slot taken
    just before it is sent. The next group is read while this one is written when the budget
    has slots free now; otherwise this group is written first and the wait comes after, so
    repairs already read are never held back by the budget. Customers whose snapshot is the one
    their grants were converged from are settled together, in one statement
    (``unchanged_check_ms``); the others go through ``reconcile_user`` with the body already read.

    Changes made here are drift (no webhook told us): counted by kind in the metrics and
    reported to Sentry. A failure marks that customer dirty (next check at once) and the batch
    goes on; an exhausted budget defers the rest of the batch instead of failing it.
    """
    from engine.adapters.rate_budget import BudgetExhausted

    provider = runtime.budgeted_provider("sweep", max_wait_s=max_wait_s)
    result = BatchResult(drift={}, deferred=[])
    metrics: list[tuple[str, dict[str, str], int]] = []
    group_size = max(1, runtime.settings.provider_fetch_concurrency)
    waiting = list(dict.fromkeys(customer_ids))  # a customer listed twice is read once
    # Built here, not first in a reconcile thread (cached_property builds are not locked).
    runtime.catalog, runtime.policy, runtime.session_factory  # noqa: B018

    def send_next_group(*, wait: bool) -> list[tuple[str, Future]]:
        nonlocal waiting
        if not waiting:
            return []
        wanted = min(group_size, len(waiting))
        try:
            granted = provider.reserve(wanted) if wait else provider.try_reserve(wanted)
        except BudgetExhausted as exc:
            result.deferred = waiting
            _defer(runtime.session_factory, waiting, wall_clock_ms() + int((exc.retry_after_s or 1) * 1000))
            waiting = []
            return []
        group, waiting = waiting[:granted], waiting[granted:]
        return [(customer_id, runtime.fetch_pool.submit(provider.get_subscriber_reserved, customer_id)) for customer_id in group]

    in_flight = send_next_group(wait=True)
    try:
        while in_flight:
            bodies = _collect(in_flight, runtime, result, metrics)
            in_flight = send_next_group(wait=False)  # read the next group while this one is written
            _settle_group(bodies, runtime, cause_kind, result, metrics)
            if not in_flight:
                in_flight = send_next_group(wait=True)
    finally:
        # Reads already sent spent their slots: let them finish before anything else is sent
        # from this process (a later batch must not queue behind them past its slots' times).
        concurrent.futures.wait([future for _, future in in_flight])
    metrics.append(("engine_reconciles_total", {"cause": cause_kind}, result.reconciled))
    try:
        runtime.metrics.incr_many(metrics)
    except Exception:  # noqa: BLE001 - metrics never fail a reconcile
        log.warning("could not record metrics", exc_info=True)
    return result


def _collect(in_flight: list[tuple[str, Future]], runtime, result: BatchResult, metrics: list) -> dict[str, Mapping[str, Any]]:  # noqa: ANN001
    """The bodies of one group of provider reads; failures are counted and deferred."""
    bodies: dict[str, Mapping[str, Any]] = {}
    for customer_id, future in in_flight:
        try:
            bodies[customer_id] = future.result()
        except (TransientError, TerminalError) as exc:
            _fail(runtime, customer_id, exc, result, metrics)
    return bodies


class _GroupConnections:
    """The database connections one group of a sweep batch is written on: checked out (and
    pinged) once per group, not per customer, and not held across the budget's waits. Each
    customer still gets its own transaction on one of them. On PostgreSQL there are
    ``RECONCILE_OVERLAP`` of them, one per ``Runtime.reconcile_pool`` thread; SQLite takes one
    writer at a time, so it gets one. A connection that saw an unexpected error is given back
    to the pool (which resets or discards it) and a fresh one is checked out in its place."""

    def __init__(self, runtime) -> None:  # noqa: ANN001
        self.runtime = runtime
        self.size = RECONCILE_OVERLAP if runtime.db.dialect.name == "postgresql" else 1
        self.free: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.open: list[Connection] = []
        for _ in range(self.size):
            self.free.put(None)  # checked out on first use

    def __enter__(self) -> "_GroupConnections":
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            connections, self.open = self.open, []
        for connection in connections:
            connection.close()

    def _checkout(self) -> Connection:
        connection = self.runtime.db.connect()
        with self.lock:
            self.open.append(connection)
        return connection

    def _discard(self, connection: Connection) -> None:
        with self.lock:
            if connection in self.open:
                self.open.remove(connection)
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - the pool invalidates what it cannot reset
            log.debug("closing a failed batch connection", exc_info=True)

    @contextmanager
    def one(self) -> Iterator[Connection]:
        connection = self.free.get()
        try:
            if connection is None:
                connection = self._checkout()
            yield connection
        except (TransientError, TerminalError):
            self.free.put(connection)  # the engine's own errors leave the connection clean
            raise
        except BaseException:
            if connection is not None:
                self._discard(connection)
            self.free.put(None)
            raise
        else:
            self.free.put(connection)


def _settle_group(
    bodies: dict[str, Mapping[str, Any]], runtime, cause_kind: str, result: BatchResult, metrics: list,  # noqa: ANN001
) -> None:
    now_ms = wall_clock_ms()
    snapshots = {}
    for customer_id, body in bodies.items():
        try:
            snapshots[customer_id] = parse_subscriber(body)
        except TerminalError as exc:
            _fail(runtime, customer_id, exc, result, metrics)
    cause = Cause(cause_kind, cause_kind)  # type: ignore[arg-type]
    with _GroupConnections(runtime) as connections:
        try:
            with connections.one() as connection:
                settled = _settle_unchanged(runtime, connection, snapshots, now_ms)
        except Exception:  # noqa: BLE001 - settle them one by one instead
            log.warning("could not settle unchanged customers together", exc_info=True)
            settled = set()

        def reconcile_one(customer_id: str) -> ReconcileOutcome | Exception:
            # Every failure comes back as a value: one customer's error never costs the others
            # their results, and no thread is left writing when the group's connections close.
            try:
                with connections.one() as connection:
                    return reconcile_user(
                        customer_id, provider=_Prefetched(customer_id, bodies[customer_id]),
                        unit_of_work=unit_of_work(runtime.session_factory, bind=connection), catalog=runtime.catalog,
                        now_ms=wall_clock_ms(), cause=cause, policy=runtime.policy,
                    )
            except Exception as exc:  # noqa: BLE001
                return exc

        todo = [customer_id for customer_id in bodies if customer_id in snapshots and customer_id not in settled]
        if connections.size > 1 and len(todo) > 1:
            done = dict(zip(todo, runtime.reconcile_pool.map(reconcile_one, todo)))
        else:
            done = {customer_id: reconcile_one(customer_id) for customer_id in todo}
    for customer_id in bodies:
        if customer_id in settled:
            result.reconciled += 1
            if runtime.course_sink is not None:
                _repair_lms(runtime, customer_id, cause_kind, result, metrics)
            continue
        outcome = done.get(customer_id)
        if outcome is None:
            continue  # not parseable: counted above
        if isinstance(outcome, Exception):
            _fail(runtime, customer_id, outcome, result, metrics)
            continue
        result.reconciled += 1
        if outcome.actions:
            result.changed += 1
            if cause.is_drift_repair:
                for action in outcome.actions:
                    result.drift[action.drift_kind] = result.drift.get(action.drift_kind, 0) + 1  # type: ignore[index]
                    metrics.append(("engine_drift_repaired_total", {"kind": action.drift_kind}, 1))
                report_drift(outcome.customer_id, list(outcome.actions), cause_ref=cause.ref)
        if outcome.unknown_products:
            report_unknown_products(outcome.customer_id, outcome.unknown_products)
        if runtime.course_sink is not None:
            _repair_lms(runtime, outcome.customer_id, cause.ref, result, metrics)


def _fail(runtime, customer_id: str, exc: Exception, result: BatchResult, metrics: list) -> None:  # noqa: ANN001
    """Count a failed reconcile. Anything but a terminal error (the provider's answer cannot
    be used) leaves the customer dirty, due at once: transient errors, and unexpected ones
    (a deadlock, a lost connection, a bug), which are also logged with their traceback."""
    if isinstance(exc, TerminalError):
        _count_failure(result, metrics, "terminal")
        log.error("reconcile of %s failed: %s", customer_id, exc)
        return
    if isinstance(exc, TransientError):
        _count_failure(result, metrics, "transient")
        log.warning("reconcile of %s failed (will retry at once): %s", customer_id, exc)
    else:
        _count_failure(result, metrics, "error")
        log.error("reconcile of %s failed unexpectedly (will retry at once)", customer_id, exc_info=exc)
    try:
        _defer(runtime.session_factory, [customer_id], wall_clock_ms(), dirty=True)
    except Exception:  # noqa: BLE001 - its lease runs out and the sweep selects it again
        log.warning("could not mark %s dirty", customer_id, exc_info=True)


def _settle_unchanged(runtime, connection: Connection, snapshots: dict[str, SubscriberSnapshot], now_ms: int) -> set[str]:  # noqa: ANN001
    """Settle, in one transaction, the customers whose snapshot needs no work (the fast path of
    ``reconcile_user``, decided by the same ``unchanged_check_ms``): only their check time
    moves. Rows another process holds locked (an event being processed) are skipped and go
    through ``reconcile_user``, which waits for them. Aliases (an id that is not the customer's
    own) also go through it, which records the identity."""
    candidates = {cid: snap for cid, snap in snapshots.items() if snap.customer_id == cid}
    if not candidates:
        return set()
    columns = Subscriber.__table__.c
    with runtime.session_factory(bind=connection) as session, session.begin():
        stmt = select(
            columns.customer_id, columns.last_snapshot_ms, columns.snapshot_digest, columns.dirty,
            columns.next_change_ms, columns.projection_key,
        ).where(columns.customer_id.in_(sorted(candidates)))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        checks = []
        for row in session.execute(stmt):
            state = CustomerState(*row)
            check_at = unchanged_check_ms(state, candidates[state.customer_id], now_ms, runtime.policy, runtime.catalog)
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


class _Prefetched:
    """A SubscriberSource holding the one body the sweep has already read (on budget)."""

    def __init__(self, app_user_id: str, body: Mapping[str, Any]):
        self.app_user_id, self.body = app_user_id, body

    def get_subscriber(self, app_user_id: str) -> Mapping[str, Any]:
        assert app_user_id == self.app_user_id, (app_user_id, self.app_user_id)
        return self.body


def _count_failure(result: BatchResult, metrics: list, kind: str) -> None:
    result.failed += 1
    metrics.append(("engine_reconcile_failures_total", {"kind": kind}, 1))


def _repair_lms(runtime, customer_id: str, cause_ref: str, result: BatchResult, metrics: list) -> None:  # noqa: ANN001
    """LMS drift: read the customer's enrollments back and queue repairs (then drain them)."""
    from engine.adapters.outbox import repair_lms_drift

    lms = repair_lms_drift(runtime.session_factory, runtime.course_sink, customer_id, now_ms=wall_clock_ms(), cause_ref=cause_ref)
    for kind, n in lms.drift.items():
        result.drift[kind] = result.drift.get(kind, 0) + n  # type: ignore[index]
        metrics.append(("engine_drift_repaired_total", {"kind": kind}, n))
    if lms.drift:
        result.lms_repairs.append(customer_id)


def _defer(factory: sessionmaker[Session], customer_ids: list[str], at_ms: int, *, dirty: bool = False) -> None:
    values: dict[str, object] = {"next_check_ms": at_ms}
    if dirty:
        values["dirty"] = True
    with factory() as session, session.begin():
        session.execute(update(Subscriber).where(Subscriber.customer_id.in_(customer_ids)).values(**values))
