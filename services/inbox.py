"""Inbox processing: one stored webhook, processed by re-reading the provider for every user it
names; every failure classified and recorded in its row.

* transient (the provider or the database unreachable, a lock timeout): retried with backoff
  and jitter, up to ``max_attempts``. When the provider is what failed, the event's own facts
  are applied meanwhile (degraded mode) and, after the last attempt, the row is left
  ``degraded`` with its customers dirty, so that the sweep reads them first.
* terminal (a body that is no RevenueCat event, an answer the engine cannot use, data the
  database refuses) and bugs (any other exception: a poison webhook): the row becomes a dead
  letter with its error, counted and alerted once, never retried on its own; an operator
  replays it (``inbox replay``).

A row is taken with a lease (persistence/inbox_rows.py), so that a redelivered or redriven
message never processes it twice at once, and the users of an event already read are kept, so
that a retry goes on where the last attempt stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from adapters.metrics import Metrics
from config.observability import report_dead_letter, report_unknown_products
from engine.backoff import backoff_ms
from engine.errors import TerminalError, TransientError
from engine.ports import Cause, SubscriberSource
from engine.reconcile import Reading, ReconcileOutcome, event_readings
from engine.revenuecat import INFORMATIONAL_EVENT_TYPES, WebhookEvent, parse_event
from persistence.inbox_rows import ClaimedRow, claim_row, mark_row, record_progress, record_users, utcnow
from services.convergence import Convergence
from services.history import HistoryReads

log = logging.getLogger(__name__)

FailureKind = Literal["transient", "terminal", "bug"]

# Transport failures of our own stores: worth another attempt later.
_TRANSIENT_STORE_ERRORS = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def this_worker() -> str:
    """Who holds a row's lease: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def holder_gone(holder: str) -> bool:
    """Whether the holder of a lease is known to be dead: a process of this host that no longer
    exists (a killed worker child; its message is redelivered at once). Holders on other hosts
    are never known to be gone: their leases run out."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def classify(exc: BaseException) -> FailureKind:
    """Transient (try again later), terminal (this input can never succeed) or a bug (an error
    nobody expected: retrying would only repeat it)."""
    if isinstance(exc, (TransientError, *_TRANSIENT_STORE_ERRORS)):
        return "transient"
    if isinstance(exc, (TerminalError, DataError, IntegrityError)):
        return "terminal"  # this input can never be stored or used as it is
    return "bug"


@dataclass(frozen=True)
class EventProcessing:
    """What processing an inbox row needs (built once per worker process)."""

    session_factory: sessionmaker[Session]
    convergence: Convergence
    provider: SubscriberSource  # drawing on the shared budget at event priority
    max_attempts: int
    retry_cap_ms: int
    retry_base_ms: int = 2_000
    jitter: Callable[[], float] = random.random
    metrics: Metrics | None = None  # purchase-to-access latency
    # After each v1 read: the customer's v2 history where the latest period is not enough.
    history: HistoryReads | None = None

    @property
    def clock_ms(self) -> Callable[[], int]:
        return self.convergence.clock_ms


@dataclass(frozen=True)
class EventResult:
    # processed | skipped (final already) | held (another worker has it) | ignored | retrying |
    # degraded | dead
    status: str
    outcomes: tuple[ReconcileOutcome, ...] = ()
    retry_in_ms: int | None = None  # retrying: when the next attempt is due


def process_inbox_event(inbox_id: int, ctx: EventProcessing) -> EventResult:
    """Process one stored webhook. Never raises for the row's own failures: they are recorded
    in the row (retrying, degraded or dead). Raises only when the row cannot be read or
    written at all (the database is down): its lease then lapses and the redrive sends it again.
    """
    try:
        claim = claim_row(
            ctx.session_factory, inbox_id, now_ms=ctx.clock_ms(), holder=this_worker(), holder_gone=holder_gone
        )
    except LookupError as exc:
        log.error("%s", exc)
        return EventResult("skipped")
    if claim.row is None:
        if claim.outcome == "held":  # another worker has it: look again once its lease lapses
            return EventResult("held", retry_in_ms=claim.retry_in_ms)
        return EventResult("skipped")
    row = claim.row
    try:
        event = parse_event(json.loads(row.body), received_ms=row.received_ms)
    except RecursionError:
        return _dead(ctx, row, "terminal", "the body nests too deeply to be an event")
    except (ValueError, TerminalError) as exc:
        return _dead(ctx, row, "terminal", f"unparseable: {exc}")
    except Exception as exc:
        return _dead(ctx, row, "bug", f"parsing failed: {_describe(exc)}", exc=exc)
    if event.event_type in INFORMATIONAL_EVENT_TYPES or not event.app_user_ids:
        mark_row(ctx.session_factory, inbox_id, status="ignored", processed_at=utcnow())
        return EventResult("ignored")
    try:
        return _read_and_reconcile(ctx, row, event)
    except Exception as exc:
        kind = classify(exc)
        if kind == "transient":
            return _retry_later(ctx, row, event, exc, degraded=False)
        return _dead(ctx, row, kind, _describe(exc), event=event, exc=exc if kind == "bug" else None)


def _read_and_reconcile(ctx: EventProcessing, row: ClaimedRow, event: WebhookEvent) -> EventResult:
    record_users(ctx.session_factory, row.inbox_id, event.app_user_ids)
    cause = Cause("event", f"{event.event_type}:{event.event_id}")
    if event.identities:
        with ctx.convergence.unit_of_work() as uow:
            uow.ledger.record_identities(event.identities)
    done = list(row.done_users)
    outcomes: list[ReconcileOutcome] = []
    for app_user_id in event.app_user_ids:
        if app_user_id in done:
            continue  # read by an earlier attempt of this event
        try:
            body = ctx.provider.get_subscriber(app_user_id)
        except TransientError as exc:
            return _retry_later(ctx, row, event, exc, degraded=True, done=done)
        # The event's word on periods the answer accounts for without listing them (an older
        # period's refund or its reversal: no provider reading states those).
        reading = Reading.from_provider(app_user_id, body, supplementary=event.observations)
        outcomes.append(ctx.convergence.reconcile(reading, cause))
        if ctx.history is not None:
            receiving = app_user_id in event.transferred_to
            followed = ctx.history.after_v1(reading, cause, transferred_to=receiving).outcome
            if followed is not None:
                outcomes.append(followed)
        done.append(app_user_id)
        if len(event.app_user_ids) > 1:
            record_progress(ctx.session_factory, row.inbox_id, done)
    mark_row(
        ctx.session_factory, row.inbox_id, status="processed", last_error=None, error_kind=None, processed_at=utcnow()
    )
    if ctx.metrics is not None and any(a.kind == "grant" for o in outcomes for a in o.actions):
        ctx.metrics.access_granted((ctx.clock_ms() - row.received_ms) / 1000)
    for outcome in outcomes:
        if outcome.unknown_products:
            report_unknown_products(outcome.customer_id, outcome.unknown_products, cause_ref=f"event {event.event_id}")
    return EventResult("processed", tuple(outcomes))


def _retry_later(
    ctx: EventProcessing,
    row: ClaimedRow,
    event: WebhookEvent,
    exc: BaseException,
    *,
    degraded: bool,
    done: list[str] | None = None,
) -> EventResult:
    """A transient failure: apply the event's own facts when the provider is what failed, then
    schedule the next attempt, or stop after the last one."""
    outcomes: tuple[ReconcileOutcome, ...] = ()
    if degraded:
        outcomes = _apply_event_facts(ctx, event, skip=set(done or ()))
    final = row.attempts >= ctx.max_attempts
    error = _describe(exc)[:2000]
    if final and degraded:
        mark_row(
            ctx.session_factory,
            row.inbox_id,
            status="degraded",
            last_error=error,
            error_kind="transient",
            processed_at=utcnow(),
        )
        log.warning("event %s left degraded after %d attempts: %s", event.event_id, row.attempts, error)
        return EventResult("degraded", outcomes)
    if final:
        return _dead(ctx, row, "transient", f"gave up after {row.attempts} attempts: {error}", event=event)
    floor_ms = int(exc.retry_after_s * 1000) if isinstance(exc, TransientError) and exc.retry_after_s else 0
    delay = backoff_ms(
        row.attempts, base_ms=ctx.retry_base_ms, cap_ms=ctx.retry_cap_ms, jitter=ctx.jitter(), floor_ms=floor_ms
    )
    mark_row(
        ctx.session_factory,
        row.inbox_id,
        status="retrying",
        last_error=error,
        error_kind="transient",
        next_attempt_ms=ctx.clock_ms() + delay,
    )
    log.info("event %s (attempt %d) will be retried in %d ms: %s", event.event_id, row.attempts, delay, error)
    return EventResult("retrying", outcomes, retry_in_ms=delay)


def _apply_event_facts(ctx: EventProcessing, event: WebhookEvent, *, skip: set[str]) -> tuple[ReconcileOutcome, ...]:
    """Degraded mode: what the event itself asserts, for the users not read yet."""
    cause = Cause("degraded", f"{event.event_type}:{event.event_id}")
    outcomes = []
    for reading in event_readings(event):
        if reading.app_user_id in skip:
            continue
        outcomes.append(ctx.convergence.reconcile(reading, cause))
    return tuple(outcomes)


def _dead(
    ctx: EventProcessing,
    row: ClaimedRow,
    kind: FailureKind,
    error: str,
    *,
    event: WebhookEvent | None = None,
    exc: BaseException | None = None,
) -> EventResult:
    """Make the row a dead letter: kept with its error, counted, alerted once."""
    mark_row(
        ctx.session_factory,
        row.inbox_id,
        status="dead",
        last_error=error[:2000],
        error_kind=kind,
        processed_at=utcnow(),
    )
    event_type = event.event_type if event is not None else None
    # A warning here: the alert is report_dead_letter's one Sentry event (an error line would be a second).
    log.warning("inbox row %s is a dead letter (%s): %s", row.inbox_id, kind, error, exc_info=exc)
    report_dead_letter(row.inbox_id, event_type=event_type, kind=kind, error=error)
    return EventResult("dead")


def _describe(exc: BaseException) -> str:
    """An error for the row and the operator: its class and message (never a provider's body:
    the client maps those to short messages)."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig  # without the statement and its parameters (the webhook's body)
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
