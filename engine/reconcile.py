"""reconcile_user: make one customer's granted access equal what the provider says they paid for.

fetch snapshot (no DB transaction open) -> observe (ledger) -> project -> diff -> apply.
Every path (webhook, client sync, sweep) ends here. Storage and provider come in as ports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from engine.catalog import Catalog
from engine.facts import SubscriberSnapshot, Transaction, TransactionObservation, observe_all, observe_snapshot
from engine.plan import Action, diff_access
from engine.ports import Cause, CustomerState, LedgerStore, SubscriberSource
from engine.projection import Projection, project_access
from engine.revenuecat import WebhookEvent, parse_subscriber

UnitOfWork = Callable[[], AbstractContextManager[LedgerStore]]

# After a projected expiry, look again a little later: the renewal (or EXPIRATION) should
# have reached the provider by then; if its webhook was lost, this is where it shows.
RECHECK_AFTER_EXPIRY_MS = 10 * 60 * 1000
RECENT_PURCHASE_MS = 48 * 3600 * 1000
RECHECK_AFTER_PURCHASE_MS = 3600 * 1000


@dataclass(frozen=True)
class ReconcileOutcome:
    customer_id: str
    actions: tuple[Action, ...]
    unknown_products: tuple[str, ...]
    snapshot_changed: bool
    next_check_ms: int


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
    customers in one statement): the purchases are those the grants were last converged from
    (same snapshot digest, nothing dirty), under the same catalog and policy, and no projected
    expiry has come due since. Then the grants are right as they are: only the check time moves.
    """
    if state.dirty or state.snapshot_digest is None or state.snapshot_digest != snapshot.digest:
        return None
    if state.projection_key != policy.projection_key(catalog):
        return None
    if state.next_change_ms is not None and now_ms >= state.next_change_ms:
        return None
    return next_check_ms(Projection((), (), state.next_change_ms), (), now_ms, policy, dirty=False)


def converge(
    store: LedgerStore,
    customer_id: str,
    *,
    owned: Sequence[Transaction],
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy,
) -> tuple[Projection, list[Action]]:
    """Project the customer's owned transactions and apply the difference to the grants."""
    projection = project_access(owned, catalog, now_ms, grant_sandbox=policy.grant_sandbox)
    actions = diff_access(projection.accesses, store.granted(customer_id))
    if actions:
        store.apply(customer_id, actions, cause, now_ms)
    if projection.unknown_products:
        store.record_unknown_products(customer_id, projection.unknown_products, now_ms)
    return projection, actions


def reconcile_user(
    app_user_id: str,
    *,
    provider: SubscriberSource,
    unit_of_work: UnitOfWork,
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy = ReconcilePolicy(),
) -> ReconcileOutcome:
    """Re-read ``app_user_id`` from the provider and converge its customer's grants.

    Raises TransientError when the provider cannot be reached (nothing is written), and
    TerminalError when it answers something unusable.
    """
    body = provider.get_subscriber(app_user_id)  # outside any DB transaction (convention 3)
    snapshot = parse_subscriber(body)
    customer_id = snapshot.customer_id
    with unit_of_work() as store:
        state = store.lock_customer(customer_id)
        if app_user_id != customer_id or state.last_snapshot_ms is None:
            store.record_identities({app_user_id: customer_id, customer_id: customer_id})
        stale = state.last_snapshot_ms is not None and snapshot.request_ms < state.last_snapshot_ms
        unchanged = state.snapshot_digest == snapshot.digest and not state.dirty
        key = policy.projection_key(catalog)
        check_at = unchanged_check_ms(state, snapshot, now_ms, policy, catalog)
        if check_at is not None:
            store.mark_checked(customer_id, now_ms=now_ms, next_check_ms=check_at, dirty=False)
            return ReconcileOutcome(customer_id, (), (), False, check_at)
        named = [o.transaction_id for o in snapshot.observations]
        known = store.transactions([customer_id], named)
        changed: list[Transaction] = []
        if not stale and not unchanged:
            changed = observe_snapshot(known, snapshot)
            store.save_transactions(changed)
            store.save_snapshot(customer_id, snapshot.request_ms, snapshot.digest, body)
        merged = {**known, **{t.transaction_id: t for t in changed}}
        owned = [t for t in merged.values() if t.owner == customer_id]
        projection, actions = converge(
            store, customer_id, owned=owned, catalog=catalog, now_ms=now_ms, cause=cause, policy=policy
        )
        check_at = next_check_ms(projection, owned, now_ms, policy, dirty=False)
        store.mark_checked(
            customer_id, now_ms=now_ms, next_check_ms=check_at, dirty=False, projection=(projection.next_change_ms, key)
        )
    return ReconcileOutcome(customer_id, tuple(actions), projection.unknown_products, bool(changed), check_at)


def apply_event_facts(
    event: WebhookEvent,
    *,
    unit_of_work: UnitOfWork,
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy = ReconcilePolicy(),
) -> list[ReconcileOutcome]:
    """Degraded mode: the provider is unreachable, so apply what the event itself asserts.

    Guarded by timestamps (an event older than what the ledger holds changes nothing), and
    every customer touched is marked dirty so that the next poll re-reads the truth.
    """
    outcomes: list[ReconcileOutcome] = []
    with unit_of_work() as store:
        if event.identities:
            store.record_identities(event.identities)
        resolve: Mapping[str, str] = {u: store.customer_for(u) or u for u in event.app_user_ids}
        observations: list[TransactionObservation] = list(event.observations)
        if event.transferred_from and event.transferred_to:
            # The event does not say which transactions moved: assume all of them, as the
            # default restore behaviour does; the next poll of both sides corrects this.
            target = resolve[event.transferred_to[0]]
            sources = [resolve[u] for u in event.transferred_from]
            for tx in store.transactions(sources, []).values():
                if tx.owner in sources:
                    observations.append(
                        TransactionObservation(
                            transaction_id=tx.transaction_id, observed_ms=event.timestamp_ms, owner=target
                        )
                    )
        customers = sorted(set(resolve.values()) | {o.owner for o in observations if isinstance(o.owner, str)})
        for customer_id in customers:
            store.lock_customer(customer_id)
        known = store.transactions(customers, [o.transaction_id for o in observations])
        changed = observe_all(known, observations)
        store.save_transactions(changed)
        merged = {**known, **{t.transaction_id: t for t in changed}}
        for customer_id in customers:
            owned = [t for t in merged.values() if t.owner == customer_id]
            projection, actions = converge(
                store, customer_id, owned=owned, catalog=catalog, now_ms=now_ms, cause=cause, policy=policy
            )
            check_at = next_check_ms(projection, owned, now_ms, policy, dirty=True)
            store.mark_checked(customer_id, now_ms=now_ms, next_check_ms=check_at, dirty=True)
            outcomes.append(
                ReconcileOutcome(customer_id, tuple(actions), projection.unknown_products, bool(changed), check_at)
            )
    return outcomes


def reproject_customer(
    customer_id: str,
    *,
    unit_of_work: UnitOfWork,
    catalog: Catalog,
    now_ms: int,
    cause: Cause,
    policy: ReconcilePolicy = ReconcilePolicy(),
) -> list[Action]:
    """Converge grants from the ledger alone (no provider call): expiries that fell due."""
    with unit_of_work() as store:
        store.lock_customer(customer_id)
        owned = [t for t in store.transactions([customer_id], []).values() if t.owner == customer_id]
        _, actions = converge(
            store, customer_id, owned=owned, catalog=catalog, now_ms=now_ms, cause=cause, policy=policy
        )
    return actions
