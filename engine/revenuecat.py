"""RevenueCat's shapes turned into ledger facts: v1 subscriber bodies and webhook events. Pure.

Shapes: ../shared/reference/revenuecat.md §1 (webhooks) and §3 (``GET /v1/subscribers``).
Unknown fields are ignored (RevenueCat adds fields without versioning); missing optional
fields are tolerated (several official samples lack fields the docs call common).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.errors import TerminalError
from engine.facts import UNKNOWN, SubscriberSnapshot, TransactionObservation

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
    """A webhook body that is not a RevenueCat event."""


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
    if not (_storable(event_id) and _storable(event_type)):
        # JSON allows both; neither can be stored as text (PostgreSQL refuses NUL, and a lone
        # surrogate has no UTF-8), so they would fail the intake instead of being kept
        raise MalformedEvent("event.id or event.type holds a NUL or an unpaired surrogate")
    return EnvelopeKey(event_id, event_type)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_instant_ms(value: Any) -> int | None:
    """ISO-8601 (``...Z``, with or without fraction) or epoch ms → epoch ms; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise ValueError(f"time without zone: {value!r}")
        return round(dt.timestamp() * 1000)
    raise ValueError(f"not a time: {value!r}")


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)  # store_transaction_id may arrive as a number (spec example)


# Fields that change on every read without any purchase changing: left out of the digest so
# that an unchanged customer costs no writes.
_VOLATILE_SUBSCRIBER_FIELDS = ("last_seen", "first_seen", "management_url", "subscriber_attributes", "other_purchases")


