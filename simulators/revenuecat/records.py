"""What the simulated provider remembers: customers, subscription periods, one-time purchases.

Plain mutable records; ``ProviderState`` owns them and guards them with its lock.
Times are epoch milliseconds throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 86_400_000

# Lowercase store names as the v1 API spells them (reference/revenuecat.md §3); webhooks upper-case them.
STORES = frozenset(
    {
        "app_store",
        "mac_app_store",
        "play_store",
        "amazon",
        "stripe",
        "promotional",
        "roku",
        "paddle",
        "rc_billing",
        "test_store",
    }
)
APPLE_STORES = frozenset({"app_store", "mac_app_store"})
PERIOD_TYPES = frozenset({"normal", "trial", "intro"})
# X-Platform values accepted by POST /v1/receipts and the store each one records purchases in.
PLATFORM_STORES = {
    "ios": "app_store",
    "macos": "mac_app_store",
    "uikitformac": "mac_app_store",
    "android": "play_store",
    "amazon": "amazon",
    "stripe": "stripe",
    "roku": "roku",
    "paddle": "paddle",
}
ANONYMOUS_PREFIX = "$RCAnonymousID:"
PROMO_PREFIX = "rc_promo_"


@dataclass
class SubscriptionPeriod:
    """One period of a subscription, i.e. one store transaction (or one promotional grant)."""

    product_id: str
    store_transaction_id: str
    original_transaction_id: str
    purchased_at_ms: int
    expires_at_ms: int
    original_purchased_at_ms: int
    period_ms: int  # billing period length; kept apart because expire/change cut expires_at_ms short
    period_type: str  # normal | trial | intro
    store: str
    is_sandbox: bool
    ownership_type: str  # PURCHASED | FAMILY_SHARED
    price: float
    currency: str
    renewal_number: int  # 1 for the first period of a chain; a trial conversion counts as a renewal
    grace_period_expires_at_ms: int | None = None
    refunded_at_ms: int | None = None
    unsubscribe_detected_at_ms: int | None = None
    billing_issues_detected_at_ms: int | None = None
    auto_resume_at_ms: int | None = None

    def effective_expires_at_ms(self) -> int:
        """The expiry the provider reports: a refund ends the period at the refund time.

        Derived rather than stored so that reversing the refund restores the original expiry.
        """
        if self.refunded_at_ms is not None:
            return min(self.expires_at_ms, self.refunded_at_ms)
        return self.expires_at_ms


@dataclass
class OneTimePurchase:
    """A non-subscription (non-renewing, consumable or non-consumable) purchase."""

    id: str  # RevenueCat's own id for the purchase
    product_id: str
    store_transaction_id: str
    purchased_at_ms: int
    store: str
    is_sandbox: bool
    price: float
    currency: str
    # Refunded purchases vanish from the v1 body but stay here so the refund can be reversed.
    refunded_at_ms: int | None = None


@dataclass
class Customer:
    """One provider customer; ``aliases`` holds every app_user_id that resolves to it."""

    original_app_user_id: str
    first_seen_ms: int
    last_seen_ms: int
    aliases: set[str] = field(default_factory=set)
    subscriptions: dict[str, list[SubscriptionPeriod]] = field(default_factory=dict)
    one_time_purchases: dict[str, list[OneTimePurchase]] = field(default_factory=dict)

    def has_purchases(self) -> bool:
        return any(self.subscriptions.values()) or any(self.one_time_purchases.values())

    def is_anonymous(self) -> bool:
        """True when every id of the customer is an SDK-generated anonymous id."""
        return all(alias.startswith(ANONYMOUS_PREFIX) for alias in self.aliases)


@dataclass
class StorePurchase:
    """A store purchase token registered by a test, waiting to be posted to ``/v1/receipts``."""

    fetch_token: str
    platform: str
    product_id: str
    kind: str  # subscription | non_renewing
    status: str  # purchased | pending | invalid
    transaction_id: str | None
    is_sandbox: bool
    period_ms: int
    owner: str | None = None  # an app_user_id of the customer holding it once recorded


def promotional_entitlement(product_id: str) -> str | None:
    """The entitlement of a ``rc_promo_<entitlement>_<duration>`` product, else None."""
    if not product_id.startswith(PROMO_PREFIX):
        return None
    entitlement, _, duration = product_id[len(PROMO_PREFIX) :].rpartition("_")
    return entitlement if entitlement and duration else None
