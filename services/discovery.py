"""Discovery: customers the engine never heard of, found and reconciled; and an operator's own
list of customers registered.

The sweep polls the customers the engine knows. A customer whose every webhook was lost is not
one of them, so discovery pages through the provider's customer list (REST API v2) at its own
low priority share of the shared budget, and reconciles each customer it does not know from
that customer's v2 history (``Cause("discovery")``). Access granted so is drift of its own kind,
``undiscovered_customer`` (engine.ports.Cause.drift_kind): counted, reported to Sentry and in
the drift report. A listed customer with nothing to grant becomes known all the same, so the
sweep polls it from then on; customers the engine knows are left to the sweep.

One run works on the open pass for at most ``run_s`` (a worker is never held long) and saves
the cursor after every page, so the next run, or the one after a restart, resumes where it
stopped: a page is read again only when a run stopped inside it. A provider that refuses a read
(429, 423, 5xx, no budget slot in time) ends the run early with the cursor kept; the next beat
tick resumes the pass. A finished pass starts the next one ``engine.discovery.next_pass_ms``
later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from adapters.metrics import Metrics
from adapters.revenuecat_v2 import CustomerNotFound, RevenueCatV2Client
from config.observability import report_drift, report_unknown_products
from engine.discovery import listed_ids, next_pass_ms, unknown_ids
from engine.errors import TerminalError, TransientError
from engine.plan import Action
from engine.ports import Cause
from engine.reconcile import Reading
from persistence.discovery import PassProgress, claim_pass, record_page, release_pass
from persistence.operator_log import record_action
from persistence.subscribers import known_app_user_ids, mark_dirty, register_customers
from services.convergence import Convergence

log = logging.getLogger(__name__)

# A run's lease on its pass outlasts its time box by this much: a request in flight (a budget
# wait, a read timeout) ends well within it.
LEASE_MARGIN_MS = 60_000


# Customers per list page. v2 documents no maximum `limit` (the default is 20): 100 keeps a
# page's answer small and a pass of 1,000,000 customers at 10,000 requests.
PAGE_SIZE = 100


@dataclass(frozen=True)
class DiscoveryReads:
    """What a discovery run needs (built once per worker process, when v2 is configured)."""

    convergence: Convergence
    client: RevenueCatV2Client  # paced at discovery priority on the shared budget
    metrics: Metrics | None
    interval_s: int  # DISCOVERY_INTERVAL_S: between two passes (0: engine.discovery chooses)
    run_s: float  # the time box of one run
    page_size: int = PAGE_SIZE
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class DiscoveryRun:
    """What one run did."""

    pass_id: int | None = None  # None: no pass was due, or another run holds it
    pages: int = 0
    customers: int = 0  # listed on the pages done
    new: int = 0  # unknown to the engine: read and reconciled (they are known now)
    repaired: int = 0  # of them, customers discovery granted access to
    failed: int = 0  # could not be read or reconciled: left to the sweep, dirty
    drift: dict[str, int] = field(default_factory=dict)
    finished: bool = False  # the pass ended in this run
    stopped: str | None = None  # why the run ended before the pass did (None: time box or pass done)

    def summary(self) -> dict[str, Any]:
        return {
            "pass": self.pass_id,
            "pages": self.pages,
            "customers": self.customers,
            "new": self.new,
            "repaired": self.repaired,
            "failed": self.failed,
            "drift": self.drift,
            "finished": self.finished,
            "stopped": self.stopped,
        }


@dataclass
class _Tally:
    """What a run has done so far: its summary, its repairs and its counts."""

    run: DiscoveryRun
    repairs: list[tuple[str, Action]] = field(default_factory=list)
    metrics: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class _Stop(Exception):
    """The run ends here; the page in flight is read again by the next run."""


def run_discovery(reads: DiscoveryReads) -> DiscoveryRun:
    """Work on the open discovery pass (opening one when it is due) for at most ``reads.run_s``."""
    convergence, run = reads.convergence, DiscoveryRun()
    factory, clock_ms = convergence.session_factory, convergence.clock_ms
    lease_ms = int(reads.run_s * 1000) + LEASE_MARGIN_MS
    claimed = claim_pass(
        factory,
        now_ms=clock_ms(),
        lease_ms=lease_ms,
        next_start_ms=lambda started, finished: next_pass_ms(
            started_ms=started, finished_ms=finished, interval_s=reads.interval_s
        ),
    )
    if claimed is None:
        return run
    run.pass_id = claimed.id
    cause = Cause("discovery", f"discovery:{claimed.id}")
    tally = _Tally(run)
    in_flight = PassProgress()  # what the page in flight found so far (kept if the run stops in it)
    error: str | None = None
    finish = False
    deadline = reads.monotonic() + reads.run_s
    cursor = claimed.cursor
    try:
        while reads.monotonic() < deadline:
            try:
                page = reads.client.list_customers(starting_after=cursor, limit=reads.page_size)
            except TransientError as exc:
                raise _Stop(f"customer list: {_refusal(exc)}") from exc
            except TerminalError as exc:
                # The provider refuses this pass (a cursor naming a customer deleted since, a
                # key without the permission): it ends here and the next one starts afresh.
                log.error("discovery pass %d ends: the provider refused its customer list: %s", claimed.id, exc)
                error, finish = f"customer list refused: {exc}", True
                break
            ids = listed_ids(page.customers)
            new = unknown_ids(ids, known_app_user_ids(factory, ids))
            for customer_id in new:
                if reads.monotonic() >= deadline:
                    raise _Stop("")  # the time box: the rest of this page waits for the next run
                in_flight = _add(in_flight, _discover(customer_id, reads, cause, tally))
            done = PassProgress(
                pages=1,
                customers=len(ids),
                new_customers=in_flight.new_customers,
                repaired=in_flight.repaired,
                failed=in_flight.failed,
            )
            now = clock_ms()
            record_page(
                factory, claimed.id, cursor=page.next_cursor, progress=done, now_ms=now, lease_until_ms=now + lease_ms
            )
            in_flight = PassProgress()
            run.pages += 1
            run.customers += len(ids)
            tally.metrics.append(("engine_discovery_pages", {}, 1))
            tally.metrics.append(("engine_discovery_customers", {"outcome": "known"}, len(ids) - len(new)))
            cursor = page.next_cursor
            if cursor is None:
                run.finished = True
                break
    except _Stop as stop:
        error = str(stop) or None
        run.stopped = error
        if error:
            log.warning("discovery pass %d stops until the next run: %s", claimed.id, error)
    finally:
        if not run.finished:
            release_pass(factory, claimed.id, now_ms=clock_ms(), progress=in_flight, error=error, finish=finish)
            run.finished = finish
        _report(reads, cause, tally)
    return run


def _discover(customer_id: str, reads: DiscoveryReads, cause: Cause, tally: _Tally) -> PassProgress:
    """Read one customer the engine does not know and reconcile it. A transient failure stops
    the run (the customer stays unknown: the next run reads it again); any other failure leaves
    the customer to the sweep, dirty."""
    try:
        read = reads.client.read_history(customer_id)
        outcome = reads.convergence.reconcile(Reading.from_history(customer_id, read), cause)
    except CustomerNotFound:
        return PassProgress()  # deleted at the provider since it was listed: nothing to do
    except TransientError as exc:
        raise _Stop(f"history of {customer_id!r}: {_refusal(exc)}") from exc
    except Exception as exc:
        if isinstance(exc, TerminalError):
            log.warning("discovery could not reconcile %r (left to the sweep): %s", customer_id, exc)
        else:
            log.error("discovery could not reconcile %r (left to the sweep)", customer_id, exc_info=exc)
        mark_dirty(reads.convergence.session_factory, customer_id, now_ms=reads.convergence.clock_ms())
        tally.run.failed += 1
        tally.metrics.append(("engine_discovery_customers", {"outcome": "failed"}, 1))
        return PassProgress(failed=1)
    run = tally.run
    run.new += 1
    tally.metrics.append(("engine_discovery_customers", {"outcome": "new"}, 1))
    if outcome.unknown_products:
        report_unknown_products(outcome.customer_id, outcome.unknown_products, cause_ref=cause.kind)
    kinds = [kind for action in outcome.actions if (kind := cause.drift_kind(action))]
    for kind in kinds:
        run.drift[kind] = run.drift.get(kind, 0) + 1
    tally.repairs.extend((outcome.customer_id, action) for action in outcome.actions)
    run.repaired += 1 if kinds else 0
    return PassProgress(new_customers=1, repaired=1 if kinds else 0)


def _refusal(exc: TransientError) -> str:
    """A transient failure in words, with the provider's status when it answered."""
    return f"HTTP {exc.status}: {exc}" if exc.status else str(exc)


