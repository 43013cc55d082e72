"""REST API v2 objects (reference/revenuecat.md §4) rendered from the simulator's records.

The same records as the v1 body, seen the v2 way: a customer is listed by its
``original_app_user_id``; a subscription is one chain of periods of one product (v2 starts a
new subscription on a paid product change, as the records do; a lapse and resubscription stays
in the chain here, where RevenueCat would start a new one); each period is one transaction
(listed for App Store and Play Store subscriptions only, as v2 does), with the expiry v1 would
report for it; one-time purchases are listed whether refunded or not (``status``), where v1
drops refunded ones. Times are epoch milliseconds. RevenueCat's own ids (``sub…``, ``prod…``,
``entl…``) are derived from the records, so they are stable across requests.

What v2 does not say is not invented: a subscription transaction has no refund field (the spec
allows none), so a refund shows only as the period's shortened ``expiration_date``, as in v1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from simulators.revenuecat.records import APPLE_STORES, Customer, OneTimePurchase, StorePurchase, SubscriptionPeriod

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
TRANSACTION_STORES = APPLE_STORES | {"play_store"}
_COMMISSION = 0.3
_MANAGEMENT_URLS = {
    "app_store": "https://apps.apple.com/account/subscriptions",
    "mac_app_store": "https://apps.apple.com/account/subscriptions",
    "play_store": "https://play.google.com/store/account/subscriptions",
}


class UnknownCursor(ValueError):
    """``starting_after`` names no item of the list."""


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def product_ref(store_identifier: str) -> str:
    """RevenueCat's id for the product sold under ``store_identifier``."""
    return f"prod{_short_hash(store_identifier)}"


def entitlement_ref(lookup_key: str) -> str:
    return f"entl{_short_hash(lookup_key)}"


@dataclass(frozen=True)
class SubscriptionChain:
    """One v2 subscription: a customer's periods of one product sharing an original transaction."""

    customer: Customer
    product_id: str
    periods: tuple[SubscriptionPeriod, ...]  # by purchase time

    @property
    def ref(self) -> str:
        return f"sub{_short_hash(self.periods[0].original_transaction_id + ':' + self.product_id)}"

    @property
    def latest(self) -> SubscriptionPeriod:
        return self.periods[-1]


class CustomerDirectory:
    """Read-only view of the provider's customers, used while the state's lock is held."""

    def __init__(self, by_app_user_id: Mapping[str, Customer], store_purchases: Mapping[str, StorePurchase]):
        self._by_id = by_app_user_id
        self._store_purchases = store_purchases

    def find(self, app_user_id: str) -> Customer | None:
        return self._by_id.get(app_user_id)

    def customers_after(self, starting_after: str | None, limit: int) -> tuple[list[Customer], bool]:
        """Customers in the order their ids were first seen, after the one named (any id it
        ever had keeps its place): (page, whether more follow)."""
        ids = list(self._by_id)  # insertion order: each id where it was first seen
        start = 0
        if starting_after is not None:
            try:
                start = ids.index(starting_after) + 1
            except ValueError:
                raise UnknownCursor(starting_after) from None
        page: list[Customer] = []
        for app_user_id in ids[start:]:
            customer = self._by_id[app_user_id]
            if app_user_id != customer.original_app_user_id:
                continue  # an alias: the customer is listed under its original id
            if len(page) == limit:
                return page, True
            page.append(customer)
        return page, False

    def chains(self) -> Iterator[SubscriptionChain]:
        for customer in self._unique_customers():
            yield from chains_of(customer)

    def chain(self, subscription_ref: str) -> SubscriptionChain | None:
        return next((c for c in self.chains() if c.ref == subscription_ref), None)

    def purchase(self, purchase_ref: str) -> tuple[Customer, OneTimePurchase] | None:
        for customer in self._unique_customers():
            for purchases in customer.one_time_purchases.values():
                for purchase in purchases:
                    if purchase.id == purchase_ref:
                        return customer, purchase
        return None

    def products(self) -> dict[str, tuple[str, int]]:
        """Every store product sold or registered: store identifier -> (type, first seen ms)."""
        seen: dict[str, tuple[str, int]] = {}

        def note(product_id: str, kind: str, at_ms: int) -> None:
            old_kind, old_at = seen.get(product_id, (kind, at_ms))
            seen[product_id] = ("subscription" if "subscription" in (old_kind, kind) else kind, min(old_at, at_ms))

        for customer in self._unique_customers():
            for product_id, periods in customer.subscriptions.items():
                if periods and periods[0].store != "promotional":
                    note(product_id, "subscription", periods[0].purchased_at_ms)
            for product_id, purchases in customer.one_time_purchases.items():
                for purchase in purchases:
                    note(product_id, "one_time", purchase.purchased_at_ms)
        for registration in self._store_purchases.values():
            note(registration.product_id, "subscription" if registration.kind == "subscription" else "one_time", 0)
        return seen

    def _unique_customers(self) -> Iterator[Customer]:
        for app_user_id, customer in self._by_id.items():
            if app_user_id == customer.original_app_user_id:
                yield customer


