"""Client flows: the decisions behind purchase validation and user sync. Pure.

``POST /v1/purchases/validate`` (design.md, "Validation payloads"): a payload the web layer has
checked against its schema (web/schemas.py, built from the vocabulary below) has its status
normalised and its store product id resolved to the catalog's product; a purchase the app
itself reports as pending (Android ``PENDING``, iOS Ask to Buy ``deferred``) or not completed is
answered without asking the provider; the provider's refusals of ``POST /v1/receipts`` become
reasons (with our own messages: a provider's text never reaches a client); and a purchase is
``Validated`` only when the granted access includes what it buys. ``POST /v1/users/<id>/sync``
reports the users a restore moved purchases away from. HTTP statuses are the web layer's.

No I/O and no clock reads here: the adapters pass ``now``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.access import Access
from engine.catalog import Catalog, Product
from engine.facts import SubscriberSnapshot, TransactionObservation

MAX_ID_LENGTH = 255  # the ledger's column width for app_user_id, product and transaction ids
MAX_TOKEN_LENGTH = 64 * 1024  # a base64 App Store receipt is a few KiB; Play tokens are short
MAX_WAIT_S = 30.0  # the longest long-poll of GET /v1/users/<id>/access
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # ids and texts: no control characters

# X-Platform of POST /v1/receipts for each platform the apps send, and the payload field that
# carries the store's proof of purchase on that platform.
PLATFORM_TOKEN_FIELD = {"android": "purchase_token", "ios": "receipt_data"}

# Purchase statuses as the apps report them: Flutter ``PurchaseStatus.purchased``, Play
# ``PurchaseState.PENDING``, StoreKit ``SKPaymentTransactionStateDeferred`` (Ask to Buy), or the
# bare word; the word in lower, UPPER or Capitalized case.
STATUS_WORDS = {
    "purchased": "completed",
    "restored": "completed",
    "pending": "pending",
    "deferred": "pending",
    "error": "not_completed",
    "failed": "not_completed",
    "canceled": "not_completed",
    "cancelled": "not_completed",
}
STATUS_PATTERN = (
    r"^(?:[A-Za-z]+\.)?(?:SKPaymentTransactionState)?("
    + "|".join(f"{w}|{w.upper()}|{w.capitalize()}" for w in STATUS_WORDS)
    + r")$"
)
_STATUS = re.compile(STATUS_PATTERN)
TRANSACTION_DATE_PATTERN = r"^[0-9]{1,14}$"  # epoch milliseconds, as the apps send them

# RevenueCat backend error codes of POST /v1/receipts (purchases-ios BackendErrorCode), with
# the reason and message the app gets. The simulator answers 7000, 7103, 7106, 7220 and 7226;
# 7101 (store problem) and 7102 (receipt held by another user, restore behaviour "keep with
# original") are from the SDK's list, not seen here. Any other code is ``provider_refused``.
_RECEIPT_ERRORS = {
    7000: ("invalid_platform", "The store platform of this purchase is not valid."),
    7101: ("store_problem", "The store could not be reached to check this purchase; try again later."),
    7102: ("receipt_in_use", "The receipt is already in use by another user."),
    7103: ("invalid_receipt", "The receipt is not valid."),
    7106: ("product_id_required", "The provider needs the purchase's product id."),
    7220: ("app_user_id_required", "The provider needs the purchase's app_user_id."),
    7226: ("bad_request", "The provider could not read this purchase."),
}
_RETRYABLE_RECEIPT_REASONS = frozenset({"store_problem"})


# ----- purchase validation --------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationRequest:
    """A client's purchase validation, checked and normalised."""

    platform: str  # X-Platform: android | ios
    app_user_id: str
    store_product_id: str  # as the store knows it (what the provider needs)
    product: Product  # the catalog's product
    purchase_id: str  # the store's transaction (order) id
    fetch_token: str  # Play purchase token or App Store receipt
    status: str  # completed | pending | not_completed
    transaction_ms: int | None
    course_code: str | None
    voice: str | None


@dataclass(frozen=True)
class Refusal:
    """Why a validation is not acknowledged, and whether trying again later may help."""

    reason: str
    message: str
    retryable: bool = False
    pending: bool = False


def normalise_status(status: str) -> str:
    """``completed``, ``pending`` or ``not_completed``; ValueError for a status not matching
    STATUS_PATTERN (which the validation schema enforces first)."""
    match = _STATUS.fullmatch(status)
    if match is None:
        raise ValueError(f"not a purchase status: {status!r}")
    return STATUS_WORDS[match.group(1).lower()]


def validation_request(
    *,
    platform: str,
    app_user_id: str,
    product_id: str,
    purchase_id: str,
    fetch_token: str,
    status: str,
    transaction_ms: int | None,
    course_code: str | None,
    voice: str | None,
    catalog: Catalog,
) -> ValidationRequest | Refusal:
    """A well-formed validation (checked against its schema by the caller) as the engine sees it:
    its status normalised, its store product id resolved to the catalog's product (a Refusal when
    the catalog has no such product)."""
    product = catalog.product_for(product_id)
    if product is None:
        return Refusal("unknown_product", f"product {product_id!r} is not in the catalog")
    return ValidationRequest(
        platform=platform,
        app_user_id=app_user_id,
        store_product_id=product_id,
        product=product,
        purchase_id=purchase_id,
        fetch_token=fetch_token,
        status=normalise_status(status),
        transaction_ms=transaction_ms,
        course_code=course_code or None,
        voice=voice,
    )


