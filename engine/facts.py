"""Ledger facts and the rules that decide which observation of a fact wins.

A transaction is observed many times: in provider snapshots (``GET /v1/subscribers``, stamped
with the provider's ``request_date``) and, in degraded mode, in webhook events (stamped with
``event_timestamp_ms``). Observations arrive duplicated and out of order; merging them must be
idempotent and order-independent. The rules, field by field:

* Purchase fields (product, kind, original transaction id, store, sandbox flag, purchase time,
  period type, ownership) describe the purchase itself and never change: the first observation
  that knows a field sets it; later observations only fill fields still unknown.
* State fields (expiry, grace expiry, refund time, owner) change over the purchase's life
  (renewal extension, grace, refund, refund reversal, transfer): the observation with the newest
  ``observed_ms`` wins, field by field for the fields it knows; an observation older than the
  one recorded for a field changes nothing (an older fact after a newer one is a no-op), and the
  same fact twice sets the same values (a no-op). Equal timestamps go to the later-processed.
* Ownership by omission: a snapshot of customer C that no longer accounts for a transaction C
  owned (transferred away, or a refunded one-time purchase, which RevenueCat stops listing)
  releases it from C: the owner is cleared, if that snapshot is newer than what set the owner.
  A release names its customer and negates only that customer's claims (``released:<C>`` in
  ``observed``): "no longer C's" says nothing against D's claim to it, so a transfer reaches
  the same owner whichever side's snapshot is merged first. What a snapshot accounts for
  depends on how much it lists (``SubscriberSnapshot.periods``): v1 lists the latest period of
  each subscription, so the earlier periods of a listed product stay accounted for; a v2
  history lists every period by transaction id.
* A refund undone, from a v2 history (``unrefunded_until_ms``): v2 states no refund of a
  subscription period, but a refund ends the period at the refund time, so a v2 transaction
  whose period runs to ``h`` says "not refunded before ``h``" as of its read. The newest such
  statement is kept (``unrefunded`` and ``unrefunded_until`` in ``observed``); a recorded refund
  older than it and earlier than ``h`` (by more than ``REFUND_TIME_TOLERANCE_MS``: a webhook's
  time and the provider's refund time may differ a little) no longer holds: it was reversed.
  Observed as of the same millisecond, the later-processed wins, as for the state fields: a
  refund read after a history read (in the same second of the provider's clock) stands.
  A refund at or after the period's end leaves the expiry as it was, so its reversal is not
  seen this way (only its webhook states it).
* An event's word on an older period (``unlisted_statements``): a webhook naming a period the
  provider's reading accounts for without listing it (v1 lists only the latest period) is merged
  by the same rules, after the reading: its refund (``CANCELLATION`` with ``CUSTOMER_SUPPORT``)
  or refund reversal (``REFUND_REVERSED``) is stated by nothing else. A later v1 read does not
  list the period, so it cannot undo it; a v2 read lists it without a refund field (the refund
  stays) and with its expiry, which undoes the refund only if the refund lies before that
  expiry (then v2 would have cut the period at the refund, unless it was reversed).
* Never a release on the absence of an id: a one-time purchase listed without ``id`` or
  ``store_transaction_id`` (its id synthesized from customer, product and purchase time) is
  first matched to a transaction of the same
  product that C owns and the snapshot does not list by id, preferring the same purchase time;
  it then counts as listing that transaction (whose id and fields it leaves as they are), so
  nothing is revoked and nothing is credited twice. Only an unmatched one becomes a
  transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

TxKind = Literal["subscription", "non_subscription"]
Periods = Literal["latest", "all"]


class _Unknown:
    """Sentinel: this observation says nothing about the field (distinct from a known None)."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN = _Unknown()

PURCHASE_FIELDS = (
    "product_id",
    "kind",
    "original_transaction_id",
    "store",
    "is_sandbox",
    "purchased_ms",
    "period_type",
    "ownership",
)
STATE_FIELDS = ("expires_ms", "grace_expires_ms", "refunded_ms", "owner")
# How far a refund's recorded time may lie before the end v2 reports for its period and still be
# that same refund (webhook times and the provider's refund time differ a little).
REFUND_TIME_TOLERANCE_MS = 60_000


