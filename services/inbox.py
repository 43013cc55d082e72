"""Inbox processing: one stored webhook processed by re-reading the provider for every user it
names (the service around the pure engine: it opens transactions, calls reconcile, and records
each event's fate in its inbox row)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from config.observability import report_unknown_products
from engine.catalog import Catalog
from engine.errors import TerminalError, TransientError
from engine.ports import Cause, SubscriberSource
from engine.reconcile import ReconcileOutcome, ReconcilePolicy, apply_event_facts, reconcile_user
from engine.revenuecat import INFORMATIONAL_EVENT_TYPES, MalformedEvent, parse_event
from persistence.inbox import claim_row, mark_row, utcnow
from persistence.unit_of_work import unit_of_work

log = logging.getLogger(__name__)


@dataclass
class EventProcessing:
    """What processing one inbox row needs from its process (built once per worker process)."""

    session_factory: sessionmaker[Session]
    provider: SubscriberSource
    catalog: Catalog
    policy: ReconcilePolicy
    clock_ms: Callable[[], int]


@dataclass(frozen=True)
class EventResult:
    status: str  # processed | skipped | degraded | failed | ignored
    outcomes: tuple[ReconcileOutcome, ...] = ()


def process_inbox_event(inbox_id: int, ctx: EventProcessing, *, final_attempt: bool) -> EventResult:
    """Process one stored webhook by re-reading the provider for every user it names.

    Idempotent: a processed row is skipped; reconciling twice changes nothing. Raises
    TransientError when the provider is unreachable (after applying the event's own facts in
    degraded mode), unless this is the final attempt, when the row is left ``degraded`` and the
    customers dirty for the sweep.
    """
    factory = ctx.session_factory
    try:
        claimed = claim_row(factory, inbox_id)
    except LookupError as exc:
        raise TerminalError(str(exc)) from None
    if claimed is None:
        return EventResult("skipped")
    try:
        event = parse_event(json.loads(claimed.body))
    except (MalformedEvent, ValueError) as exc:
        mark_row(factory, inbox_id, status="failed", last_error=f"unparseable: {exc}", processed_at=utcnow())
        raise TerminalError(f"inbox row {inbox_id}: {exc}") from exc
    if event.event_type in INFORMATIONAL_EVENT_TYPES or not event.app_user_ids:
        mark_row(factory, inbox_id, status="ignored", processed_at=utcnow())
        return EventResult("ignored")
    cause = Cause("event", f"{event.event_type}:{event.event_id}")
    uow = unit_of_work(factory)
    outcomes: list[ReconcileOutcome] = []
    try:
        if event.identities:
            with uow() as store:
                store.record_identities(event.identities)
        for app_user_id in event.app_user_ids:
            outcomes.append(
                reconcile_user(
                    app_user_id,
                    provider=ctx.provider,
                    unit_of_work=uow,
                    catalog=ctx.catalog,
                    now_ms=ctx.clock_ms(),
                    cause=cause,
                    policy=ctx.policy,
                )
            )
    except TransientError as exc:
        degraded = apply_event_facts(
            event,
            unit_of_work=uow,
            catalog=ctx.catalog,
            now_ms=ctx.clock_ms(),
            cause=Cause("degraded", cause.ref),
            policy=ctx.policy,
        )
        status = "degraded" if final_attempt else "retrying"
        mark_row(factory, inbox_id, status=status, last_error=str(exc)[:2000])
        if final_attempt:
            log.warning("event %s left degraded after its last attempt: %s", event.event_id, exc)
            return EventResult("degraded", tuple(degraded))
        raise
    except TerminalError as exc:
        mark_row(factory, inbox_id, status="failed", last_error=str(exc)[:2000], processed_at=utcnow())
        raise
    mark_row(factory, inbox_id, status="processed", last_error=None, processed_at=utcnow())
    for outcome in outcomes:
        if outcome.unknown_products:
            report_unknown_products(outcome.customer_id, outcome.unknown_products, cause_ref=f"event {event.event_id}")
    return EventResult("processed", tuple(outcomes))