def client_status_refusal(req: ValidationRequest) -> Refusal | None:
    """A pending or failed purchase, as the app reports it, is answered without the provider."""
    if req.status == "pending":
        return Refusal(
            "purchase_pending",
            "the store has not completed this purchase yet (pending payment or Ask to Buy): nothing is granted; "
            "validate again once it completes",
            retryable=True,
            pending=True,
        )
    if req.status == "not_completed":
        return Refusal(
            "purchase_not_completed", "the app reports this purchase as failed or canceled: nothing is granted"
        )
    return None


def receipt_body(req: ValidationRequest) -> dict[str, Any]:
    """The body of ``POST /v1/receipts`` (X-Platform: ``req.platform``)."""
    return {"app_user_id": req.app_user_id, "fetch_token": req.fetch_token, "product_id": req.store_product_id}


def receipt_refusal(status: int | None, text: str) -> Refusal:
    """The provider's 4xx answer to ``POST /v1/receipts`` as a reason for the app.

    ``text`` is whatever carries the provider's ``{"code", "message"}`` body (it may be
    embedded in a longer error message); the code and the word "pending" decide the reason, and
    the message is ours: a provider's body never reaches a client.
    """
    code: int | None = None
    message = ""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            body = json.loads(text[start : end + 1])
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict):
            code = body.get("code") if isinstance(body.get("code"), int) else None
            message = str(body.get("message") or "")
    if "pending" in message.lower():
        return Refusal(
            "purchase_pending",
            "the store has not completed this purchase yet: nothing is granted; validate again once it completes",
            retryable=True,
            pending=True,
        )
    if status in (401, 403):
        # Our credentials, not the purchase: the operator must fix them; the app may retry.
        return Refusal("provider_rejected_credentials", "the provider refused this server's API key", retryable=True)
    if code in _RECEIPT_ERRORS:
        reason, ours = _RECEIPT_ERRORS[code]
    else:
        reason, ours = "provider_refused", f"the provider refused the receipt (HTTP {status}, code {code})"
    return Refusal(reason, ours, retryable=reason in _RETRYABLE_RECEIPT_REASONS)


def purchase_observation(
    snapshot: SubscriberSnapshot, req: ValidationRequest, catalog: Catalog
) -> TransactionObservation | None:
    """The provider's record of this purchase: the transaction with the app's purchase id, else
    the newest transaction of the same catalog product (a renewed subscription's latest period)."""
    same_product = [
        o
        for o in snapshot.observations
        if isinstance(o.product_id, str) and catalog.product_for(o.product_id) == req.product
    ]
    for obs in same_product:
        if obs.transaction_id == req.purchase_id:
            return obs
    if not same_product:
        return None
    return max(
        same_product, key=lambda o: (o.purchased_ms if isinstance(o.purchased_ms, int) else -1, o.transaction_id)
    )


def grants_purchase(granted: Sequence[Access], product: Product, transaction_id: str, now_ms: int) -> bool:
    """Whether every access ``product`` grants is active and sourced from ``transaction_id``."""
    by_resource = {a.resource: a for a in granted}
    for rule in product.grants:
        access = by_resource.get(rule.resource)
        if access is None or not access.is_active(now_ms) or transaction_id not in access.sources:
            return False
    return True


def not_granted_refusal(obs: TransactionObservation | None, *, grant_sandbox: bool) -> Refusal:
    """Why a receipt the provider accepted still grants nothing."""
    if obs is None:
        return Refusal("not_granted", "the provider does not list this purchase for this user")
    if obs.is_sandbox is True and not grant_sandbox:
        return Refusal("sandbox_purchase", "sandbox purchases do not grant production access")
    if isinstance(obs.refunded_ms, int):
        return Refusal("refunded", "this purchase was refunded")
    return Refusal("not_granted", "the purchase grants no active access (expired, refunded or not the user's)")


@dataclass(frozen=True)
class Validated:
    """A purchase whose access is granted: the provider's record of it and the user's access."""

    request: ValidationRequest
    observation: TransactionObservation
    granted: tuple[Access, ...]

    @property
    def course_code(self) -> str | None:
        """The app's course code, else the course the product grants."""
        if self.request.course_code:
            return self.request.course_code
        for rule in self.request.product.grants:
            if rule.resource.startswith("course:"):
                return rule.resource.split(":", 1)[1]
        return None

    @property
    def purchased_ms(self) -> int | None:
        """When the provider says it was bought, else when the app says."""
        obs = self.observation.purchased_ms
        return obs if isinstance(obs, int) else self.request.transaction_ms

    @property
    def product_access(self) -> tuple[Access, ...]:
        """The granted access this purchase's product gives."""
        resources = {rule.resource for rule in self.request.product.grants}
        return tuple(a for a in self.granted if a.resource in resources)


# ----- sync -----------------------------------------------------------------------------------


def moved_from(before: Mapping[str, str | None], after: Mapping[str, str | None], customer_id: str) -> list[str]:
    """Previous owners of transactions that now belong to ``customer_id`` (a restore/transfer).

    ``before``/``after`` map transaction ids to their ledger owner around the reconcile.
    """
    owners = {
        owner
        for tx_id, owner in before.items()
        if owner is not None and owner != customer_id and after.get(tx_id) == customer_id
    }
    return sorted(owners)
