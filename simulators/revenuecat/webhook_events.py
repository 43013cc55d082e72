"""Webhook bodies in the documented shape (reference/revenuecat.md §1.8).

Every body is the full envelope ``{"api_version": "1.0", "event": {...}}``. Fields RevenueCat
sends but the simulator has no model for (attributes, experiments, offer codes, tax) are present
with neutral values so that the key set matches the official samples.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from simulators.revenuecat.records import OneTimePurchase, SubscriptionPeriod

API_VERSION = "1.0"
_COUNTRY_CODE = "US"
# Apple/Google standard split; RevenueCat reports these as fractions.
_COMMISSION = 0.3
_TAKEHOME = 0.7


@dataclass(frozen=True)
class Subject:
    """Who an event is about: the id the operation named and the customer's identity."""

    app_user_id: str
    original_app_user_id: str
    aliases: list[str]


def envelope(event: dict[str, Any]) -> dict[str, Any]:
    """Wrap an event in the documented body envelope."""
    return {"api_version": API_VERSION, "event": event}


def _environment(is_sandbox: bool) -> str:
    return "SANDBOX" if is_sandbox else "PRODUCTION"


def _money(amount: float) -> float:
    return round(amount, 2)


def _transaction_event(
    event_type: str,
    subject: Subject,
    *,
    now_ms: int,
    app_id: str,
    product_id: str,
    period_type: str,
    purchased_at_ms: int,
    expiration_at_ms: int | None,
    store: str,
    is_sandbox: bool,
    transaction_id: str,
    original_transaction_id: str,
    is_family_share: bool,
    entitlement_ids: list[str],
    price: float,
    currency: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_timestamp_ms": now_ms,
        "product_id": product_id,
        "period_type": period_type.upper(),
        "purchased_at_ms": purchased_at_ms,
        "expiration_at_ms": expiration_at_ms,
        "environment": _environment(is_sandbox),
        "entitlement_id": None,  # deprecated; newer samples send null
        "entitlement_ids": list(entitlement_ids) or None,  # documented as NULL when unmapped
        "presented_offering_id": None,
        "transaction_id": transaction_id,
        "original_transaction_id": original_transaction_id,
        "is_family_share": is_family_share,
        "country_code": _COUNTRY_CODE,
        "app_user_id": subject.app_user_id,
        "aliases": list(subject.aliases),
        "original_app_user_id": subject.original_app_user_id,
        "currency": currency,
        "price": _money(price),
        "price_in_purchased_currency": _money(price),
        "subscriber_attributes": {},
        "store": store.upper(),
        "takehome_percentage": _TAKEHOME,
        "tax_percentage": 0.0,
        "commission_percentage": _COMMISSION,
        "offer_code": None,
        "type": event_type,
        "id": str(uuid.uuid4()),
        "app_id": app_id,
        "experiments": [],
    }
    if store == "promotional":
        del event["app_id"]  # documented: not included when store is PROMOTIONAL
    event.update(extra)
    return envelope(event)


def period_event(
    event_type: str,
    subject: Subject,
    period: SubscriptionPeriod,
    *,
    now_ms: int,
    app_id: str,
    entitlement_ids: list[str],
    price: float,
    **extra: Any,
) -> dict[str, Any]:
    """An event about one subscription period; ``extra`` adds or overrides event fields."""
    promotional = period.store == "promotional"
    fields: dict[str, Any] = {} if promotional else {"renewal_number": period.renewal_number}
    fields.update(extra)
    return _transaction_event(
        event_type,
        subject,
        now_ms=now_ms,
        app_id=app_id,
        product_id=period.product_id,
        period_type="promotional" if promotional else period.period_type,
        purchased_at_ms=period.purchased_at_ms,
        expiration_at_ms=period.effective_expires_at_ms(),
        store=period.store,
        is_sandbox=period.is_sandbox,
        transaction_id=period.store_transaction_id,
        original_transaction_id=period.original_transaction_id,
        is_family_share=period.ownership_type == "FAMILY_SHARED",
        entitlement_ids=entitlement_ids,
        price=price,
        currency=period.currency,
        extra=fields,
    )


def purchase_event(
    event_type: str,
    subject: Subject,
    purchase: OneTimePurchase,
    *,
    now_ms: int,
    app_id: str,
    entitlement_ids: list[str],
    price: float,
    **extra: Any,
) -> dict[str, Any]:
    """An event about one non-subscription purchase (``expiration_at_ms`` is null)."""
    return _transaction_event(
        event_type,
        subject,
        now_ms=now_ms,
        app_id=app_id,
        product_id=purchase.product_id,
        period_type="normal",
        purchased_at_ms=purchase.purchased_at_ms,
        expiration_at_ms=None,
        store=purchase.store,
        is_sandbox=purchase.is_sandbox,
        transaction_id=purchase.store_transaction_id,
        original_transaction_id=purchase.store_transaction_id,
        is_family_share=False,
        entitlement_ids=entitlement_ids,
        price=price,
        currency=purchase.currency,
        extra=extra,
    )


def transfer_event(
    *,
    now_ms: int,
    app_id: str,
    store: str,
    is_sandbox: bool,
    transferred_from: list[str],
    transferred_to: list[str],
) -> dict[str, Any]:
    """A TRANSFER body: exactly the sample's keys, no app_user_id, product or entitlement fields."""
    event: dict[str, Any] = {
        "app_id": app_id,
        "event_timestamp_ms": now_ms,
        "id": str(uuid.uuid4()),
        "store": store.upper(),
        "transferred_from": list(transferred_from),
        "transferred_to": list(transferred_to),
        "type": "TRANSFER",
        "environment": _environment(is_sandbox),
    }
    return envelope(event)
