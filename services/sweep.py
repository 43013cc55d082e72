"""The sweep: customers due for a provider read, read within the shared budget and reconciled.

A batch sends its provider reads as budget slots come, each on a slot taken just before it is
sent, up to ``fetch_concurrency`` in flight, and writes what has been read meanwhile. Customers whose snapshot is the one their grants were converged from are settled
together (``Convergence.settle_unchanged``: the same pure rule as every reconcile's fast path);
the others go through ``Convergence.reconcile`` with the body already read.

Changes the sweep makes are drift (no webhook told us): counted by kind and reported. A failed
read backs that customer off (exponential, with jitter, capped) and marks it dirty; when most
reads of a group fail with 5xx or time out, the provider itself is held for a while
(adapters/provider_health.py) and the rest of the batch waits for it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import random
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from adapters.metrics import Metrics
from adapters.provider_health import ProviderHealth
from adapters.rate_budget import BudgetedProvider, BudgetExhausted
from config.observability import report_drift, report_unknown_products
from engine.backoff import backoff_ms
from engine.errors import TerminalError, TransientError
from engine.plan import Action
from engine.ports import Cause, CauseKind
from engine.reconcile import Reading, ReconcileOutcome
from persistence.subscribers import defer_checks, record_read_failures
from services.convergence import Convergence
from services.history import HistoryReads
from services.sweep_connections import GroupConnections

log = logging.getLogger(__name__)

CUSTOMER_BACKOFF_BASE_MS = 30_000
CUSTOMER_BACKOFF_CAP_MS = 6 * 3600_000


@dataclass(frozen=True)
class SweepReads:
    """What a sweep batch needs (built once per worker process)."""

    convergence: Convergence
    provider: BudgetedProvider  # at sweep priority on the shared budget
    db: Engine
    fetch_pool: ThreadPoolExecutor
    reconcile_pool: ThreadPoolExecutor
    fetch_concurrency: int
    metrics: Metrics
    health: ProviderHealth
    jitter: Callable[[], float] = random.random
    # After each v1 read: the customer's v2 history where the latest period is not enough.
    history: HistoryReads | None = None


@dataclass
class BatchResult:
    reconciled: int = 0
    changed: int = 0
    drift: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    deferred: list[str] = field(default_factory=list)  # budget ran out or provider held: soon again
    reconciled_ids: list[str] = field(default_factory=list)  # for the LMS read-back (lms.repair)
    repairs: list[tuple[str, Action]] = field(default_factory=list)  # (customer, action): reported per batch


def reconcile_customers(customer_ids: list[str], sweep: SweepReads, *, cause_kind: CauseKind = "sweep") -> BatchResult:
    """Reconcile each customer from the provider, spending the budget at sweep priority.

    Reads are sent as budget slots come (``_ReadSender``, a thread of its own), up to
    ``fetch_concurrency`` in flight, while this thread writes what has been read, every read
    completed since the last write settled together. Neither waits for the other: the pace of
    reads is the budget's, whatever the writes cost and however slow one read is. A failure
    costs only its own customer; an exhausted budget or a held provider defers the rest of the
    batch instead of failing it.
    """
    result = BatchResult()
    metrics: list[tuple[str, dict[str, str], int]] = []
    sender = _ReadSender(list(dict.fromkeys(customer_ids)), sweep)  # a customer listed twice is read once
    sender.start()
    try:
        while groups := sender.next_groups():
            in_flight = [read for group in groups for read in group]
            bodies = _collect(in_flight, sweep, result, metrics)
            _settle_group(bodies, sweep, Cause(cause_kind, cause_kind), result, metrics)
    finally:
        # Reads already sent spent their slots: let them finish before anything else is sent
        # from this process (a later batch must not queue behind them past its slots' times).
        sender.stop()
    result.deferred.extend(sender.deferred)
    try:
        sweep.metrics.incr_many(metrics)
    except Exception:
        log.warning("could not record metrics", exc_info=True)
    if result.repairs:
        report_drift(result.repairs, cause_ref=cause_kind)
    return result


Read = tuple[str, Future[Mapping[str, Any]]]


class _ReadSender:
    """Sends a batch's provider reads as budget slots come, in a thread of its own.

    Before each send it takes a place among the ``fetch_concurrency`` reads in flight, then as
    many budget slots as are free now up to the free places (at least one: it waits up to the
    budget's ``max_wait_s`` for it), and sends that many reads at once: the reads sent together
    form a group, handed to the writer in order. A held provider or an exhausted budget defers
    the customers not yet sent (due again when a read may go out).
    """

    def __init__(self, customer_ids: list[str], sweep: SweepReads):
        self.sweep = sweep
        self.waiting = customer_ids
        self.deferred: list[str] = []
        self._sent: queue.SimpleQueue[list[Read] | None] = queue.SimpleQueue()
        self._places = threading.Semaphore(max(1, sweep.fetch_concurrency))
        self._stopping = threading.Event()
        self._reads: list[Future[Mapping[str, Any]]] = []
        self._thread = threading.Thread(target=self._run, name="sweep-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next_groups(self) -> list[list[Read]]:
        """The groups sent since the last call (waits for one); [] once every read is sent."""
        groups: list[list[Read]] = []
        item = self._sent.get()
        while item is not None:
            groups.append(item)
            try:
                item = self._sent.get_nowait()
            except queue.Empty:
                return groups
        self._sent.put(None)  # the end stays visible to the next call
        return groups

    def stop(self) -> None:
        """Send nothing more (what is left is deferred) and wait for the reads already sent."""
        self._stopping.set()
        self._thread.join()
        concurrent.futures.wait(self._reads)

    def _run(self) -> None:
        try:
            try:
                while self.waiting and not self._stopping.is_set():
                    self._send_next_group()
            except Exception:
                log.warning("the sweep's sender stopped; the customers not sent are deferred", exc_info=True)
            if self.waiting:  # stopped early: read again soon, not left until the lease runs out
                self._defer_rest(1.0)
        except Exception:
            log.warning("could not defer the customers not sent; their lease runs out", exc_info=True)
        finally:
            self._sent.put(None)

    def _send_next_group(self) -> None:
        held = self.sweep.health.held_for_s()
        if held > 0:
            self._defer_rest(held)
            return
        self._places.acquire()  # a place among the reads in flight: wait for one
        places = 1
        while places < len(self.waiting) and self._places.acquire(blocking=False):
            places += 1
        granted = 0
        try:
            granted = self.sweep.provider.reserve(places)
        except BudgetExhausted as exc:
            self._defer_rest(exc.retry_after_s or 1.0)
        finally:
            for _ in range(places - granted):
                self._places.release()
        group: list[Read] = []
        for customer_id in self.waiting[:granted]:
            future = self.sweep.fetch_pool.submit(self.sweep.provider.get_subscriber_reserved, customer_id)
            future.add_done_callback(lambda _: self._places.release())
            group.append((customer_id, future))
        del self.waiting[:granted]
        self._reads.extend(future for _, future in group)
        if group:
            self._sent.put(group)

    def _defer_rest(self, seconds: float) -> None:
        rest, self.waiting = self.waiting, []
        if not rest:
            return
        self.deferred.extend(rest)
        clock_ms = self.sweep.convergence.clock_ms
        defer_checks(self.sweep.convergence.session_factory, rest, clock_ms() + int(max(1.0, seconds) * 1000))


def _collect(
    in_flight: list[tuple[str, Future[Mapping[str, Any]]]], sweep: SweepReads, result: BatchResult, metrics: list
) -> dict[str, Mapping[str, Any]]:
    """The bodies of one group of provider reads; failed reads back their customer off, and a
    group that mostly failed holds the provider."""
    bodies: dict[str, Mapping[str, Any]] = {}
    unwell = 0
    for customer_id, future in in_flight:
        try:
            bodies[customer_id] = future.result()
        except Exception as exc:
            if isinstance(exc, TransientError) and exc.status != 429:
                unwell += 1
            _fail(sweep, customer_id, exc, result, metrics)
    try:
        held = sweep.health.record(ok=len(bodies), failed=unwell)
        if held:
            log.warning("%d of %d provider reads failed: provider reads held for %.0f s", unwell, len(in_flight), held)
    except Exception:
        log.warning("could not record the provider's health", exc_info=True)
    return bodies


def _settle_group(
    bodies: dict[str, Mapping[str, Any]], sweep: SweepReads, cause: Cause, result: BatchResult, metrics: list
) -> None:
    readings: dict[str, Reading] = {}
    for customer_id, body in bodies.items():
        try:
            readings[customer_id] = Reading.from_provider(customer_id, body)
        except Exception as exc:
            _fail(sweep, customer_id, exc, result, metrics)
    with GroupConnections(sweep.db) as connections:
        try:
            with connections.one() as connection:
                snapshots = {c: r.snapshot for c, r in readings.items() if r.snapshot is not None}
                settled = sweep.convergence.bound_to(connection).settle_unchanged(snapshots)
        except Exception:
            log.warning("could not settle unchanged customers together", exc_info=True)
            settled = set()

        def reconcile_one(customer_id: str) -> ReconcileOutcome | Exception:
            # Every failure comes back as a value: one customer's error never costs the others
            # their results, and no thread is left writing when the group's connections close.
            try:
                with connections.one() as connection:
                    return sweep.convergence.bound_to(connection).reconcile(readings[customer_id], cause)
            except Exception as exc:
                return exc

        todo = [customer_id for customer_id in readings if customer_id not in settled]
        if connections.size > 1 and len(todo) > 1:
            done = dict(zip(todo, sweep.reconcile_pool.map(reconcile_one, todo), strict=True))
        else:
            done = {customer_id: reconcile_one(customer_id) for customer_id in todo}
    for customer_id in readings:
        if customer_id in settled:  # (Convergence counts the others' reconciles and drift)
            metrics.append(("engine_reconciles_total", {"cause": cause.kind}, 1))
            result.reconciled += 1
            result.reconciled_ids.append(customer_id)
            continue
        outcome = done[customer_id]
        if isinstance(outcome, Exception):
            _fail(sweep, customer_id, outcome, result, metrics)
            continue
        result.reconciled += 1
        result.reconciled_ids.append(outcome.customer_id)
        if outcome.actions:
            result.changed += 1
            if cause.is_drift_repair:
                for action in outcome.actions:
                    result.drift[action.drift_kind] = result.drift.get(action.drift_kind, 0) + 1
                result.repairs.extend((outcome.customer_id, action) for action in outcome.actions)
        if outcome.unknown_products:
            report_unknown_products(outcome.customer_id, outcome.unknown_products)
    if sweep.history is not None:
        ok = {c: None if c in settled else done[c] for c in readings}
        read = {c: readings[c] for c, v1 in ok.items() if not isinstance(v1, Exception)}
        changed = {c for c, v1 in ok.items() if isinstance(v1, ReconcileOutcome) and v1.actions}
        _follow_histories(
            sweep.history, read, changed=changed, sweep=sweep, cause=cause, result=result, metrics=metrics
        )


def _follow_histories(
    history: HistoryReads,
    readings: dict[str, Reading],
    *,
    changed: set[str],
    sweep: SweepReads,
    cause: Cause,
    result: BatchResult,
    metrics: list,
) -> None:
    """After the group's v1 reads are written: the v2 histories some customers need
    (services/history.py), read one after another at sweep priority; what they change is drift."""
    for customer_id, reading in readings.items():
        try:
            outcome = history.after_v1(reading, cause).outcome
        except Exception as exc:
            _fail(sweep, customer_id, exc, result, metrics)
            continue
        if outcome is None or not outcome.actions:
            continue
        if customer_id not in changed:
            result.changed += 1
        if cause.is_drift_repair:
            for action in outcome.actions:
                result.drift[action.drift_kind] = result.drift.get(action.drift_kind, 0) + 1
            result.repairs.extend((outcome.customer_id, action) for action in outcome.actions)


def _fail(sweep: SweepReads, customer_id: str, exc: BaseException, result: BatchResult, metrics: list) -> None:
    """Count a failed read or reconcile and back the customer off: due again after an
    exponential, jittered, capped delay that grows with each failure in a row, and dirty (read
    first once due). Terminal errors (an answer that cannot be used) and unexpected ones (a
    deadlock, a lost connection, a bug, logged with their traceback) are backed off alike."""
    kind = "transient" if isinstance(exc, TransientError) else "terminal" if isinstance(exc, TerminalError) else "error"
    result.failed += 1
    metrics.append(("engine_reconcile_failures_total", {"kind": kind}, 1))
    if kind == "error":
        log.error("reconcile of %s failed unexpectedly", customer_id, exc_info=exc)
    else:
        log.warning("reconcile of %s failed (%s): %s", customer_id, kind, exc)
    try:
        record_read_failures(
            sweep.convergence.session_factory,
            [customer_id],
            now_ms=sweep.convergence.clock_ms(),
            delay_ms=lambda failures: backoff_ms(
                failures, base_ms=CUSTOMER_BACKOFF_BASE_MS, cap_ms=CUSTOMER_BACKOFF_CAP_MS, jitter=sweep.jitter()
            ),
        )
    except Exception:
        log.warning(
            "could not back %s off; its lease runs out and the sweep selects it again", customer_id, exc_info=True
        )