def _add(one: PassProgress, other: PassProgress) -> PassProgress:
    return PassProgress(
        pages=one.pages + other.pages,
        customers=one.customers + other.customers,
        new_customers=one.new_customers + other.new_customers,
        repaired=one.repaired + other.repaired,
        failed=one.failed + other.failed,
    )


def _report(reads: DiscoveryReads, cause: Cause, tally: _Tally) -> None:
    """The run's counts (Convergence counted its reconciles and drift) and one Sentry event per
    drift kind it repaired."""
    if reads.metrics is not None and tally.metrics:
        try:
            reads.metrics.incr_many(m for m in tally.metrics if m[2])
        except Exception:
            log.warning("could not record metrics", exc_info=True)
    if tally.repairs:
        report_drift(tally.repairs, cause_ref=cause.kind, kind_of=cause.drift_kind)


# -- an operator's own list -----------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    new: int  # unknown to the engine until now
    known: int  # known already (as a customer or one of its ids)


def import_customers(
    factory: sessionmaker[Session],
    app_user_ids: list[str],
    *,
    actor: str,
    source: str,
    detail: dict[str, Any],
    now_ms: int,
) -> ImportResult:
    """Register ``app_user_ids`` (checked already) as due for a check now, and record the import
    in the operator audit log, in one transaction: all of them or none."""
    with factory() as session, session.begin():
        new, known = register_customers(session, app_user_ids, now_ms=now_ms)
        record_action(
            session,
            actor=actor,
            action="customers_import",
            target=source,
            detail={**detail, "ids": len(app_user_ids), "new": new, "known": known},
            now_ms=now_ms,
        )
    return ImportResult(new, known)
