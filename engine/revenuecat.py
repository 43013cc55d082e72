"""RevenueCat's shapes turned into ledger facts: v1 subscriber bodies and webhook events. Pure.

Shapes: ../shared/reference/revenuecat.md §1 (webhooks) and §3 (``GET /v1/subscribers``).
Unknown fields are ignored (RevenueCat adds fields without versioning); missing optional
fields are tolerated (several official samples lack fields the docs call common).

Any body gives facts or a TerminalError naming the field at fault: a subscriber body raises
UnreadableSubscriber, a webhook MalformedEvent. Nothing else escapes, whatever the JSON holds
(wrong types, infinities, ids no column can store), so one bad customer fails only itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import TerminalError
from engine.facts import UNKNOWN, SubscriberSnapshot, TransactionObservation
from engine.provider_values import MAX_ID_LENGTH, FieldReader, shown, storable
from engine.provider_values import parse_instant_ms as parse_instant_ms  # noqa: PLC0414 - re-exported

PROVIDER = "revenuecat"

# Events after which the named users' purchases may differ: re-read the provider for them.
RECONCILE_EVENT_TYPES = frozenset(
    {
        "INITIAL_PURCHASE",
        "RENEWAL",
        "CANCELLATION",
        "UNCANCELLATION",
        "NON_RENEWING_PURCHASE",
        "SUBSCRIPTION_PAUSED",
        "EXPIRATION",
        "BILLING_ISSUE",
        "PRODUCT_CHANGE",
        "TRANSFER",
        "SUBSCRIPTION_EXTENDED",
        "TEMPORARY_ENTITLEMENT_GRANT",
        "REFUND_REVERSED",
    }
)
# Documented types that cannot change access: stored for the record, marked ignored.
INFORMATIONAL_EVENT_TYPES = frozenset(
    {
        "TEST",
        "INVOICE_ISSUANCE",
        "VIRTUAL_CURRENCY_TRANSACTION",
        "EXPERIMENT_ENROLLMENT",
        "SUBSCRIBER_ALIAS",
    }
)


# RevenueCat names a handful of users in one event (a TRANSFER's two sides, a few aliases). Far
# more is no real event: each id would cost a provider read and leave a subscriber polled daily.
MAX_USERS_PER_EVENT = 20
MAX_ALIASES_PER_EVENT = 100


class MalformedEvent(TerminalError):
    """A webhook body that is not a RevenueCat event, or holds a field the engine cannot use."""


class UnreadableSubscriber(TerminalError):
    """A ``GET /v1/subscribers`` body the engine cannot turn into facts."""


@dataclass(frozen=True)
class EnvelopeKey:
    """The two fields every stored webhook needs: its id and type."""

    event_id: str
    event_type: str


def envelope_key(body: Any) -> EnvelopeKey:
    """Extract ``event.id`` and ``event.type`` or raise MalformedEvent saying what is missing."""
    if not isinstance(body, dict):
        raise MalformedEvent("body must be a JSON object")
    event = body.get("event")
    if not isinstance(event, dict):
        raise MalformedEvent("body has no 'event' object")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id.strip():
        raise MalformedEvent("event.id is missing or not a string")
    if not isinstance(event_type, str) or not event_type.strip():
        raise MalformedEvent("event.type is missing or not a string")
    if len(event_id) > 200 or len(event_type) > 64:
        raise MalformedEvent("event.id or event.type is too long")
    if not (storable(event_id) and storable(event_type)):
        # JSON allows both; neither can be stored as text (PostgreSQL refuses NUL, and a lone
        # surrogate has no UTF-8), so they would fail the intake instead of being kept
        raise MalformedEvent("event.id or event.type holds a NUL or an unpaired surrogate")
    return EnvelopeKey(event_id, event_type)


def synthesized_transaction_id(customer_id: str, product_id: str, purchased_ms: int | None) -> str:
    """The id of a purchase the provider lists without one: stable across reads, ≤ 255 characters."""
    text = f"{customer_id}:{product_id}:{purchased_ms}"
    if len(text) <= MAX_ID_LENGTH:
        return text
    return "rc-sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----- GET /v1/subscribers --------------------------------------------------------------------

# Fields that change on every read without any purchase changing: left out of the digest so
# that an unchanged customer costs no writes.
_VOLATILE_SUBSCRIBER_FIELDS = ("last_seen", "first_seen", "management_url", "subscriber_attributes", "other_purchases")
_SUBSCRIBER = FieldReader(UnreadableSubscriber)


def parse_subscriber(body: Mapping[str, Any]) -> SubscriberSnapshot:
    """A v1 ``GET /subscribers`` body as a snapshot of ledger observations.

    UnreadableSubscriber (a TerminalError) names the first field the engine cannot use.
    """
    read = _SUBSCRIBER
    top = read.object(body, "body")
    subscriber = read.object(top.get("subscriber"), "subscriber")
    request_ms = read.instant(top.get("request_date_ms"), "request_date_ms")
    if request_ms is None:
        request_ms = read.instant(top.get("request_date"), "request_date")
    if request_ms is None:
        raise read.fail("request_date", "missing: the snapshot cannot be dated")
    customer_id = read.identifier(subscriber.get("original_app_user_id"), "subscriber.original_app_user_id")
    if customer_id is None:
        raise read.fail("subscriber.original_app_user_id", "missing")
    observations: list[TransactionObservation] = []
    unidentified: set[str] = set()
    chain_starts: dict[str, int] = {}
    subscriptions = read.object(subscriber.get("subscriptions"), "subscriber.subscriptions")
    for product_id, entry in sorted(subscriptions.items()):
        path = f"subscriber.subscriptions[{shown(product_id)}]"
        read.identifier(product_id, path)
        sub = read.object(entry, path)
        purchased = read.instant(sub.get("purchase_date"), f"{path}.purchase_date")
        try:
            started = read.instant(sub.get("original_purchase_date"), f"{path}.original_purchase_date")
        except UnreadableSubscriber:
            started = None  # only a hint of earlier periods (engine/history.py): never worth refusing the body
        if started is not None:
            chain_starts[product_id] = started
        tx_id = read.identifier(sub.get("store_transaction_id"), f"{path}.store_transaction_id")
        observations.append(
            TransactionObservation(
                transaction_id=tx_id or synthesized_transaction_id(customer_id, product_id, purchased),
                observed_ms=request_ms,
                product_id=product_id,
                kind="subscription",
                store=read.word(sub.get("store"), f"{path}.store", limit=32) or UNKNOWN,
                is_sandbox=read.flag(sub.get("is_sandbox"), f"{path}.is_sandbox", default=False),
                purchased_ms=purchased,
                period_type=read.word(sub.get("period_type"), f"{path}.period_type", limit=20) or "normal",
                ownership=(
                    read.word(sub.get("ownership_type"), f"{path}.ownership_type", limit=20) or "purchased"
                ).upper(),
                expires_ms=read.instant(sub.get("expires_date"), f"{path}.expires_date"),
                grace_expires_ms=read.instant(
                    sub.get("grace_period_expires_date"), f"{path}.grace_period_expires_date"
                ),
                refunded_ms=read.instant(sub.get("refunded_at"), f"{path}.refunded_at"),
                owner=customer_id,
            )
        )
    non_subscriptions = read.object(subscriber.get("non_subscriptions"), "subscriber.non_subscriptions")
    for product_id, entries in sorted(non_subscriptions.items()):
        product_path = f"subscriber.non_subscriptions[{shown(product_id)}]"
        read.identifier(product_id, product_path)
        for i, entry in enumerate(read.array(entries, product_path)):
            path = f"{product_path}[{i}]"
            purchase = read.object(entry, path)
            purchased = read.instant(purchase.get("purchase_date"), f"{path}.purchase_date")
            tx_id = read.identifier(purchase.get("store_transaction_id"), f"{path}.store_transaction_id")
            tx_id = tx_id or read.identifier(purchase.get("id"), f"{path}.id")
            if tx_id is None:  # listed without an id: never dropped (engine/facts.py matches it)
                tx_id = synthesized_transaction_id(customer_id, product_id, purchased)
                unidentified.add(tx_id)
            observations.append(
                TransactionObservation(
                    transaction_id=tx_id,
                    observed_ms=request_ms,
                    product_id=product_id,
                    kind="non_subscription",
                    store=read.word(purchase.get("store"), f"{path}.store", limit=32) or UNKNOWN,
                    is_sandbox=read.flag(purchase.get("is_sandbox"), f"{path}.is_sandbox", default=False),
                    purchased_ms=purchased,
                    period_type="normal",
                    ownership="PURCHASED",
                    expires_ms=None,
                    grace_expires_ms=None,
                    # Listed means not refunded: RevenueCat drops refunded one-time purchases.
                    refunded_ms=None,
                    owner=customer_id,
                )
            )
    try:
        first_seen = read.instant(subscriber.get("first_seen"), "subscriber.first_seen")
    except UnreadableSubscriber:
        first_seen = None  # only a hint of earlier subscriptions (engine/history.py), as above
    stable = {k: v for k, v in subscriber.items() if k not in _VOLATILE_SUBSCRIBER_FIELDS}
    try:
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    except RecursionError:
        raise read.fail("subscriber", "nested too deep") from None
    entitlements = subscriber.get("entitlements")
    return SubscriberSnapshot(
        customer_id=customer_id,
        request_ms=request_ms,
        observations=tuple(observations),
        subscription_products=frozenset(subscriptions),
        digest=digest,
        entitlements=entitlements if isinstance(entitlements, dict) else {},
        unidentified=frozenset(unidentified),
        chain_starts=chain_starts,
        first_seen_ms=first_seen,
    )


# ----- webhooks ---------------------------------------------------------------------------------

_EVENT = FieldReader(MalformedEvent)


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed webhook: whom it names and, for degraded mode, what it says happened.

    ``timestamp_ms`` is when the event's facts are taken to be observed: its
    ``event_timestamp_ms``, but never later than the webhook was received (a clock far ahead,
    or a sample dated in the year 4466, must not outrank the snapshots read after it).
    """

    event_id: str
    event_type: str
    timestamp_ms: int
    app_user_ids: tuple[str, ...]  # the users to re-read from the provider
    # app_user_id -> customer id (original_app_user_id): only what the event states.
    identities: Mapping[str, str] = field(default_factory=dict)
    observations: tuple[TransactionObservation, ...] = ()
    transferred_from: tuple[str, ...] = ()
    transferred_to: tuple[str, ...] = ()
    environment: str | None = None