def chains_of(customer: Customer) -> list[SubscriptionChain]:
    chains: list[SubscriptionChain] = []
    for product_id, periods in sorted(customer.subscriptions.items()):
        by_original: dict[str, list[SubscriptionPeriod]] = {}
        for period in sorted(periods, key=lambda p: p.purchased_at_ms):
            by_original.setdefault(period.original_transaction_id, []).append(period)
        chains.extend(SubscriptionChain(customer, product_id, tuple(ps)) for ps in by_original.values())
    return sorted(chains, key=lambda c: (c.periods[0].purchased_at_ms, c.ref))


def list_object(
    items: Sequence[dict[str, Any]], *, url: str, limit: int, starting_after: str | None, query: Mapping[str, str]
) -> dict[str, Any]:
    """One page of ``items`` (each with an ``id``) after ``starting_after``, as a v2 list."""
    start = 0
    if starting_after is not None:
        ids = [item["id"] for item in items]
        if starting_after not in ids:
            raise UnknownCursor(starting_after)
        start = ids.index(starting_after) + 1
    page = list(items[start : start + limit])
    more = start + limit < len(items)
    return page_object(page, url=url, more=more, query=query)


def page_object(page: Sequence[dict[str, Any]], *, url: str, more: bool, query: Mapping[str, str]) -> dict[str, Any]:
    """``{"object": "list", "items", "next_page", "url"}``; ``next_page`` keeps the query and
    names the last item (encoded once), null on the last page."""
    next_page = None
    if more and page:
        params = {k: v for k, v in query.items() if k != "starting_after"}
        params["starting_after"] = page[-1]["id"]
        next_page = f"{url}?{urlencode(params)}"
    return {"object": "list", "items": list(page), "next_page": next_page, "url": url}