@dataclass(frozen=True)
class TransactionObservation:
    """What one observation (snapshot entry or event) says about one store transaction.

    Fields left UNKNOWN are not asserted. ``owner`` is a customer id, or None for "owned by no
    customer we know". ``released_by`` names a customer the transaction left as of
    ``observed_ms`` (a snapshot of that customer no longer accounts for it).
    """

    transaction_id: str
    observed_ms: int
    product_id: object = UNKNOWN
    kind: object = UNKNOWN
    original_transaction_id: object = UNKNOWN
    store: object = UNKNOWN
    is_sandbox: object = UNKNOWN
    purchased_ms: object = UNKNOWN
    period_type: object = UNKNOWN
    ownership: object = UNKNOWN
    expires_ms: object = UNKNOWN
    grace_expires_ms: object = UNKNOWN
    refunded_ms: object = UNKNOWN
    owner: object = UNKNOWN
    released_by: object = UNKNOWN
    # Not refunded before this instant, as of ``observed_ms`` (a v2 transaction's expiry).
    unrefunded_until_ms: object = UNKNOWN


@dataclass(frozen=True)
class Transaction:
    """The ledger's merged view of one store transaction.

    ``observed`` maps each state field to the ``observed_ms`` of the observation that set it
    (for ``owner``: of the newest claim to it), and ``released:<customer>`` to the newest
    release from that customer.
    """

    transaction_id: str
    product_id: str | None = None
    kind: TxKind | None = None
    original_transaction_id: str | None = None
    store: str | None = None
    is_sandbox: bool | None = None
    purchased_ms: int | None = None
    period_type: str | None = None
    ownership: str | None = None
    expires_ms: int | None = None
    grace_expires_ms: int | None = None
    refunded_ms: int | None = None
    owner: str | None = None
    observed: Mapping[str, int] = field(default_factory=dict)

    @property
    def access_end_ms(self) -> int | None:
        """End of the access this period gives: expiry extended by grace (None: no expiry)."""
        if self.expires_ms is None:
            return None
        if self.grace_expires_ms is not None and self.grace_expires_ms > self.expires_ms:
            return self.grace_expires_ms
        return self.expires_ms

    @property
    def is_refunded(self) -> bool:
        return self.refunded_ms is not None

    @property
    def is_paid(self) -> bool:
        """Paid by this customer: trials, promotional grants and family sharing are not."""
        return (
            (self.period_type or "normal").lower() not in {"trial", "promotional"}
            and ((self.ownership or "PURCHASED").upper() != "FAMILY_SHARED")
            and (self.store or "").lower() != "promotional"
        )