def parse_event(body: Any, *, received_ms: int | None = None) -> WebhookEvent:
    """Parse a stored webhook body; ``received_ms``: when it reached the intake (bounds its time).

    MalformedEvent (a TerminalError) names the first field the engine cannot use. Types that
    cannot change access (informational or unknown) name no users and are not read further.
    """
    key = envelope_key(body)
    event: Mapping[str, Any] = body["event"]
    read = _EVENT
    stated_ms = read.instant(event.get("event_timestamp_ms"), "event.event_timestamp_ms") or 0
    timestamp_ms = stated_ms if received_ms is None else min(stated_ms, received_ms)
    event_type = key.event_type
    if event_type not in RECONCILE_EVENT_TYPES:
        return WebhookEvent(key.event_id, event_type, timestamp_ms, app_user_ids=())
    environment = read.text(event.get("environment"), "event.environment", limit=32)
    store = read.word(event.get("store"), "event.store", limit=32)
    if event_type == "TRANSFER":
        sources = read.identifiers(event.get("transferred_from"), "event.transferred_from")
        targets = read.identifiers(event.get("transferred_to"), "event.transferred_to")
        if not sources and not targets:
            raise MalformedEvent("TRANSFER names no users in transferred_from / transferred_to")
        if len(set(sources + targets)) > MAX_USERS_PER_EVENT:
            raise MalformedEvent(
                f"TRANSFER names {len(set(sources + targets))} users; at most {MAX_USERS_PER_EVENT} are read for one event"
            )
        return WebhookEvent(
            key.event_id,
            event_type,
            timestamp_ms,
            app_user_ids=tuple(dict.fromkeys(sources + targets)),
            transferred_from=sources,
            transferred_to=targets,
            environment=environment,
        )
    app_user_id = read.identifier(event.get("app_user_id"), "event.app_user_id")
    if app_user_id is None:
        raise MalformedEvent(f"{event_type} event has no app_user_id")
    customer_id = read.identifier(event.get("original_app_user_id"), "event.original_app_user_id")
    aliases = read.identifiers(event.get("aliases"), "event.aliases")
    if len(aliases) > MAX_ALIASES_PER_EVENT:
        raise MalformedEvent(f"event names {len(aliases)} aliases; at most {MAX_ALIASES_PER_EVENT} are kept")
    identities: dict[str, str] = {}
    if customer_id is not None:  # without it the event does not say whose customer this is
        identities = dict.fromkeys(aliases, customer_id)
        identities.update({app_user_id: customer_id, customer_id: customer_id})
    observation = _event_observation(
        event, event_type=event_type, ts=timestamp_ms, customer_id=customer_id, environment=environment, store=store
    )
    return WebhookEvent(
        key.event_id,
        event_type,
        timestamp_ms,
        app_user_ids=(app_user_id,),
        identities=identities,
        observations=() if observation is None else (observation,),
        environment=environment,
    )


