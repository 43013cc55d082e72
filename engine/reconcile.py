"""reconcile: make one customer's granted access equal what was learnt about what they paid for.

Every path into convergence ends in ``reconcile``: a webhook (once the provider was re-read for
the users it names), the sweep, discovery, a client's sync or validation, an operator's
command, an expiry falling due, and degraded mode (an event's own facts, when the provider
cannot be read). The caller reads first, outside any transaction (convention 3), and hands over
a ``Reading``; ``reconcile`` then, in one unit of work:

    lock the customer -> merge the facts into the ledger (engine/facts.py) -> project
    (engine/projection.py) -> diff against the grants (engine/plan.py) -> apply the grants and
    their audit rows -> write the sink outbox -> note the access change -> mark the check.

Batch settlement of customers whose snapshot needs no work (the sweep) is the same pure rule,
``unchanged_check_ms``, applied by a store method (``settle_unchanged``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.catalog import Catalog
from engine.facts import (
    SubscriberSnapshot,
    Transaction,
    TransactionObservation,
    observe_all,
    observe_snapshot,
    unlisted_statements,
)
from engine.plan import Action, diff_access
from engine.ports import Cause, CustomerState, LedgerStore, UnitOfWork, UnitOfWorkFactory
from engine.projection import Projection, project_access
from engine.revenuecat import WebhookEvent, parse_subscriber
from engine.revenuecat_v2 import V2CustomerRead, parse_customer_history

# After a projected expiry, look again a little later: the renewal (or EXPIRATION) should
# have reached the provider by then; if its webhook was lost, this is where it shows.
RECHECK_AFTER_EXPIRY_MS = 10 * 60 * 1000
RECENT_PURCHASE_MS = 48 * 3600 * 1000
RECHECK_AFTER_PURCHASE_MS = 3600 * 1000

Source = Literal["provider", "event", "ledger"]


@dataclass(frozen=True)
class Reading:
    """What was learnt about one customer before ``reconcile`` runs, and from where.

    * ``provider``: the provider's state of ``app_user_id`` (``snapshot``, parsed from ``body``,
      which is kept as the snapshot record). The truth: the customer is no longer dirty.
      ``supplementary``: what the webhook that caused the read states about transactions the
      snapshot accounts for without listing them (older periods: their refund or its reversal,
      which no provider reading states), merged after the snapshot by the same timestamp rules
      (engine/facts.py ``unlisted_statements``); the rest of the event is the provider's to say.
    * ``event``: degraded mode. The provider could not be read, so what an event itself asserts
      is applied (``observations``; ``claims_from``: a TRANSFER's previous owners, whose
      purchases this customer is assumed to take, as RevenueCat's default restore behaviour
      does), guarded by timestamps; the customer stays dirty so the provider is read soon.
    * ``ledger``: nothing was read; the ledger as it stands (an expiry fell due).
    """

    source: Source
    app_user_id: str
    snapshot: SubscriberSnapshot | None = None
    body: Mapping[str, Any] | None = None
    observations: tuple[TransactionObservation, ...] = ()
    identities: Mapping[str, str] = field(default_factory=dict)
    claims_from: tuple[str, ...] = ()
    observed_ms: int = 0  # when an event's facts were true (degraded claims are stamped so)
    supplementary: tuple[TransactionObservation, ...] = ()

    @classmethod
    def from_provider(
        cls, app_user_id: str, body: Mapping[str, Any], *, supplementary: Sequence[TransactionObservation] = ()
    ) -> Reading:
        """A provider answer; TerminalError when it is not a usable subscriber body.
        ``supplementary``: the observations of the webhook the read was made for, if any."""
        return cls(
            "provider",
            app_user_id,
            snapshot=parse_subscriber(body),
            body=body,
            supplementary=tuple(supplementary),
        )

    @classmethod
    def from_history(cls, app_user_id: str, read: V2CustomerRead) -> Reading:
        """A REST API v2 history read (every period of App Store and Play Store subscriptions,
        the purchases, the aliases); TerminalError when a body is not the documented shape.
        The bodies are kept as the snapshot record, under ``v2``."""
        history = parse_customer_history(read)
        record = {
            "v2": {
                "customer_id": read.customer_id,
                "request_ms": read.request_ms,
                "subscriptions": list(read.subscriptions),
                "transactions": {k: list(v) for k, v in read.transactions.items()},
                "purchases": list(read.purchases) if read.purchases is not None else None,
                "aliases": list(read.aliases) if read.aliases is not None else None,
                "product_store_ids": dict(read.product_store_ids),
            }
        }
        return cls("provider", app_user_id, snapshot=history.snapshot, body=record, identities=history.identities)

    @classmethod
    def from_event(
        cls,
        app_user_id: str,
        *,
        observations: Sequence[TransactionObservation] = (),
        identities: Mapping[str, str] | None = None,
        claims_from: Sequence[str] = (),
        observed_ms: int,
    ) -> Reading:
        return cls(
            "event",
            app_user_id,
            observations=tuple(observations),
            identities=dict(identities or {}),
            claims_from=tuple(claims_from),
            observed_ms=observed_ms,
        )

    @classmethod
    def from_ledger(cls, customer_id: str) -> Reading:
        return cls("ledger", customer_id)


@dataclass(frozen=True)
class ReconcileOutcome:
    customer_id: str
    actions: tuple[Action, ...]
    unknown_products: tuple[str, ...]
    snapshot_changed: bool
    next_check_ms: int | None  # None: the check time was left as it was (nothing was read)


@dataclass(frozen=True)
class ReconcilePolicy:
    grant_sandbox: bool = False
    max_staleness_ms: int = 24 * 3600 * 1000

    def projection_key(self, catalog: Catalog) -> str:
        """What a projection depends on besides the ledger and the clock."""
        return f"{catalog.digest}:{int(self.grant_sandbox)}"


def next_check_ms(
    projection: Projection,
    owned: Sequence[Transaction],
    now_ms: int,
    policy: ReconcilePolicy,
    *,
    dirty: bool,
) -> int:
    """When to read this customer from the provider again.

    At once when dirty (degraded event, failed fetch); soon after an expiry or renewal the
    access depends on (where a lost RENEWAL or EXPIRATION shows); soon after a purchase
    (where a quick refund or a lost follow-up shows); otherwise within the maximum staleness.
    """
    if dirty:
        return now_ms
    due = now_ms + policy.max_staleness_ms
    if projection.next_change_ms is not None:
        due = min(due, max(now_ms, projection.next_change_ms) + RECHECK_AFTER_EXPIRY_MS)
    latest_purchase = max((t.purchased_ms for t in owned if t.purchased_ms is not None), default=None)
    if latest_purchase is not None and now_ms - latest_purchase < RECENT_PURCHASE_MS:
        due = min(due, now_ms + RECHECK_AFTER_PURCHASE_MS)
    return due


def unchanged_check_ms(
    state: CustomerState,
    snapshot: SubscriberSnapshot,
    now_ms: int,
    policy: ReconcilePolicy,
    catalog: Catalog,
) -> int | None:
    """The next check time when reading ``snapshot`` needs no work at all, else None.

    The fast path of every reconcile (and of the sweep's batches, which apply it to many
    customers at once through ``settle_unchanged``): the purchases are those the grants were
    last converged from (same snapshot digest, nothing dirty), under the same catalog and
    policy, and no projected expiry has come due since. Then the grants are right as they are:
    only the check time moves.
    """
    if state.dirty or state.snapshot_digest is None or state.snapshot_digest != snapshot.digest:
        return None
    if state.projection_key != policy.projection_key(catalog):
        return None
    if state.next_change_ms is not None and now_ms >= state.next_change_ms:
        return None
    return next_check_ms(Projection((), (), state.next_change_ms), (), now_ms, policy, dirty=False)


def reconcile(
    reading: Reading,
    *,
    unit_of_work: UnitOfWorkFactory,
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy,
) -> ReconcileOutcome:
    """Converge the grants of the customer ``reading`` is about, in one unit of work."""
    with unit_of_work() as uow:
        ledger = uow.ledger
        if reading.identities:
            ledger.record_identities(reading.identities)
        snapshot = reading.snapshot
        if snapshot is not None:
            customer_id = snapshot.customer_id
        else:
            customer_id = ledger.customer_for(reading.app_user_id) or reading.app_user_id
        previous_owners = sorted({ledger.customer_for(u) or u for u in reading.claims_from} - {customer_id})
        # Every customer whose rows this unit of work writes is locked, in one order.
        states = {c: ledger.lock_customer(c) for c in sorted({customer_id, *previous_owners})}
        state = states[customer_id]
        supplement: list[TransactionObservation] = []
        if snapshot is not None:
            if reading.app_user_id != customer_id or state.last_snapshot_ms is None:
                ledger.record_identities({reading.app_user_id: customer_id, customer_id: customer_id})
            supplement = _supplement(ledger, reading, snapshot)
            # An unchanged snapshot needs no work unless the event says something new beside it.
            check_at = None if supplement else unchanged_check_ms(state, snapshot, now_ms, policy, catalog)
            if check_at is not None:
                ledger.mark_checked(customer_id, now_ms=now_ms, next_check_ms=check_at, dirty=False)
                return ReconcileOutcome(customer_id, (), (), False, check_at)
        merged, changed = _merge_facts(ledger, reading, customer_id, state, previous_owners, supplement=supplement)
        owned = [t for t in merged.values() if t.owner == customer_id]
        projection, actions = _converge(
            uow, customer_id, owned, catalog=catalog, now_ms=now_ms, cause=cause, policy=policy
        )
        check_at = _mark(
            ledger,
            reading,
            customer_id,
            projection=projection,
            owned=owned,
            now_ms=now_ms,
            policy=policy,
            catalog=catalog,
        )
    return ReconcileOutcome(customer_id, tuple(actions), projection.unknown_products, changed, check_at)


def settle_unchanged(
    snapshots: Mapping[str, SubscriberSnapshot],
    *,
    unit_of_work: UnitOfWorkFactory,
    catalog: Catalog,
    now_ms: int,
    policy: ReconcilePolicy,
) -> set[str]:
    """Settle together the customers whose fresh snapshot needs no work (``unchanged_check_ms``):
    only their check time moves. The ones returned are done; the others go through ``reconcile``."""
    if not snapshots:
        return set()

    def rule(state: CustomerState, snapshot: SubscriberSnapshot) -> int | None:
        return unchanged_check_ms(state, snapshot, now_ms, policy, catalog)

    with unit_of_work() as uow:
        return uow.ledger.settle_unchanged(snapshots, rule, now_ms)


def _supplement(ledger: LedgerStore, reading: Reading, snapshot: SubscriberSnapshot) -> list[TransactionObservation]:
    """The event's statements to merge beside ``snapshot``: about transactions it accounts for
    without listing them, and only those that change the ledger."""
    listed = {o.transaction_id for o in snapshot.observations}
    named = [o for o in reading.supplementary if o.transaction_id not in listed]
    if not named:
        return []
    known = ledger.transactions([], [o.transaction_id for o in named])
    kept = unlisted_statements(known, snapshot, named)
    return kept if observe_all(known, kept) else []


def _merge_facts(
    ledger: LedgerStore,
    reading: Reading,
    customer_id: str,
    state: CustomerState,
    previous_owners: Sequence[str],
    *,
    supplement: Sequence[TransactionObservation] = (),
) -> tuple[dict[str, Transaction], bool]:
    """The customer's ledger after merging what was read; whether the ledger changed."""
    snapshot = reading.snapshot
    if snapshot is not None:
        ids = [o.transaction_id for o in (*snapshot.observations, *supplement)]
        known = ledger.transactions([customer_id], ids)
        stale = state.last_snapshot_ms is not None and snapshot.request_ms < state.last_snapshot_ms
        from_snapshot: dict[str, Transaction] = {}
        # Unless older than what the ledger holds, or the very same purchases.
        if not stale and not (state.snapshot_digest == snapshot.digest and not state.dirty):
            from_snapshot = {t.transaction_id: t for t in observe_snapshot(known, snapshot)}
            ledger.save_snapshot(customer_id, snapshot.request_ms, snapshot.digest, reading.body or {})
        # After the snapshot: its own timestamps decide against what the snapshot set.
        stated = {t.transaction_id: t for t in observe_all({**known, **from_snapshot}, supplement)}
        updated = {**from_snapshot, **stated}
        ledger.save_transactions(sorted(updated.values(), key=lambda t: t.transaction_id))
        return {**known, **updated}, bool(updated)
    observations = list(reading.observations)
    if previous_owners:
        # The event does not say which transactions moved: assume all of them, as the default
        # restore behaviour does; the next read of both sides corrects this.
        for tx in ledger.transactions(previous_owners, []).values():
            if tx.owner in previous_owners:
                observations.append(
                    TransactionObservation(tx.transaction_id, observed_ms=reading.observed_ms, owner=customer_id)
                )
    known = ledger.transactions([customer_id], [o.transaction_id for o in observations])
    changed = observe_all(known, observations)
    ledger.save_transactions(changed)
    return {**known, **{t.transaction_id: t for t in changed}}, bool(changed)


