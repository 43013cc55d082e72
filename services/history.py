"""History reads: after a v1 read, the customer's REST v2 history where access depends on more
than the latest period, read at the path's budget priority and reconciled like any provider
reading (``Reading.from_history`` through ``Convergence.reconcile``).

Used by event processing, the sweep and the client flows right after their v1 read and
reconcile. What to read is the cheapest answer to the need (engine/history.py):

* most customers: nothing more than the v1 read (1 request). The v1 snapshot alone rules out
  customers without a subscription product that grants per transaction, with no database read;
* a customer whose v1 answer is the one the last decision was taken on (``history_marks``):
  nothing more, unless a recurring need's interval has passed;
* otherwise the ledger decides, and a history read asks only what the need requires: the
  customer's subscriptions (1 request per page), the transactions of the subscriptions of the
  products concerned (1 per page each), and the product list once per process (RevenueCat's
  product ids to store ids). Purchases and aliases are never read here: v1 lists every one-time
  purchase, and the v1 read has recorded the customer's identity.

When the history gives this customer older periods the ledger held for another (a transfer whose
webhook was lost), that other customer's grants are converged again from the ledger at once.

A failed history read (the provider, or the budget) backs the customer off like a failed sweep
read, so that the sweep reads it again later; the v1 reconcile already done stands. Every read
is counted by path: customers, v1 and v2 requests, and history reads by reason (metrics, and a
``ReadTally`` a benchmark prints).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from adapters.metrics import Metrics
from adapters.revenuecat_v2 import RequestPacer, RevenueCatV2Client
from engine.backoff import backoff_ms
from engine.client_flows import moved_from
from engine.errors import TerminalError, TransientError
from engine.history import HistoryMark, HistoryNeed, history_check_due, history_need, history_products
from engine.ports import Cause
from engine.reconcile import Reading, ReconcileOutcome
from persistence.history_marks import load_mark, owned_transactions, save_mark
from persistence.ledger_store import ledger_owners
from persistence.subscribers import record_read_failures
from services.convergence import Convergence

log = logging.getLogger(__name__)

ReadPath = Literal["event", "sweep", "sync"]

# A recurring need (a refund of an older period, whose reversal only v2 shows) is read again
# after this long; the same as the sweep's default maximum staleness.
HISTORY_REREAD_MS = 24 * 3600 * 1000
FAILURE_BACKOFF_BASE_MS = 30_000
FAILURE_BACKOFF_CAP_MS = 6 * 3600_000


class ReadTally:
    """Counts of this process's customer reads by path: ``customers``, ``v1`` and ``v2``
    requests, ``histories`` read and ``failed``. What a benchmark prints; the metrics carry the
    same for the whole system."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, path: str, what: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[(path, what)] += amount

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            by_path: dict[str, dict[str, int]] = {}
            for (path, what), n in self._counts.items():
                by_path.setdefault(path, {})[what] = n
            return by_path

    def requests_per_read(self, path: str) -> float:
        """Provider requests (v1 and v2) per customer read on ``path``."""
        counts = self.counts().get(path, {})
        customers = counts.get("customers", 0)
        return (counts.get("v1", 0) + counts.get("v2", 0)) / customers if customers else 0.0


class _CountingPacer:
    """The path's pacer, counting the requests one history read sends."""

    def __init__(self, inner: RequestPacer):
        self.inner = inner
        self.sent = 0

    def before_request(self) -> None:
        self.inner.before_request()
        self.sent += 1

    def after_response(self, usage: int | None, limit: int | None) -> None:
        self.inner.after_response(usage, limit)

    def throttled(self, retry_after_s: float | None) -> None:
        self.inner.throttled(retry_after_s)


HistoryStatus = Literal["not_needed", "unchanged", "decided", "read", "failed"]


@dataclass(frozen=True)
class HistoryFollowUp:
    """What followed one v1 read: ``not_needed`` (no product that grants per transaction),
    ``unchanged`` (v1 answers as when last decided), ``decided`` (the ledger says v1 is enough),
    ``read`` (the history was read and reconciled: ``outcome``), ``failed`` (backed off)."""

    status: HistoryStatus
    reason: str | None = None
    requests: int = 0  # v2 requests sent
    outcome: ReconcileOutcome | None = None