@dataclass(frozen=True)
class Renderer:
    """Renders v2 objects for one project at ``now_ms`` (the simulator's clock)."""

    project_id: str
    app_id: str
    now_ms: int
    entitlements_for: Callable[[str], list[str]]

    def base(self) -> str:
        return f"/v2/projects/{self.project_id}"

    def customer(self, customer: Customer, *, detailed: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "object": "customer",
            "id": customer.original_app_user_id,
            "project_id": self.project_id,
            "first_seen_at": customer.first_seen_ms,
            "last_seen_at": customer.last_seen_ms,
            "last_seen_app_version": None,
            "last_seen_country": None,
            "last_seen_platform": None,
            "last_seen_platform_version": None,
            "experiment": None,
        }
        if detailed:  # only "Get a customer" carries them
            url = f"{self.base()}/customers/{customer.original_app_user_id}/active_entitlements"
            body["active_entitlements"] = page_object(self.active_entitlements(customer), url=url, more=False, query={})
        return body

    def active_entitlements(self, customer: Customer) -> list[dict[str, Any]]:
        """Entitlements some non-refunded purchase or running period grants now (null: lifetime)."""
        best: dict[str, int | None] = {}
        for chain in chains_of(customer):
            end = _access_end(chain.latest)
            if end > self.now_ms:
                for entitlement in self.entitlements_for(chain.product_id):
                    current = best.get(entitlement, 0)
                    best[entitlement] = None if current is None else max(current, end)
        for product_id, purchases in customer.one_time_purchases.items():
            if any(p.refunded_at_ms is None for p in purchases):
                for entitlement in self.entitlements_for(product_id):
                    best[entitlement] = None
        return [
            {"object": "customer.active_entitlement", "entitlement_id": entitlement_ref(e), "expires_at": expires}
            for e, expires in sorted(best.items())
        ]

    def aliases(self, customer: Customer) -> list[dict[str, Any]]:
        # The records keep no alias creation time: the customer's first sighting stands in.
        return [
            {"object": "customer.alias", "id": alias, "created_at": customer.first_seen_ms}
            for alias in sorted(customer.aliases)
        ]

    def entitlement_list(self, product_id: str, url: str) -> dict[str, Any]:
        items = [
            {
                "object": "entitlement",
                "project_id": self.project_id,
                "id": entitlement_ref(name),
                "lookup_key": name,
                "display_name": name,
                "created_at": 0,
            }
            for name in self.entitlements_for(product_id)
        ]
        return page_object(items, url=url, more=False, query={})

    def subscription(self, chain: SubscriptionChain) -> dict[str, Any]:
        latest = chain.latest
        access_end = _access_end(latest)
        expiry = latest.effective_expires_at_ms()
        promotional = latest.store == "promotional"
        if access_end <= self.now_ms:
            status = "expired"
        elif expiry <= self.now_ms:
            status = "in_grace_period"
        elif latest.period_type == "trial":
            status = "trialing"
        else:
            status = "active"
        if latest.auto_resume_at_ms is not None:
            renewal = "will_pause"
        elif promotional or latest.unsubscribe_detected_at_ms is not None or access_end <= self.now_ms:
            renewal = "will_not_renew"
        else:
            renewal = "will_renew"
        gross = sum(p.price for p in chain.periods if p.refunded_at_ms is None)
        url = f"{self.base()}/subscriptions/{chain.ref}/entitlements"
        return {
            "object": "subscription",
            "id": chain.ref,
            "customer_id": chain.customer.original_app_user_id,
            # The records do not keep who first bought a transferred chain.
            "original_customer_id": chain.customer.original_app_user_id,
            "product_id": None if promotional else product_ref(chain.product_id),
            "starts_at": chain.periods[0].purchased_at_ms,
            "current_period_starts_at": latest.purchased_at_ms,
            "current_period_ends_at": expiry,
            "ends_at": expiry,
            "gives_access": access_end > self.now_ms,
            "pending_payment": False,
            "auto_renewal_status": renewal,
            "status": status,
            "total_revenue_in_usd": _revenue(gross),
            "presented_offering_id": None,
            "entitlements": self.entitlement_list(chain.product_id, url),
            "environment": "sandbox" if latest.is_sandbox else "production",
            "store": latest.store,
            "store_subscription_identifier": latest.store_transaction_id,
            "ownership": "family_shared" if latest.ownership_type == "FAMILY_SHARED" else "purchased",
            "pending_changes": None,
            "country": None,
            "management_url": None if access_end <= self.now_ms else _MANAGEMENT_URLS.get(latest.store),
        }

    def transactions(self, chain: SubscriptionChain) -> list[dict[str, Any]]:
        return [
            {
                "object": "subscription_transaction",
                "id": period.store_transaction_id,
                "purchased_at": period.purchased_at_ms,
                "product_store_identifier": period.product_id,
                "expiration_date": period.effective_expires_at_ms(),
                "effective_expiration_date": _access_end(period),
            }
            for period in chain.periods
        ]

    def purchase(self, customer: Customer, purchase: OneTimePurchase) -> dict[str, Any]:
        url = f"{self.base()}/purchases/{purchase.id}/entitlements"
        return {
            "object": "purchase",
            "id": purchase.id,
            "customer_id": customer.original_app_user_id,
            "original_customer_id": customer.original_app_user_id,
            "product_id": product_ref(purchase.product_id),
            "purchased_at": purchase.purchased_at_ms,
            "revenue_in_usd": _revenue(purchase.price),
            "quantity": 1,
            "status": "owned" if purchase.refunded_at_ms is None else "refunded",
            "presented_offering_id": None,
            "entitlements": self.entitlement_list(purchase.product_id, url),
            "environment": "sandbox" if purchase.is_sandbox else "production",
            "store": purchase.store,
            "store_purchase_identifier": purchase.store_transaction_id,
            "ownership": "purchased",
            "country": None,
        }

    def purchases(self, customer: Customer) -> list[dict[str, Any]]:
        every = [p for purchases in customer.one_time_purchases.values() for p in purchases]
        return [self.purchase(customer, p) for p in sorted(every, key=lambda p: (p.purchased_at_ms, p.id))]

    def product(self, store_identifier: str, kind: str, created_ms: int) -> dict[str, Any]:
        return {
            "object": "product",
            "id": product_ref(store_identifier),
            "store_identifier": store_identifier,
            "type": kind,
            "subscription": (
                {"duration": None, "grace_period_duration": None, "trial_duration": None}
                if kind == "subscription"
                else None
            ),
            "one_time": {"is_consumable": None} if kind == "one_time" else None,
            "created_at": created_ms,
            "app_id": self.app_id,
            "display_name": None,
        }


def _access_end(period: SubscriptionPeriod) -> int:
    """The period's expiry extended by grace (a refund ends both)."""
    expiry = period.effective_expires_at_ms()
    grace = period.grace_period_expires_at_ms
    if grace is not None and period.refunded_at_ms is None:
        return max(expiry, grace)
    return expiry


def _revenue(gross: float) -> dict[str, Any]:
    commission = round(gross * _COMMISSION, 2)
    return {
        "currency": "USD",
        "gross": round(gross, 2),
        "commission": commission,
        "tax": 0.0,
        "proceeds": round(gross - commission, 2),
    }