def parse_subscriber(body: Mapping[str, Any]) -> SubscriberSnapshot:
    """A v1 ``GET /subscribers`` body as a snapshot of ledger observations."""
    try:
        subscriber = body["subscriber"]
        request_ms = body.get("request_date_ms")
        request_ms = int(request_ms) if request_ms is not None else parse_instant_ms(body["request_date"])
        customer_id = str(subscriber["original_app_user_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TerminalError(f"provider answered an unexpected subscriber shape: {exc!r}") from None
    assert request_ms is not None
    observations: list[TransactionObservation] = []
    subscriptions = subscriber.get("subscriptions") or {}
    for product_id, sub in sorted(subscriptions.items()):
        purchased = parse_instant_ms(sub.get("purchase_date"))
        tx_id = _str(sub.get("store_transaction_id")) or f"{customer_id}:{product_id}:{purchased}"
        observations.append(
            TransactionObservation(
                transaction_id=tx_id,
                observed_ms=request_ms,
                product_id=product_id,
                kind="subscription",
                store=(sub.get("store") or "").lower() or UNKNOWN,
                is_sandbox=bool(sub.get("is_sandbox", False)),
                purchased_ms=purchased,
                period_type=(sub.get("period_type") or "normal").lower(),
                ownership=(sub.get("ownership_type") or "PURCHASED").upper(),
                expires_ms=parse_instant_ms(sub.get("expires_date")),
                grace_expires_ms=parse_instant_ms(sub.get("grace_period_expires_date")),
                refunded_ms=parse_instant_ms(sub.get("refunded_at")),
                owner=customer_id,
            )
        )
    non_subscriptions = subscriber.get("non_subscriptions") or {}
    for product_id, purchases in sorted(non_subscriptions.items()):
        for purchase in purchases or []:
            tx_id = _str(purchase.get("store_transaction_id")) or _str(purchase.get("id"))
            if tx_id is None:
                continue
            observations.append(
                TransactionObservation(
                    transaction_id=tx_id,
                    observed_ms=request_ms,
                    product_id=product_id,
                    kind="non_subscription",
                    store=(purchase.get("store") or "").lower() or UNKNOWN,
                    is_sandbox=bool(purchase.get("is_sandbox", False)),
                    purchased_ms=parse_instant_ms(purchase.get("purchase_date")),
                    period_type="normal",
                    ownership="PURCHASED",
                    expires_ms=None,
                    grace_expires_ms=None,
                    # Listed means not refunded: RevenueCat drops refunded one-time purchases.
                    refunded_ms=None,
                    owner=customer_id,
                )
            )
    stable = {k: v for k, v in subscriber.items() if k not in _VOLATILE_SUBSCRIBER_FIELDS}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    return SubscriberSnapshot(
        customer_id=customer_id,
        request_ms=request_ms,
        observations=tuple(observations),
        subscription_products=frozenset(subscriptions),
        digest=digest,
        entitlements=subscriber.get("entitlements") or {},
    )


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed webhook: whom it names and, for degraded mode, what it says happened."""

    event_id: str
    event_type: str
    timestamp_ms: int
    app_user_ids: tuple[str, ...]  # the users to re-read from the provider
    # app_user_id -> customer id (original_app_user_id), from app_user_id/aliases.
    identities: Mapping[str, str] = field(default_factory=dict)
    observations: tuple[TransactionObservation, ...] = ()
    transferred_from: tuple[str, ...] = ()
    transferred_to: tuple[str, ...] = ()
    environment: str | None = None


def parse_event(body: Mapping[str, Any]) -> WebhookEvent:
    """Parse a stored webhook body (already known to have id and type)."""
    key = envelope_key(body)
    event = body["event"]
    try:
        timestamp_ms = int(event.get("event_timestamp_ms") or 0)
    except (TypeError, ValueError):
        raise MalformedEvent("event.event_timestamp_ms is not an integer") from None
    event_type = key.event_type
    if event_type == "TRANSFER":
        sources = tuple(str(u) for u in event.get("transferred_from") or [] if u)
        targets = tuple(str(u) for u in event.get("transferred_to") or [] if u)
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
            environment=event.get("environment"),
        )
    app_user_id = event.get("app_user_id")
    if not isinstance(app_user_id, str) or not app_user_id:
        if event_type in INFORMATIONAL_EVENT_TYPES:
            return WebhookEvent(key.event_id, event_type, timestamp_ms, app_user_ids=())
        raise MalformedEvent(f"{event_type} event has no app_user_id")
    customer_id = str(event.get("original_app_user_id") or app_user_id)
    identities = {app_user_id: customer_id, customer_id: customer_id}
    aliases = event.get("aliases") or []
    if isinstance(aliases, list) and len(aliases) > MAX_ALIASES_PER_EVENT:
        raise MalformedEvent(f"event names {len(aliases)} aliases; at most {MAX_ALIASES_PER_EVENT} are kept")
    for alias in aliases if isinstance(aliases, list) else []:
        if isinstance(alias, str) and alias:
            identities[alias] = customer_id
    return WebhookEvent(
        key.event_id,
        event_type,
        timestamp_ms,
        app_user_ids=(app_user_id,),
        identities=identities,
        observations=_event_observations(event, event_type, timestamp_ms, customer_id),
        environment=event.get("environment"),
    )


def _event_observations(
    event: Mapping[str, Any], event_type: str, ts: int, customer_id: str
) -> tuple[TransactionObservation, ...]:
    """What the event itself asserts about its transaction, used only when the provider is down."""
    tx_id = _str(event.get("transaction_id"))
    product_id = event.get("product_id")
    if not tx_id or not product_id or event_type not in RECONCILE_EVENT_TYPES:
        return ()
    store = (event.get("store") or "").lower()
    expires = event.get("expiration_at_ms")
    kind = "subscription" if expires is not None or store == "promotional" else "non_subscription"
    refunded: object = UNKNOWN
    if event_type == "CANCELLATION" and event.get("cancel_reason") == "CUSTOMER_SUPPORT":
        refunded = ts
    elif event_type == "REFUND_REVERSED":
        refunded = None
    grace: object = UNKNOWN
    if event_type == "BILLING_ISSUE" and event.get("grace_period_expiration_at_ms") is not None:
        grace = int(event["grace_period_expiration_at_ms"])
    elif event_type in {"RENEWAL", "INITIAL_PURCHASE"}:
        grace = None  # a successful charge ends any grace period
    return (
        TransactionObservation(
            transaction_id=tx_id,
            observed_ms=ts,
            product_id=str(product_id),
            kind=kind,
            original_transaction_id=_str(event.get("original_transaction_id")) or UNKNOWN,
            store=store or UNKNOWN,
            is_sandbox=(event.get("environment") or "PRODUCTION").upper() == "SANDBOX",
            purchased_ms=int(event["purchased_at_ms"]) if event.get("purchased_at_ms") is not None else UNKNOWN,
            period_type=(event.get("period_type") or "NORMAL").lower(),
            ownership="FAMILY_SHARED" if event.get("is_family_share") else "PURCHASED",
            expires_ms=int(expires) if expires is not None else None,
            grace_expires_ms=grace,
            refunded_ms=refunded,
            owner=customer_id,
        ),
    )