def _converge(
    uow: UnitOfWork,
    customer_id: str,
    owned: Sequence[Transaction],
    *,
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy,
) -> tuple[Projection, list[Action]]:
    """Project the owned transactions and apply the difference: grants with their audit rows,
    the sink's outbox rows and the change notice, all in the caller's transaction."""
    projection = project_access(owned, catalog, now_ms, grant_sandbox=policy.grant_sandbox)
    actions = diff_access(projection.accesses, uow.ledger.granted(customer_id))
    if actions:
        uow.ledger.apply(customer_id, actions, cause, now_ms)
        uow.outbox.record(customer_id, actions, cause, now_ms)
        uow.changes.note(customer_id)
    if projection.unknown_products:
        uow.ledger.record_unknown_products(customer_id, projection.unknown_products, now_ms)
    return projection, actions


def _mark(
    ledger: LedgerStore,
    reading: Reading,
    customer_id: str,
    *,
    projection: Projection,
    owned: Sequence[Transaction],
    now_ms: int,
    policy: ReconcilePolicy,
    catalog: Catalog,
) -> int | None:
    """Record the check: after a provider read, when to read again and what the grants were
    converged under (the fast path's marks); after an event's facts, read again at once; after
    the ledger alone, nothing (the next read is already scheduled)."""
    if reading.source == "ledger":
        return None
    dirty = reading.source == "event"
    check_at = next_check_ms(projection, owned, now_ms, policy, dirty=dirty)
    marks = None if dirty else (projection.next_change_ms, policy.projection_key(catalog))
    ledger.mark_checked(customer_id, now_ms=now_ms, next_check_ms=check_at, dirty=dirty, projection=marks)
    return check_at


def event_readings(event: WebhookEvent) -> list[Reading]:
    """Degraded mode: the readings an event's own facts give, one per user it names. A
    TRANSFER's receiving side comes first, so that its previous owners, reconciled after it,
    see the purchases gone."""
    ts = event.timestamp_ms
    if event.transferred_from and event.transferred_to:
        target, *other_targets = event.transferred_to
        first = Reading.from_event(target, claims_from=event.transferred_from, observed_ms=ts)
        rest = [Reading.from_event(u, observed_ms=ts) for u in dict.fromkeys((*other_targets, *event.transferred_from))]
        return [first, *(r for r in rest if r.app_user_id != target)]
    return [
        Reading.from_event(u, observations=event.observations, identities=event.identities, observed_ms=ts)
        for u in event.app_user_ids
    ]
