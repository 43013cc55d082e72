"""The v1 ``GET /v1/subscribers/{id}`` body (reference/revenuecat.md §3) rendered from records.

Dates are ISO-8601 UTC with milliseconds, ``YYYY-MM-DDTHH:MM:SS.mmmZ``, so that a date read
from the API equals the matching webhook ``*_ms`` field exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from simulators.revenuecat.records import APPLE_STORES, Customer, OneTimePurchase, SubscriptionPeriod

# Where RevenueCat sends a customer to manage an active subscription, per store.
_MANAGEMENT_URLS = {
    "app_store": "https://apps.apple.com/account/subscriptions",
    "mac_app_store": "https://apps.apple.com/account/subscriptions",
    "play_store": "https://play.google.com/store/account/subscriptions",
}


def iso_ms(ms: int | None) -> str | None:
    """Epoch ms → ``2024-01-02T03:04:05.678Z``; None stays None."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def _price(amount: float, currency: str) -> dict[str, Any]:
    return {"amount": round(amount, 2), "currency": currency}


def _subscription(period: SubscriptionPeriod) -> dict[str, Any]:
    return {
        "auto_resume_date": iso_ms(period.auto_resume_at_ms),
        "billing_issues_detected_at": iso_ms(period.billing_issues_detected_at_ms),
        "display_name": None,
        "expires_date": iso_ms(period.effective_expires_at_ms()),
        "grace_period_expires_date": iso_ms(period.grace_period_expires_at_ms),
        "is_sandbox": period.is_sandbox,
        "original_purchase_date": iso_ms(period.original_purchased_at_ms),
        "ownership_type": period.ownership_type,
        "period_type": period.period_type,
        "price": _price(period.price, period.currency),
        "purchase_date": iso_ms(period.purchased_at_ms),
        "refunded_at": iso_ms(period.refunded_at_ms),
        "store": period.store,
        "store_transaction_id": period.store_transaction_id,
        "unsubscribe_detected_at": iso_ms(period.unsubscribe_detected_at_ms),
    }


def _non_subscription(purchase: OneTimePurchase) -> dict[str, Any]:
    return {
        "display_name": None,
        "id": purchase.id,
        "is_sandbox": purchase.is_sandbox,
        "price": _price(purchase.price, purchase.currency),
        "purchase_date": iso_ms(purchase.purchased_at_ms),
        "store": purchase.store,
        "store_transaction_id": purchase.store_transaction_id,
    }


def _entitlements(
    latest_periods: list[SubscriptionPeriod],
    purchases: list[OneTimePurchase],
    entitlements_for: Callable[[str], list[str]],
) -> dict[str, Any]:
    """Per entitlement, the purchase with the furthest-out expiry (null = lifetime), expired ones included."""
    # Candidate: (expires_ms or None, grace_ms, product_id, purchased_ms)
    candidates: list[tuple[int | None, int | None, str, int]] = [
        (p.effective_expires_at_ms(), p.grace_period_expires_at_ms, p.product_id, p.purchased_at_ms)
        for p in latest_periods
    ]
    candidates += [(None, None, p.product_id, p.purchased_at_ms) for p in purchases]
    best: dict[str, tuple[int | None, int | None, str, int]] = {}

    def rank(c: tuple[int | None, int | None, str, int]) -> tuple[bool, int, int]:
        return (c[0] is None, c[0] or 0, c[3])

    for candidate in candidates:
        for entitlement in entitlements_for(candidate[2]):
            if entitlement not in best or rank(candidate) > rank(best[entitlement]):
                best[entitlement] = candidate
    return {
        entitlement: {
            "expires_date": iso_ms(expires),
            "grace_period_expires_date": iso_ms(grace),
            "product_identifier": product_id,
            "purchase_date": iso_ms(purchased),
        }
        for entitlement, (expires, grace, product_id, purchased) in sorted(best.items())
    }


def subscriber_body(customer: Customer, *, now_ms: int, entitlements_for: Callable[[str], list[str]]) -> dict[str, Any]:
    """The full v1 response body for ``customer`` as seen at ``now_ms`` (the request date)."""
    latest = {product: periods[-1] for product, periods in sorted(customer.subscriptions.items()) if periods}
    # RevenueCat drops refunded one-time purchases from CustomerInfo.
    listed = {
        product: [p for p in purchases if p.refunded_at_ms is None]
        for product, purchases in sorted(customer.one_time_purchases.items())
    }
    listed = {product: purchases for product, purchases in listed.items() if purchases}
    active_paid = [p for p in latest.values() if p.store != "promotional" and p.effective_expires_at_ms() > now_ms]
    management_url = None
    if active_paid:
        management_url = _MANAGEMENT_URLS.get(max(active_paid, key=SubscriptionPeriod.effective_expires_at_ms).store)
    # original_purchase_date / original_application_version come from the Apple receipt: iOS only.
    apple_starts = [p.original_purchased_at_ms for p in latest.values() if p.store in APPLE_STORES]
    apple_starts += [p.purchased_at_ms for ps in listed.values() for p in ps if p.store in APPLE_STORES]
    return {
        "request_date": iso_ms(now_ms),
        "request_date_ms": now_ms,
        "subscriber": {
            "entitlements": _entitlements(
                list(latest.values()), [p for ps in listed.values() for p in ps], entitlements_for
            ),
            "first_seen": iso_ms(customer.first_seen_ms),
            "last_seen": iso_ms(customer.last_seen_ms),
            "management_url": management_url,
            "non_subscriptions": {product: [_non_subscription(p) for p in ps] for product, ps in listed.items()},
            "original_app_user_id": customer.original_app_user_id,
            "original_application_version": "1.0" if apple_starts else None,
            "original_purchase_date": iso_ms(min(apple_starts)) if apple_starts else None,
            "other_purchases": {},
            "subscriptions": {product: _subscription(period) for product, period in latest.items()},
            "subscriber_attributes": {},
        },
    }
