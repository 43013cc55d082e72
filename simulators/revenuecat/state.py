"""The simulated RevenueCat provider: customers, their purchases, and the operations that change them.

Pure Python (no Flask). Every operation mutates the state under one lock and returns the webhook
body RevenueCat would send for it (reference/revenuecat.md §1.8); listeners registered with
``add_listener`` (e.g. an auto-delivering server) are called with that body after the lock is
released, so a listener may call back into the state or the HTTP server.

Time: operations take ``now_ms`` (epoch ms); when omitted they use ``now_ms()``, the wall clock
plus ``clock_offset_ms``, which also dates ``subscriber()`` answers (``request_date``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

from simulators.revenuecat.customer_info import subscriber_body
from simulators.revenuecat.customers_v2 import CustomerDirectory
from simulators.revenuecat.records import (
    APPLE_STORES,
    DAY_MS,
    PERIOD_TYPES,
    PLATFORM_STORES,
    STORES,
    Customer,
    OneTimePurchase,
    StorePurchase,
    SubscriptionPeriod,
    promotional_entitlement,
)
from simulators.revenuecat.webhook_events import Subject, period_event, purchase_event, transfer_event

DEFAULT_PRICE = 9.99
DEFAULT_ENTITLEMENT = "pro"
EXPIRATION_REASONS = frozenset(
    {
        "UNSUBSCRIBE",
        "BILLING_ERROR",
        "DEVELOPER_INITIATED",
        "PRICE_INCREASE",
        "CUSTOMER_SUPPORT",
        "UNKNOWN",
        "SUBSCRIPTION_PAUSED",
    }
)

# RevenueCat backend error codes (purchases-ios BackendErrorCode) used by POST /v1/receipts.
ERROR_INVALID_PLATFORM = 7000
ERROR_INVALID_RECEIPT = 7103
ERROR_GOOGLE_PRODUCT_ID = 7106
ERROR_EMPTY_APP_USER_ID = 7220
ERROR_BAD_REQUEST = 7226

Listener = Callable[[dict[str, Any]], None]
R = TypeVar("R", SubscriptionPeriod, OneTimePurchase)


class SimulatorError(Exception):
    """An operation the provider would refuse, or one that makes no sense in the current state."""


@dataclass(frozen=True)
class Fault:
    """One injected failure for the next provider API request."""

    status: int
    retry_after_s: float | None


class ReceiptResult(NamedTuple):
    """What ``POST /v1/receipts`` answers, plus the webhook bodies the post produced."""

    status: int
    body: dict[str, Any]
    events: list[dict[str, Any]]


def _check_store(store: str) -> None:
    if store not in STORES or store == "promotional":
        raise SimulatorError(f"unsupported store {store!r} (use grant_promotional for promotional grants)")


def _check_subscription_terms(*, store: str, period_ms: int, period_type: str, family_shared: bool) -> None:
    """Refuse impossible subscriptions before anything is created."""
    _check_store(store)
    if period_type not in PERIOD_TYPES:
        raise SimulatorError(f"period_type must be one of {sorted(PERIOD_TYPES)}")
    if family_shared and store not in APPLE_STORES:
        raise SimulatorError("family sharing exists only on Apple stores")
    if period_ms <= 0:
        raise SimulatorError("period_ms must be positive")


def _take(by_product: dict[str, list[R]], matches: Callable[[R], bool]) -> dict[str, list[R]]:
    """Remove the matching records from ``by_product`` (dropping emptied products) and return them."""
    taken: dict[str, list[R]] = {}
    for product_id, records in list(by_product.items()):
        hits = [r for r in records if matches(r)]
        if not hits:
            continue
        taken[product_id] = hits
        kept = [r for r in records if not matches(r)]
        if kept:
            by_product[product_id] = kept
        else:
            del by_product[product_id]
    return taken


def _receipt_error(code: int, message: str) -> ReceiptResult:
    return ReceiptResult(400, {"code": code, "message": message}, [])


class ProviderState:
    """Thread-safe state of a RevenueCat-like provider.

    ``entitlements_by_product`` maps product ids to entitlement ids; when omitted every product
    grants ``"pro"``; when given, unlisted products grant nothing. Promotional products
    (``rc_promo_<entitlement>_<duration>``) always grant their entitlement. ``prices_by_product``
    defaults to 9.99 per product. ``id_seed`` keeps transaction ids of two simulators apart.
    """

    # Operations the admin HTTP API may call by name (POST /_sim/<operation>).
    OPERATIONS = (
        "purchase_subscription",
        "renew",
        "cancel",
        "uncancel",
        "billing_issue",
        "expire",
        "pause",
        "change_product",
        "purchase_non_renewing",
        "grant_promotional",
        "refund",
        "reverse_refund",
        "transfer",
        "alias",
        "register_store_purchase",
    )

    def __init__(
        self,
        *,
        entitlements_by_product: Mapping[str, Sequence[str]] | None = None,
        prices_by_product: Mapping[str, float] | None = None,
        currency: str = "USD",
        app_id: str = "app_sim",
        id_seed: int = 0,
    ) -> None:
        self._lock = threading.RLock()
        self._entitlements_by_product = (
            None if entitlements_by_product is None else {k: list(v) for k, v in entitlements_by_product.items()}
        )
        self._prices = dict(prices_by_product or {})
        self.currency = currency
        self.app_id = app_id
        self._id_seed = id_seed
        self._serial = 0
        self._customers: dict[str, Customer] = {}  # every alias -> its customer
        self._store_purchases: dict[str, StorePurchase] = {}  # fetch_token -> registration
        self._listeners: list[Listener] = []
        self.clock_offset_ms = 0
        # Fault injection and request accounting, read and written by the HTTP server.
        self._faults: deque[Fault] = deque()
        self.latency_ms = 0
        self.down = False
        self.request_count = 0
        self.request_log: list[tuple[str, str, int]] = []  # (method, path, wall-clock epoch ms)

    # ----- clock -------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The simulator's "now": wall clock plus ``clock_offset_ms``."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance_clock(self, ms: int) -> int:
        """Move the simulator's clock forward by ``ms`` (negative moves it back); returns the new now."""
        with self._lock:
            self.clock_offset_ms += int(ms)
            return self.now_ms()

    def _now(self, now_ms: int | None) -> int:
        return self.now_ms() if now_ms is None else int(now_ms)

    # ----- catalogue ---------------------------------------------------------------------

    def entitlements_for(self, product_id: str) -> list[str]:
        """The entitlement ids a product grants."""
        promo = promotional_entitlement(product_id)
        if promo is not None:
            return [promo]
        if self._entitlements_by_product is None:
            return [DEFAULT_ENTITLEMENT]
        return list(self._entitlements_by_product.get(product_id, []))

    def price_of(self, product_id: str) -> float:
        """The list price of a product (what INITIAL_PURCHASE and RENEWAL charge)."""
        return self._prices.get(product_id, DEFAULT_PRICE)

    # ----- listeners ---------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(body)`` with every webhook body an operation produces."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(body)
        return body

    # ----- identities --------------------------------------------------------------------

    def _find(self, app_user_id: str) -> Customer | None:
        return self._customers.get(app_user_id)

    def _require(self, app_user_id: str) -> Customer:
        customer = self._customers.get(app_user_id)
        if customer is None:
            raise SimulatorError(f"unknown app_user_id {app_user_id!r}")
        return customer

    def _get_or_create(self, app_user_id: str, now: int) -> tuple[Customer, bool]:
        if not isinstance(app_user_id, str) or not app_user_id:
            raise SimulatorError("app_user_id must be a non-empty string")
        customer = self._customers.get(app_user_id)
        if customer is not None:
            return customer, False
        customer = Customer(
            original_app_user_id=app_user_id, first_seen_ms=now, last_seen_ms=now, aliases={app_user_id}
        )
        self._customers[app_user_id] = customer
        return customer, True

    def _touch(self, app_user_id: str, now: int, *, create: bool = False) -> Customer:
        customer = self._get_or_create(app_user_id, now)[0] if create else self._require(app_user_id)
        customer.last_seen_ms = max(customer.last_seen_ms, now)
        return customer

    def _subject(self, customer: Customer, app_user_id: str) -> Subject:
        return Subject(app_user_id, customer.original_app_user_id, sorted(customer.aliases))

    def aliases_of(self, app_user_id: str) -> list[str]:
        """Every app_user_id of the customer ``app_user_id`` resolves to (sorted); [] if unknown."""
        with self._lock:
            customer = self._find(app_user_id)
            return sorted(customer.aliases) if customer else []

    def _merge_customers(self, one: Customer, other: Customer) -> Customer:
        """Fold the customer seen later into the one seen first (whose original id stays); returns it."""
        survivor, absorbed = (one, other) if one.first_seen_ms <= other.first_seen_ms else (other, one)
        self._move_purchases(absorbed, survivor)
        survivor.aliases |= absorbed.aliases
        for alias in absorbed.aliases:
            self._customers[alias] = survivor
        survivor.last_seen_ms = max(survivor.last_seen_ms, absorbed.last_seen_ms)
        return survivor

    # ----- ids ---------------------------------------------------------------------------

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _new_transaction_id(self, store: str) -> str:
        """A fresh store transaction id shaped like the store's own (deterministic per seed)."""
        n, seed = self._next_serial(), self._id_seed
        if store in APPLE_STORES:
            return str(100_000_000_000_000 + seed * 1_000_000_000 + n)
        if store == "play_store":
            return f"GPA.{3300 + seed:04d}-0000-0000-{n:05d}"
        if store == "promotional":
            return hashlib.md5(f"promo:{seed}:{n}".encode()).hexdigest()
        return f"{store}_{seed}_{n:08d}"

    def _renewal_transaction_id(self, previous: SubscriptionPeriod) -> str:
        if previous.store == "play_store":
            # Play order ids of renewals are the first order id plus "..0", "..1", ...
            base, _, suffix = previous.store_transaction_id.partition("..")
            return f"{base}..{int(suffix) + 1 if suffix.isdigit() else 0}"
        return self._new_transaction_id(previous.store)

    # ----- purchases ---------------------------------------------------------------------

    def _latest(self, customer: Customer, product_id: str) -> SubscriptionPeriod:
        periods = customer.subscriptions.get(product_id)
        if not periods:
            raise SimulatorError(f"{customer.original_app_user_id!r} has no subscription to {product_id!r}")
        return periods[-1]

    def _latest_renewable(self, customer: Customer, product_id: str) -> SubscriptionPeriod:
        latest = self._latest(customer, product_id)
        if latest.store == "promotional":
            raise SimulatorError("promotional grants do not renew")
        return latest

    def _start_subscription(
        self,
        customer: Customer,
        product_id: str,
        *,
        store: str,
        period_ms: int,
        period_type: str,
        sandbox: bool,
        family_shared: bool,
        now: int,
        transaction_id: str | None = None,
    ) -> SubscriptionPeriod:
        txn = transaction_id or self._new_transaction_id(store)
        # Trials and family-shared access earn nothing.
        price = 0.0 if period_type == "trial" or family_shared else self.price_of(product_id)
        period = SubscriptionPeriod(
            product_id=product_id,
            store_transaction_id=txn,
            original_transaction_id=txn,
            purchased_at_ms=now,
            expires_at_ms=now + period_ms,
            original_purchased_at_ms=now,
            period_ms=period_ms,
            period_type=period_type,
            store=store,
            is_sandbox=sandbox,
            ownership_type="FAMILY_SHARED" if family_shared else "PURCHASED",
            price=price,
            currency=self.currency,
            renewal_number=1,
        )
        customer.subscriptions.setdefault(product_id, []).append(period)
        return period

    def _add_one_time_purchase(
        self,
        customer: Customer,
        product_id: str,
        *,
        store: str,
        sandbox: bool,
        now: int,
        transaction_id: str | None = None,
    ) -> OneTimePurchase:
        serial = self._next_serial()
        purchase = OneTimePurchase(
            id=hashlib.sha1(f"purchase:{self._id_seed}:{serial}".encode()).hexdigest()[:10],
            product_id=product_id,
            store_transaction_id=transaction_id or self._new_transaction_id(store),
            purchased_at_ms=now,
            store=store,
            is_sandbox=sandbox,
            price=self.price_of(product_id),
            currency=self.currency,
        )
        customer.one_time_purchases.setdefault(product_id, []).append(purchase)
        return purchase

    def _find_transaction(self, customer: Customer, transaction_id: str) -> SubscriptionPeriod | OneTimePurchase:
        for periods in customer.subscriptions.values():
            for period in periods:
                if period.store_transaction_id == transaction_id:
                    return period
        for purchases in customer.one_time_purchases.values():
            for purchase in purchases:
                if purchase.store_transaction_id == transaction_id:
                    return purchase
        raise SimulatorError(f"{customer.original_app_user_id!r} has no transaction {transaction_id!r}")

    def _move_purchases(
        self, source: Customer, target: Customer, *, transaction_id: str | None = None
    ) -> list[SubscriptionPeriod | OneTimePurchase]:
        """Move all purchases, or one transaction chain, from ``source`` to ``target``."""
        moved: list[SubscriptionPeriod | OneTimePurchase] = []
        periods = _take(source.subscriptions, lambda p: transaction_id in (None, p.original_transaction_id))
        for product_id, taken in periods.items():
            merged = target.subscriptions.setdefault(product_id, [])
            merged.extend(taken)
            merged.sort(key=lambda p: p.purchased_at_ms)  # the last period is the one the API shows
            moved.extend(taken)
        purchases = _take(source.one_time_purchases, lambda p: transaction_id in (None, p.store_transaction_id))
        for product_id, taken_purchases in purchases.items():
            target.one_time_purchases.setdefault(product_id, []).extend(taken_purchases)
            moved.extend(taken_purchases)
        return moved

    def _event(
        self,
        event_type: str,
        customer: Customer,
        app_user_id: str,
        record: SubscriptionPeriod | OneTimePurchase,
        now: int,
        *,
        price: float = 0.0,
        **extra: Any,
    ) -> dict[str, Any]:
        """The webhook body about one transaction; events that move no money carry price 0, as in the samples."""
        subject = self._subject(customer, app_user_id)
        entitlement_ids = self.entitlements_for(record.product_id)
        if isinstance(record, SubscriptionPeriod):
            return period_event(
                event_type,
                subject,
                record,
                now_ms=now,
                app_id=self.app_id,
                entitlement_ids=entitlement_ids,
                price=price,
                **extra,
            )
        return purchase_event(
            event_type,
            subject,
            record,
            now_ms=now,
            app_id=self.app_id,
            entitlement_ids=entitlement_ids,
            price=price,
            **extra,
        )

    # ----- operations (each returns the webhook body it produced) -----------------------

    def purchase_subscription(
        self,
        app_user_id: str,
        product_id: str,
        *,
        period_ms: int = 30 * DAY_MS,
        period_type: str = "normal",
        store: str = "app_store",
        sandbox: bool = False,
        family_shared: bool = False,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """Start a new subscription (new original transaction) → INITIAL_PURCHASE."""
        _check_subscription_terms(
            store=store, period_ms=period_ms, period_type=period_type, family_shared=family_shared
        )
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now, create=True)
            period = self._start_subscription(
                customer,
                product_id,
                store=store,
                period_ms=period_ms,
                period_type=period_type,
                sandbox=sandbox,
                family_shared=family_shared,
                now=now,
            )
            body = self._event("INITIAL_PURCHASE", customer, app_user_id, period, now, price=period.price)
        return self._emit(body)

    def renew(self, app_user_id: str, product_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """Charge the next period → RENEWAL.

        The period starts at the previous expiry, or now if that has passed (a lapse or a
        recovery from a billing issue); billing issue, grace, pause and unsubscribe are cleared
        because the new period carries none. A trial renewing sets ``is_trial_conversion``.
        """
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest_renewable(customer, product_id)
            start = max(latest.expires_at_ms, now)
            family = latest.ownership_type == "FAMILY_SHARED"
            period = SubscriptionPeriod(
                product_id=product_id,
                store_transaction_id=self._renewal_transaction_id(latest),
                original_transaction_id=latest.original_transaction_id,
                purchased_at_ms=start,
                expires_at_ms=start + latest.period_ms,
                original_purchased_at_ms=latest.original_purchased_at_ms,
                period_ms=latest.period_ms,
                period_type="normal",
                store=latest.store,
                is_sandbox=latest.is_sandbox,
                ownership_type=latest.ownership_type,
                price=0.0 if family else self.price_of(product_id),
                currency=self.currency,
                renewal_number=latest.renewal_number + 1,
            )
            customer.subscriptions[product_id].append(period)
            body = self._event(
                "RENEWAL",
                customer,
                app_user_id,
                period,
                now,
                price=period.price,
                is_trial_conversion=latest.period_type == "trial",
            )
        return self._emit(body)

    def cancel(self, app_user_id: str, product_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """Turn auto-renew off → CANCELLATION (UNSUBSCRIBE); access continues until expiry."""
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest_renewable(customer, product_id)
            if latest.unsubscribe_detected_at_ms is not None:
                raise SimulatorError(f"{product_id!r} is already cancelled")
            if latest.effective_expires_at_ms() <= now:
                raise SimulatorError(f"{product_id!r} has already expired")
            latest.unsubscribe_detected_at_ms = now
            body = self._event("CANCELLATION", customer, app_user_id, latest, now, cancel_reason="UNSUBSCRIBE")
        return self._emit(body)

    def uncancel(self, app_user_id: str, product_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """Turn auto-renew back on before expiry → UNCANCELLATION."""
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest_renewable(customer, product_id)
            if latest.unsubscribe_detected_at_ms is None:
                raise SimulatorError(f"{product_id!r} is not cancelled")
            if latest.effective_expires_at_ms() <= now:
                raise SimulatorError(f"{product_id!r} has already expired")
            latest.unsubscribe_detected_at_ms = None
            body = self._event("UNCANCELLATION", customer, app_user_id, latest, now)
        return self._emit(body)

    def billing_issue(
        self, app_user_id: str, product_id: str, *, grace_ms: int = 16 * DAY_MS, now_ms: int | None = None
    ) -> dict[str, Any]:
        """A renewal charge failed → BILLING_ISSUE; grace runs to expiry + ``grace_ms`` (0: no grace)."""
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest_renewable(customer, product_id)
            latest.billing_issues_detected_at_ms = now
            latest.grace_period_expires_at_ms = latest.expires_at_ms + grace_ms if grace_ms > 0 else None
            body = self._event(
                "BILLING_ISSUE",
                customer,
                app_user_id,
                latest,
                now,
                grace_period_expiration_at_ms=latest.grace_period_expires_at_ms,
            )
        return self._emit(body)

    def expire(
        self, app_user_id: str, product_id: str, *, reason: str = "UNSUBSCRIBE", now_ms: int | None = None
    ) -> dict[str, Any]:
        """End the latest period now (if it still runs; grace too) → EXPIRATION with ``reason``."""
        if reason not in EXPIRATION_REASONS:
            raise SimulatorError(f"reason must be one of {sorted(EXPIRATION_REASONS)}")
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest(customer, product_id)
            if reason == "SUBSCRIPTION_PAUSED" and latest.store != "play_store":
                raise SimulatorError("only Play Store subscriptions pause")
            latest.expires_at_ms = min(latest.expires_at_ms, now)
            if latest.grace_period_expires_at_ms is not None:
                latest.grace_period_expires_at_ms = min(latest.grace_period_expires_at_ms, now)
            body = self._event("EXPIRATION", customer, app_user_id, latest, now, expiration_reason=reason)
        return self._emit(body)

    def pause(
        self, app_user_id: str, product_id: str, *, resume_at_ms: int, now_ms: int | None = None
    ) -> dict[str, Any]:
        """Play Store: pause at period end → SUBSCRIPTION_PAUSED (access continues until expiry)."""
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            latest = self._latest_renewable(customer, product_id)
            if latest.store != "play_store":
                raise SimulatorError("only Play Store subscriptions pause")
            latest.auto_resume_at_ms = int(resume_at_ms)
            body = self._event(
                "SUBSCRIPTION_PAUSED", customer, app_user_id, latest, now, auto_resume_at_ms=latest.auto_resume_at_ms
            )
        return self._emit(body)

    def change_product(
        self,
        app_user_id: str,
        old_product_id: str,
        new_product_id: str,
        *,
        period_ms: int | None = None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """Immediate product change → PRODUCT_CHANGE only.

        The old product's period ends now; a period of the new product starts now in the same
        chain (same original transaction, next renewal number), lasting ``period_ms`` (default:
        the old period length). The event describes the old period, with ``new_product_id``.
        """
        if old_product_id == new_product_id:
            raise SimulatorError("old and new product are the same")
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            old = self._latest_renewable(customer, old_product_id)
            if old.effective_expires_at_ms() <= now:
                raise SimulatorError(f"{old_product_id!r} has already expired")
            length = old.period_ms if period_ms is None else int(period_ms)
            old.expires_at_ms = now
            new = SubscriptionPeriod(
                product_id=new_product_id,
                store_transaction_id=self._new_transaction_id(old.store),
                original_transaction_id=old.original_transaction_id,
                purchased_at_ms=now,
                expires_at_ms=now + length,
                original_purchased_at_ms=old.original_purchased_at_ms,
                period_ms=length,
                period_type="normal",
                store=old.store,
                is_sandbox=old.is_sandbox,
                ownership_type=old.ownership_type,
                price=0.0 if old.ownership_type == "FAMILY_SHARED" else self.price_of(new_product_id),
                currency=self.currency,
                renewal_number=old.renewal_number + 1,
            )
            customer.subscriptions.setdefault(new_product_id, []).append(new)
            body = self._event("PRODUCT_CHANGE", customer, app_user_id, old, now, new_product_id=new_product_id)
        return self._emit(body)

    def purchase_non_renewing(
        self,
        app_user_id: str,
        product_id: str,
        *,
        store: str = "app_store",
        sandbox: bool = False,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """A one-time purchase → NON_RENEWING_PURCHASE (``expiration_at_ms`` null)."""
        _check_store(store)
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now, create=True)
            purchase = self._add_one_time_purchase(customer, product_id, store=store, sandbox=sandbox, now=now)
            body = self._event("NON_RENEWING_PURCHASE", customer, app_user_id, purchase, now, price=purchase.price)
        return self._emit(body)

    def grant_promotional(
        self, app_user_id: str, entitlement_id: str, *, duration_ms: int, now_ms: int | None = None
    ) -> dict[str, Any]:
        """Grant an entitlement for ``duration_ms`` → NON_RENEWING_PURCHASE, store/period_type PROMOTIONAL.

        The grant appears in ``subscriptions`` as ``rc_promo_<entitlement>_custom`` with store
        ``promotional``; grants are always production.
        """
        if not entitlement_id:
            raise SimulatorError("entitlement_id is required")
        if duration_ms <= 0:
            raise SimulatorError("duration_ms must be positive")
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now, create=True)
            product_id = f"rc_promo_{entitlement_id}_custom"
            txn = self._new_transaction_id("promotional")
            period = SubscriptionPeriod(
                product_id=product_id,
                store_transaction_id=txn,
                original_transaction_id=txn,
                purchased_at_ms=now,
                expires_at_ms=now + duration_ms,
                original_purchased_at_ms=now,
                period_ms=duration_ms,
                period_type="normal",  # v1 shows promotional grants as "normal" (spec example)
                store="promotional",
                is_sandbox=False,
                ownership_type="PURCHASED",
                price=0.0,
                currency=self.currency,
                renewal_number=1,
            )
            customer.subscriptions.setdefault(product_id, []).append(period)
            body = self._event("NON_RENEWING_PURCHASE", customer, app_user_id, period, now)
        return self._emit(body)

    def refund(self, app_user_id: str, transaction_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """Refund one transaction → CANCELLATION (CUSTOMER_SUPPORT) with a negative price.

        A subscription period gets ``refunded_at`` and its reported expiry becomes the refund
        time; a one-time purchase disappears from ``non_subscriptions`` (kept internally).
        """
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            record = self._find_transaction(customer, transaction_id)
            if record.store == "promotional":
                raise SimulatorError("promotional grants cannot be refunded")
            if record.refunded_at_ms is not None:
                raise SimulatorError(f"transaction {transaction_id!r} is already refunded")
            record.refunded_at_ms = now
            body = self._event(
                "CANCELLATION",
                customer,
                app_user_id,
                record,
                now,
                price=-record.price,
                cancel_reason="CUSTOMER_SUPPORT",
            )
        return self._emit(body)

    def reverse_refund(self, app_user_id: str, transaction_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """Undo a refund → REFUND_REVERSED (positive price); the transaction is as before the refund."""
        with self._lock:
            now = self._now(now_ms)
            customer = self._touch(app_user_id, now)
            record = self._find_transaction(customer, transaction_id)
            if record.refunded_at_ms is None:
                raise SimulatorError(f"transaction {transaction_id!r} is not refunded")
            record.refunded_at_ms = None
            body = self._event("REFUND_REVERSED", customer, app_user_id, record, now, price=record.price, metadata=None)
        return self._emit(body)

    def transfer(
        self,
        from_app_user_id: str,
        to_app_user_id: str,
        *,
        transaction_id: str | None = None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """Move every purchase of one customer to another (created if needed) → TRANSFER.

        With ``transaction_id``, only what one store receipt holds moves (a restore of it by the
        other user): the one-time purchase, or the whole subscription that period belongs to
        (every period of its chain, older ones included). ``transferred_from``/``transferred_to``
        list every id (sorted) of each customer.
        """
        with self._lock:
            now = self._now(now_ms)
            source = self._require(from_app_user_id)
            if not source.has_purchases():
                raise SimulatorError(f"{from_app_user_id!r} has nothing to transfer")
            target = self._touch(to_app_user_id, now, create=True)
            if source is target:
                raise SimulatorError("both ids belong to the same customer")
            chain = None
            if transaction_id is not None:
                record = self._find_transaction(source, transaction_id)
                chain = record.original_transaction_id if isinstance(record, SubscriptionPeriod) else transaction_id
            body = self._transfer(source, target, now, transaction_id=chain)
        return self._emit(body)

    def _transfer(
        self, source: Customer, target: Customer, now: int, *, transaction_id: str | None = None
    ) -> dict[str, Any]:
        moved = self._move_purchases(source, target, transaction_id=transaction_id)
        if not moved:
            raise SimulatorError("nothing to transfer")
        # Registered store tokens follow their purchases.
        for registration in self._store_purchases.values():
            if registration.owner is None or self._find(registration.owner) is not source:
                continue
            if transaction_id is None or registration.transaction_id == transaction_id:
                registration.owner = target.original_app_user_id
        newest = max(moved, key=lambda record: record.purchased_at_ms)
        return transfer_event(
            now_ms=now,
            app_id=self.app_id,
            store=newest.store,
            is_sandbox=all(record.is_sandbox for record in moved),
            transferred_from=sorted(source.aliases),
            transferred_to=sorted(target.aliases),
        )

    def alias(self, app_user_id: str, other_app_user_id: str, *, now_ms: int | None = None) -> None:
        """Merge two ids into one customer (no webhook).

        The customer seen first survives: its ``original_app_user_id`` stays, and the other
        customer's ids and purchases join it. Unknown ids are simply added as aliases.
        """
        with self._lock:
            now = self._now(now_ms)
            first, second = self._find(app_user_id), self._find(other_app_user_id)
            if first is not None and second is not None:
                customer = first if first is second else self._merge_customers(first, second)
            else:
                # At most one id is known: the other joins it (or both start a new customer).
                customer = first or second or self._touch(app_user_id, now, create=True)
                for new_id in (app_user_id, other_app_user_id):
                    customer.aliases.add(new_id)
                    self._customers[new_id] = customer
            customer.last_seen_ms = max(customer.last_seen_ms, now)

    # ----- read-only views (tests and the demo) -------------------------------------------

    def first_seen_ms(self, app_user_id: str) -> int | None:
        """When the customer of ``app_user_id`` was first seen (v1's ``first_seen``); None for an
        unknown id (nothing is created)."""
        with self._lock:
            customer = self._customers.get(app_user_id)
            return None if customer is None else customer.first_seen_ms

    def purchase_history(self, app_user_id: str) -> tuple[list[SubscriptionPeriod], list[OneTimePurchase]]:
        """Every subscription period and one-time purchase the customer of ``app_user_id`` holds,
        refunded ones included, as copies; ([], []) for an unknown id.

        The v1 body shows only the latest period of each subscription product; this is the whole
        history, the truth a test or the demo checks the engine against.
        """
        with self._lock:
            customer = self._find(app_user_id)
            if customer is None:
                return [], []
            periods = [replace(p) for ps in customer.subscriptions.values() for p in ps]
            purchases = [replace(p) for ps in customer.one_time_purchases.values() for p in ps]
            return periods, purchases

    # ----- REST v1 -----------------------------------------------------------------------

    def subscriber(self, app_user_id: str, now_ms: int | None = None) -> tuple[int, dict[str, Any]]:
        """``GET /v1/subscribers/{id}``: get or create; (201, body) when created, else (200, body)."""
        with self._lock:
            now = self._now(now_ms)
            customer, created = self._get_or_create(app_user_id, now)
            return (201 if created else 200), subscriber_body(
                customer, now_ms=now, entitlements_for=self.entitlements_for
            )

    def register_store_purchase(
        self,
        fetch_token: str,
        *,
        platform: str,
        product_id: str,
        kind: str = "non_renewing",
        status: str = "purchased",
        transaction_id: str | None = None,
        sandbox: bool = False,
        period_ms: int = 30 * DAY_MS,
    ) -> None:
        """Make a store token known so that ``receipt()`` can record it.

        Re-registering a token not yet recorded replaces it (e.g. pending → purchased).
        """
        if platform not in PLATFORM_STORES:
            raise SimulatorError(f"platform must be one of {sorted(PLATFORM_STORES)}")
        if kind not in ("subscription", "non_renewing"):
            raise SimulatorError("kind must be 'subscription' or 'non_renewing'")
        if status not in ("purchased", "pending", "invalid"):
            raise SimulatorError("status must be 'purchased', 'pending' or 'invalid'")
        if period_ms <= 0:
            raise SimulatorError("period_ms must be positive")
        with self._lock:
            existing = self._store_purchases.get(fetch_token)
            if existing is not None and existing.owner is not None:
                raise SimulatorError(f"token {fetch_token!r} is already recorded")
            self._store_purchases[fetch_token] = StorePurchase(
                fetch_token=fetch_token,
                platform=platform,
                product_id=product_id,
                kind=kind,
                status=status,
                transaction_id=transaction_id,
                is_sandbox=sandbox,
                period_ms=period_ms,
            )

    def receipt(
        self,
        app_user_id: str,
        platform: str | None,
        fetch_token: str,
        product_id: str | None = None,
        *,
        now_ms: int | None = None,
    ) -> ReceiptResult:
        """``POST /v1/receipts``: record a registered store purchase for ``app_user_id``.

        Idempotent per token. A token held by another identified customer is transferred
        (TRANSFER event); one held by an anonymous customer merges the two customers instead
        (no event), as RevenueCat's default restore behaviour does (reference §6).
        Errors are 400 ``{"code", "message"}``.
        """
        with self._lock:
            now = self._now(now_ms)
            if not platform:
                return _receipt_error(ERROR_INVALID_PLATFORM, "The X-Platform header is required.")
            store = PLATFORM_STORES.get(platform.lower())
            if store is None:
                return _receipt_error(ERROR_INVALID_PLATFORM, f"Invalid platform {platform!r}.")
            if not app_user_id:
                return _receipt_error(ERROR_EMPTY_APP_USER_ID, "app_user_id is required.")
            if not fetch_token:
                return _receipt_error(ERROR_BAD_REQUEST, "fetch_token is required.")
            if store == "play_store" and not product_id:
                return _receipt_error(ERROR_GOOGLE_PRODUCT_ID, "product_id is required for Google Play receipts.")
            registration = self._store_purchases.get(fetch_token)
            if (
                registration is None
                or registration.status == "invalid"
                or PLATFORM_STORES[registration.platform] != store
            ):
                return _receipt_error(ERROR_INVALID_RECEIPT, "The receipt is not valid.")
            if product_id is not None and product_id != registration.product_id:
                return _receipt_error(ERROR_INVALID_RECEIPT, "The receipt does not contain the given product_id.")
            if registration.status == "pending":
                return _receipt_error(
                    ERROR_BAD_REQUEST, "The purchase is pending: the store has not completed the payment yet."
                )
            customer = self._touch(app_user_id, now, create=True)
            owner = self._find(registration.owner) if registration.owner is not None else None
            events: list[dict[str, Any]] = []
            if owner is None:
                events.append(self._record(registration, customer, app_user_id, store, now))
            elif owner is not customer:
                if owner.is_anonymous():
                    self._merge_customers(owner, customer)
                else:
                    events.append(self._transfer(owner, customer, now, transaction_id=registration.transaction_id))
            current = self._require(app_user_id)  # a merge may have replaced the customer object
            body = subscriber_body(current, now_ms=now, entitlements_for=self.entitlements_for)
        for event in events:
            self._emit(event)
        return ReceiptResult(200, body, events)

    def _record(
        self, registration: StorePurchase, customer: Customer, app_user_id: str, store: str, now: int
    ) -> dict[str, Any]:
        if registration.kind == "subscription":
            period = self._start_subscription(
                customer,
                registration.product_id,
                store=store,
                period_ms=registration.period_ms,
                period_type="normal",
                sandbox=registration.is_sandbox,
                family_shared=False,
                now=now,
                transaction_id=registration.transaction_id,
            )
            registration.transaction_id = period.original_transaction_id
            body = self._event("INITIAL_PURCHASE", customer, app_user_id, period, now, price=period.price)
        else:
            purchase = self._add_one_time_purchase(
                customer,
                registration.product_id,
                store=store,
                sandbox=registration.is_sandbox,
                now=now,
                transaction_id=registration.transaction_id,
            )
            registration.transaction_id = purchase.store_transaction_id
            body = self._event("NON_RENEWING_PURCHASE", customer, app_user_id, purchase, now, price=purchase.price)
        registration.owner = customer.original_app_user_id
        return body

    # ----- REST v2 (read only) ----------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[CustomerDirectory]:
        """The customers, under the state's lock, while a v2 answer is rendered from them.

        The same records the v1 body is rendered from; the caller must not change them.
        """
        with self._lock:
            yield CustomerDirectory(self._customers, self._store_purchases)

    # ----- faults and accounting (used by the HTTP server) -------------------------------

    def fail_next(self, n: int, status: int = 500, retry_after_s: float | None = None) -> None:
        """Make the next ``n`` provider API requests fail with ``status`` (queued after pending faults)."""
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("n must be >= 0 and status a 4xx/5xx code")
        with self._lock:
            self._faults.extend([Fault(status, retry_after_s)] * n)

    def clear_faults(self) -> None:
        """Drop pending injected faults and bring the server back up (latency is kept)."""
        with self._lock:
            self._faults.clear()
            self.down = False

    def take_fault(self) -> Fault | None:
        """Consume the next injected fault, if any."""
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def record_request(self, method: str, path: str) -> None:
        """Count one provider API request."""
        with self._lock:
            self.request_count += 1
            self.request_log.append((method, path, int(time.time() * 1000)))

    def stats(self, *, log_tail: int = 100) -> dict[str, Any]:
        """Counters for tests and demos; ``request_log`` holds the last ``log_tail`` entries."""
        with self._lock:
            return {
                "request_count": self.request_count,
                "request_log": [list(entry) for entry in self.request_log[-log_tail:]] if log_tail > 0 else [],
                "customers": len({id(c) for c in self._customers.values()}),
                "pending_faults": len(self._faults),
                "latency_ms": self.latency_ms,
                "down": self.down,
                "clock_offset_ms": self.clock_offset_ms,
                "now_ms": self.now_ms(),
            }
