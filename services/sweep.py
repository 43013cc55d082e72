"""The sweep: customers due for a provider read, read within the shared budget and reconciled.

Changes the sweep makes are drift (no webhook told us): counted by kind and reported.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from adapters.rate_budget import BudgetExhausted
from config.observability import report_drift, report_unknown_products
from engine.errors import TerminalError, TransientError
from engine.ports import Cause
from engine.reconcile import ReconcileOutcome, reconcile_user
from engine.revenuecat import parse_subscriber
from persistence.subscribers import defer_checks, settle_unchanged
from persistence.unit_of_work import unit_of_work
from services.outbox import repair_lms_drift
from services.wiring import RECONCILE_OVERLAP, wall_clock_ms

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    reconciled: int = 0
    changed: int = 0
    drift: dict[str, int] | None = None
    failed: int = 0
    deferred: list[str] | None = None  # budget ran out: looked at again soon
    lms_repairs: list[str] = field(default_factory=list)  # customers with LMS repairs queued
    repairs: list[tuple[str, Any]] = field(default_factory=list)  # (customer, action): drift, reported per batch


def reconcile_customers(
    customer_ids: list[str],
    *,
    runtime,
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
            defer_checks(runtime.session_factory, waiting, wall_clock_ms() + int((exc.retry_after_s or 1) * 1000))
            waiting = []
            return []
        group, waiting = waiting[:granted], waiting[granted:]
        return [
            (customer_id, runtime.fetch_pool.submit(provider.get_subscriber_reserved, customer_id))
            for customer_id in group
        ]

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
    report_drift(result.repairs, cause_ref=cause_kind)
    metrics.append(("engine_reconciles_total", {"cause": cause_kind}, result.reconciled))
    try:
        runtime.metrics.incr_many(metrics)
    except Exception:
        log.warning("could not record metrics", exc_info=True)
    return result


def _collect(
    in_flight: list[tuple[str, Future]], runtime, result: BatchResult, metrics: list
) -> dict[str, Mapping[str, Any]]:
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

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.size = RECONCILE_OVERLAP if runtime.db.dialect.name == "postgresql" else 1
        self.free: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.open: list[Connection] = []
        for _ in range(self.size):
            self.free.put(None)  # checked out on first use

    def __enter__(self) -> _GroupConnections:
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
        except Exception:
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
    bodies: dict[str, Mapping[str, Any]],
    runtime,
    cause_kind: str,
    result: BatchResult,
    metrics: list,
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
                settled = settle_unchanged(
                    runtime.session_factory,
                    connection,
                    snapshots,
                    now_ms=now_ms,
                    policy=runtime.policy,
                    catalog=runtime.catalog,
                )
        except Exception:
            log.warning("could not settle unchanged customers together", exc_info=True)
            settled = set()

        def reconcile_one(customer_id: str) -> ReconcileOutcome | Exception:
            # Every failure comes back as a value: one customer's error never costs the others
            # their results, and no thread is left writing when the group's connections close.
            try:
                with connections.one() as connection:
                    return reconcile_user(
                        customer_id,
                        provider=_Prefetched(customer_id, bodies[customer_id]),
                        unit_of_work=unit_of_work(runtime.session_factory, bind=connection),
                        catalog=runtime.catalog,
                        now_ms=wall_clock_ms(),
                        cause=cause,
                        policy=runtime.policy,
                    )
            except Exception as exc:
                return exc

        todo = [customer_id for customer_id in bodies if customer_id in snapshots and customer_id not in settled]
        if connections.size > 1 and len(todo) > 1:
            done = dict(zip(todo, runtime.reconcile_pool.map(reconcile_one, todo), strict=False))
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
                result.repairs.extend((outcome.customer_id, action) for action in outcome.actions)
        if outcome.unknown_products:
            report_unknown_products(outcome.customer_id, outcome.unknown_products)
        if runtime.course_sink is not None:
            _repair_lms(runtime, outcome.customer_id, cause.ref, result, metrics)


def _fail(runtime, customer_id: str, exc: Exception, result: BatchResult, metrics: list) -> None:
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
        defer_checks(runtime.session_factory, [customer_id], wall_clock_ms(), dirty=True)
    except Exception:
        log.warning("could not mark %s dirty", customer_id, exc_info=True)


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


def _repair_lms(runtime, customer_id: str, cause_ref: str, result: BatchResult, metrics: list) -> None:
    """LMS drift: read the customer's enrollments back and queue repairs (then drain them)."""
    lms = repair_lms_drift(
        runtime.session_factory, runtime.course_sink, customer_id, now_ms=wall_clock_ms(), cause_ref=cause_ref
    )
    for kind, n in lms.drift.items():
        result.drift[kind] = result.drift.get(kind, 0) + n  # type: ignore[index]
        metrics.append(("engine_drift_repaired_total", {"kind": kind}, n))
    if lms.drift:
        result.lms_repairs.append(customer_id)