def merge_observation(current: Transaction | None, obs: TransactionObservation) -> Transaction | None:
    """Fold one observation into the ledger's view; None when it changes nothing."""
    base = current or Transaction(transaction_id=obs.transaction_id)
    changes: dict[str, Any] = {}  # field -> new value, each of its field's type (read from obs)
    for name in PURCHASE_FIELDS:
        value = getattr(obs, name)
        if value is not UNKNOWN and getattr(base, name) is None and value is not None:
            changes[name] = value
    observed = dict(base.observed)
    for name in STATE_FIELDS:
        value = getattr(obs, name)
        if value is UNKNOWN:
            continue
        # Ties go to the later-processed observation: same-millisecond reads are ambiguous,
        # and the one processed last was fetched last when reads are serialized per customer.
        if obs.observed_ms >= observed.get(name, -1):
            observed[name] = obs.observed_ms
            if name == "owner" and isinstance(value, str) and observed.get(_released(value), -1) >= obs.observed_ms:
                value = None  # claimed, but that customer's newer snapshot no longer accounts for it
            if getattr(base, name) != value:
                changes[name] = value
    # Only a release newer than the owner's claim matters (an older one is already superseded).
    releasing = isinstance(obs.released_by, str) and obs.observed_ms >= observed.get("owner", -1)
    if releasing and obs.observed_ms > observed.get(_released(str(obs.released_by)), -1):
        observed[_released(str(obs.released_by))] = obs.observed_ms
        if changes.get("owner", base.owner) == obs.released_by:
            changes["owner"] = None
    until = obs.unrefunded_until_ms
    states_unrefunded = False
    if isinstance(until, int) and obs.observed_ms >= observed.get("unrefunded", -1):
        states_unrefunded = True
        observed["unrefunded"], observed["unrefunded_until"] = obs.observed_ms, until
    refunded = changes.get("refunded_ms", base.refunded_ms)
    unrefunded_at, refund_at = observed.get("unrefunded", -1), observed.get("refunded_ms", -1)
    # Ties go to the later-processed here too: a "not refunded" as old as the refund reverses it
    # only when it is the one merged now (a refund read in the second of a history read stands).
    if (
        isinstance(refunded, int)
        and (
            unrefunded_at > refund_at
            or (unrefunded_at == refund_at and states_unrefunded and obs.refunded_ms is UNKNOWN)
        )
        and refunded + REFUND_TIME_TOLERANCE_MS < observed.get("unrefunded_until", -1)
    ):
        changes["refunded_ms"] = None  # the period runs past the refund, as of later: reversed
    if current is not None and not changes and observed == dict(base.observed):
        return None
    return replace(base, observed=observed, **changes)


def _released(customer_id: str) -> str:
    return f"released:{customer_id}"


@dataclass(frozen=True)
class SubscriberSnapshot:
    """A provider snapshot of one customer at ``request_ms`` (provider clock)."""

    customer_id: str  # RevenueCat's original_app_user_id: stable across aliases
    request_ms: int
    observations: tuple[TransactionObservation, ...]
    subscription_products: frozenset[str]  # products listed under ``subscriptions``
    digest: str  # hash of the customer's purchase state, without volatile fields
    entitlements: Mapping[str, object] = field(default_factory=dict)
    # Synthesized ids of the one-time purchases listed without an id (matched in observe_snapshot).
    unidentified: frozenset[str] = frozenset()
    # How many periods of each subscription it lists: "latest" (v1) or "all" (a v2 history),
    # except for ``latest_only_products`` (v2 lists no transactions for their store).
    periods: Periods = "latest"
    latest_only_products: frozenset[str] = frozenset()
    # It lists subscriptions whose store product it cannot name (v2 promotional grants): a
    # period of a product it does not name may be one of those.
    unnamed_subscriptions: bool = False
    # Whether it lists the one-time purchases (a v2 history read without them says nothing of them).
    lists_purchases: bool = True
    # Store product -> when its subscription's first period was bought (v1's
    # ``original_purchase_date``): the chain the latest period ends, as far as v1 says.
    chain_starts: Mapping[str, int] = field(default_factory=dict)
    # When the provider first saw the customer (v1's ``first_seen``; None: not stated).
    first_seen_ms: int | None = None

    def lists(self, tx: Transaction) -> bool:
        """Whether this snapshot still accounts for ``tx``.

        v1 lists only the latest period of each subscription product, so earlier periods of a
        listed product are still accounted for; a v2 history lists every period by id (but for
        products of stores without transaction history). A one-time purchase must be listed by id.
        """
        listed = any(o.transaction_id == tx.transaction_id for o in self.observations)
        if tx.kind != "subscription" or listed:
            return listed or (tx.kind != "subscription" and not self.lists_purchases)
        if tx.product_id not in self.subscription_products:
            return self.unnamed_subscriptions and self.periods == "all"
        return self.periods == "latest" or tx.product_id in self.latest_only_products


