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
* Ownership by omission: a snapshot of customer C that no longer lists a transaction C owned
  (transferred away, or a refunded one-time purchase, which RevenueCat stops listing) clears
  its owner, if that snapshot is newer than what set the owner. The owner's time stays that of
  the last snapshot that named an owner: an omission says where the transaction is not, so
  another customer's snapshot naming it still wins even if it was read a moment before (two
  customers read in the same sweep group are written in either order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

TxKind = Literal["subscription", "non_subscription"]


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


@dataclass(frozen=True)
class TransactionObservation:
    """What one observation (snapshot entry or event) says about one store transaction.

    Fields left UNKNOWN are not asserted. ``owner`` is a customer id, or None for "owned by no
    customer we know" (it left the customer that last held it).
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


@dataclass(frozen=True)
class Transaction:
    """The ledger's merged view of one store transaction.

    ``observed`` maps each state field to the ``observed_ms`` of the observation that set it.
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
    changes: dict[str, object] = {}
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
            if getattr(base, name) != value:
                changes[name] = value
    if current is not None and not changes and observed == dict(base.observed):
        return None
    return replace(base, observed=observed, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SubscriberSnapshot:
    """A provider snapshot of one customer at ``request_ms`` (provider clock)."""

    customer_id: str  # RevenueCat's original_app_user_id: stable across aliases
    request_ms: int
    observations: tuple[TransactionObservation, ...]
    subscription_products: frozenset[str]  # products listed under ``subscriptions``
    digest: str  # hash of the customer's purchase state, without volatile fields
    entitlements: Mapping[str, object] = field(default_factory=dict)

    def lists(self, tx: Transaction) -> bool:
        """Whether this snapshot still accounts for ``tx``.

        v1 lists only the latest period of each subscription product, so earlier periods of a
        listed product are still accounted for; a one-time purchase must be listed by id.
        """
        if tx.kind == "subscription":
            return tx.product_id in self.subscription_products
        return any(o.transaction_id == tx.transaction_id for o in self.observations)


def observe_snapshot(known: Mapping[str, Transaction], snapshot: SubscriberSnapshot) -> list[Transaction]:
    """Merge a snapshot into the ledger; return the transactions that changed.

    ``known`` must hold every ledger transaction the snapshot names and every one owned by
    the snapshot's customer.
    """
    changed: dict[str, Transaction] = {}
    listed: set[str] = set()
    for obs in snapshot.observations:
        listed.add(obs.transaction_id)
        merged = merge_observation(changed.get(obs.transaction_id) or known.get(obs.transaction_id), obs)
        if merged is not None:
            changed[obs.transaction_id] = merged
    for tx_id, tx in known.items():
        if tx_id in listed or tx.owner != snapshot.customer_id or snapshot.lists(tx):
            continue
        current = changed.get(tx_id) or tx
        if snapshot.request_ms >= current.observed.get("owner", -1):
            changed[tx_id] = replace(current, owner=None)  # the owner's time unchanged: see above
    return sorted(changed.values(), key=lambda t: t.transaction_id)


def observe_all(known: Mapping[str, Transaction], observations: Iterable[TransactionObservation]) -> list[Transaction]:
    """Merge loose observations (from a webhook in degraded mode); return what changed."""
    changed: dict[str, Transaction] = {}
    for obs in observations:
        merged = merge_observation(changed.get(obs.transaction_id) or known.get(obs.transaction_id), obs)
        if merged is not None:
            changed[obs.transaction_id] = merged
    return sorted(changed.values(), key=lambda t: t.transaction_id)