def _event_observation(
    event: Mapping[str, Any],
    *,
    event_type: str,
    ts: int,
    customer_id: str | None,
    environment: str | None,
    store: str | None,
) -> TransactionObservation | None:
    """What the event itself asserts about its transaction, used only when the provider is down.

    Every field is read (and a wrong one refused) even when the event names no transaction.
    """
    read = _EVENT
    tx_id = read.identifier(event.get("transaction_id"), "event.transaction_id")
    product_id = read.identifier(event.get("product_id"), "event.product_id")
    original_tx_id = read.identifier(event.get("original_transaction_id"), "event.original_transaction_id")
    period_type = read.word(event.get("period_type"), "event.period_type", limit=20)
    purchased = read.instant(event.get("purchased_at_ms"), "event.purchased_at_ms")
    expires = read.instant(event.get("expiration_at_ms"), "event.expiration_at_ms")
    grace_expires = read.instant(event.get("grace_period_expiration_at_ms"), "event.grace_period_expiration_at_ms")
    family_shared = read.flag(event.get("is_family_share"), "event.is_family_share", default=False)
    cancel_reason = read.text(event.get("cancel_reason"), "event.cancel_reason", limit=64)
    if tx_id is None or product_id is None:
        return None
    refunded: object = UNKNOWN
    if event_type == "CANCELLATION" and cancel_reason == "CUSTOMER_SUPPORT":
        refunded = ts
    elif event_type == "REFUND_REVERSED":
        refunded = None
    grace: object = UNKNOWN
    if event_type == "BILLING_ISSUE" and grace_expires is not None:
        grace = grace_expires
    elif event_type in {"RENEWAL", "INITIAL_PURCHASE"}:
        grace = None  # a successful charge ends any grace period
    return TransactionObservation(
        transaction_id=tx_id,
        observed_ms=ts,
        product_id=product_id,
        kind="subscription" if expires is not None or store == "promotional" else "non_subscription",
        original_transaction_id=original_tx_id or UNKNOWN,
        store=store or UNKNOWN,
        is_sandbox=(environment or "PRODUCTION").upper() == "SANDBOX",
        purchased_ms=UNKNOWN if purchased is None else purchased,
        period_type=period_type or "normal",
        ownership="FAMILY_SHARED" if family_shared else "PURCHASED",
        expires_ms=expires,
        grace_expires_ms=grace,
        refunded_ms=refunded,
        # Unstated customer: the degraded transaction is owned by no one until the provider says.
        owner=UNKNOWN if customer_id is None else customer_id,
    )