@dataclass(frozen=True)
class HistoryReads:
    """The follow-up of a v1 read on one path (built once per process and path)."""

    convergence: Convergence
    client: RevenueCatV2Client | None  # paced at the path's priority; None: v1 only
    path: ReadPath
    metrics: Metrics | None = None
    tally: ReadTally | None = None
    reread_ms: int = HISTORY_REREAD_MS
    jitter: Callable[[], float] = field(default=random.random)

    def after_v1(self, reading: Reading, cause: Cause, *, transferred_to: bool = False) -> HistoryFollowUp:
        """Count the v1 read behind ``reading`` (already reconciled), then read and reconcile the
        history where it is needed. ``transferred_to``: a TRANSFER webhook names this customer
        as the receiving side, whose v1 answer may not change at all (a newer period of the same
        product hides the older ones it received): its history is read whatever the marks say.
        Provider and budget failures back the customer off and are returned (``failed``);
        database errors propagate to the caller."""
        self._count([("customers", 1), ("v1", 1)])
        snapshot = reading.snapshot
        if self.client is None or snapshot is None:
            return HistoryFollowUp("not_needed")
        convergence = self.convergence
        products = history_products(snapshot, convergence.catalog)
        if not products:
            return HistoryFollowUp("not_needed")
        customer_id = snapshot.customer_id
        factory = convergence.session_factory
        now_ms = convergence.clock_ms()
        mark = load_mark(factory, customer_id)
        if transferred_to:
            need: HistoryNeed | None = HistoryNeed("transfer", products, recurring=False)
        elif not history_check_due(mark, snapshot.digest, now_ms, reread_ms=self.reread_ms):
            return HistoryFollowUp("unchanged")
        else:
            need = history_need(
                owned_transactions(factory, customer_id),
                snapshot,
                convergence.catalog,
                history_read_ms=mark.read_ms if mark is not None else None,
            )
        last_read = mark.read_ms if mark is not None else None
        if need is None:
            save_mark(factory, customer_id, HistoryMark(snapshot.digest, now_ms, None, False, last_read))
            return HistoryFollowUp("decided")
        pacer = _CountingPacer(self.client.pacer)
        try:
            read = self.client.paced(pacer).read_history(
                customer_id, with_aliases=False, with_purchases=False, transactions_for=need.products
            )
            # The history was asked for after the v1 answer came back: it is at least as new,
            # whatever the whole seconds of its Date header say.
            read = replace(read, request_ms=max(read.request_ms, snapshot.request_ms))
            history = Reading.from_history(customer_id, read)
        except TransientError as exc:
            self._failed(customer_id, need.reason, pacer.sent, exc)
            return HistoryFollowUp("failed", need.reason, pacer.sent)
        except TerminalError as exc:
            # Not read again until v1 answers something new: a refusal would repeat.
            log.warning("history of %s could not be read (%s): %s", customer_id, need.reason, exc)
            save_mark(factory, customer_id, HistoryMark(snapshot.digest, now_ms, need.reason, False, last_read))
            self._count([("v2", pacer.sent), ("failed", 1)], reason="failed")
            return HistoryFollowUp("failed", need.reason, pacer.sent)
        assert history.snapshot is not None
        tx_ids = [o.transaction_id for o in history.snapshot.observations]
        before = ledger_owners(factory, tx_ids)
        outcome = convergence.reconcile(history, cause)
        # Older periods the ledger gave to someone else are this customer's now (a transfer whose
        # webhook was lost): that customer's grants are converged again from the ledger.
        for previous in moved_from(before, ledger_owners(factory, tx_ids), outcome.customer_id):
            convergence.reconcile(Reading.from_ledger(previous), cause)
        save_mark(
            factory,
            customer_id,
            HistoryMark(snapshot.digest, now_ms, need.reason, need.recurring, now_ms),
            answer_digest=history.snapshot.digest,
            requests=pacer.sent,
        )
        self._count([("v2", pacer.sent), ("histories", 1)], reason=need.reason)
        return HistoryFollowUp("read", need.reason, pacer.sent, outcome)

    def _failed(self, customer_id: str, reason: str, sent: int, exc: Exception) -> None:
        log.info("history of %s (%s) not read now: %s", customer_id, reason, exc)
        self._count([("v2", sent), ("failed", 1)], reason="failed")
        record_read_failures(
            self.convergence.session_factory,
            [customer_id],
            now_ms=self.convergence.clock_ms(),
            delay_ms=lambda failures: backoff_ms(
                failures, base_ms=FAILURE_BACKOFF_BASE_MS, cap_ms=FAILURE_BACKOFF_CAP_MS, jitter=self.jitter()
            ),
        )

    def _count(self, counts: list[tuple[str, int]], *, reason: str | None = None) -> None:
        if self.tally is not None:
            for what, n in counts:
                self.tally.add(self.path, what, n)
        if self.metrics is None:
            return
        items: list[tuple[str, dict[str, str], float]] = []
        for what, n in counts:
            if what == "customers":
                items.append(("engine_customer_reads", {"path": self.path}, n))
            elif what in ("v1", "v2") and n:
                items.append(("engine_provider_reads", {"path": self.path, "api": what}, n))
        if reason is not None:
            items.append(("engine_history_reads", {"path": self.path, "reason": reason}, 1))
        try:
            self.metrics.incr_many(items)
        except Exception:
            log.warning("could not record read metrics", exc_info=True)