def observe_snapshot(known: Mapping[str, Transaction], snapshot: SubscriberSnapshot) -> list[Transaction]:
    """Merge a snapshot into the ledger; return the transactions that changed.

    ``known`` must hold every ledger transaction the snapshot names and every one owned by
    the snapshot's customer.
    """
    changed: dict[str, Transaction] = {}
    listed: set[str] = set()
    matched = match_unidentified(known, snapshot)
    for listed_obs in snapshot.observations:
        obs = listed_obs
        if obs.transaction_id in matched:
            obs = replace(obs, transaction_id=matched[obs.transaction_id])
        listed.add(obs.transaction_id)
        merged = merge_observation(changed.get(obs.transaction_id) or known.get(obs.transaction_id), obs)
        if merged is not None:
            changed[obs.transaction_id] = merged
    for tx_id, tx in known.items():
        if tx_id in listed or tx.owner != snapshot.customer_id or snapshot.lists(tx):
            continue
        merged = merge_observation(
            changed.get(tx_id) or tx,
            TransactionObservation(transaction_id=tx_id, observed_ms=snapshot.request_ms, released_by=tx.owner),
        )
        if merged is not None:
            changed[tx_id] = merged
    return sorted(changed.values(), key=lambda t: t.transaction_id)


def match_unidentified(known: Mapping[str, Transaction], snapshot: SubscriberSnapshot) -> dict[str, str]:
    """Synthesized id of each one-time purchase listed without an id -> the known transaction it is.

    Candidates: one-time purchases of the same product owned by the snapshot's customer and not
    listed by id; the same purchase time first, then the earliest; each matched once.
    """
    if not snapshot.unidentified:
        return {}
    by_id = {o.transaction_id: o for o in snapshot.observations}
    candidates = sorted(
        (
            tx
            for tx in known.values()
            if tx.owner == snapshot.customer_id and tx.kind == "non_subscription" and tx.transaction_id not in by_id
        ),
        key=lambda tx: (tx.purchased_ms is None, tx.purchased_ms or 0, tx.transaction_id),
    )
    matched: dict[str, str] = {}
    for synthesized in sorted(snapshot.unidentified):
        obs = by_id.get(synthesized)
        if obs is None or synthesized in known:  # seen without an id before: that is its id
            continue
        same_product = [tx for tx in candidates if tx.product_id == obs.product_id]
        if not same_product:
            continue
        exact = [tx for tx in same_product if tx.purchased_ms == obs.purchased_ms]
        chosen = (exact or same_product)[0]
        matched[synthesized] = chosen.transaction_id
        candidates.remove(chosen)
    return matched


def unlisted_statements(
    known: Mapping[str, Transaction],
    snapshot: SubscriberSnapshot,
    observations: Iterable[TransactionObservation],
) -> list[TransactionObservation]:
    """The observations (a webhook's own statements) about transactions ``snapshot`` accounts
    for without listing them by id: older periods of a subscription it lists (v1 lists only the
    latest), whose refund or refund reversal no provider reading states.

    What the snapshot lists by id is the provider's to say; what it does not account for at
    all (another customer's, a refunded one-time purchase, a product it does not list) is not
    added back on the event's word. ``known`` must hold the ledger's transactions they name.
    """
    listed = {o.transaction_id for o in snapshot.observations}
    kept = []
    for obs in observations:
        if obs.transaction_id in listed:
            continue
        current = known.get(obs.transaction_id)
        tx = merge_observation(current, obs) or current
        if tx is not None and tx.owner == snapshot.customer_id and snapshot.lists(tx):
            kept.append(obs)
    return kept


def observe_all(known: Mapping[str, Transaction], observations: Iterable[TransactionObservation]) -> list[Transaction]:
    """Merge loose observations (from a webhook in degraded mode); return what changed."""
    changed: dict[str, Transaction] = {}
    for obs in observations:
        merged = merge_observation(changed.get(obs.transaction_id) or known.get(obs.transaction_id), obs)
        if merged is not None:
            changed[obs.transaction_id] = merged
    return sorted(changed.values(), key=lambda t: t.transaction_id)
