"""Client flows: the decisions behind purchase validation, user sync and user tokens. Pure.

``POST /v1/purchases/validate`` (design.md, "Validation payloads"): the app's payload is checked
and its store product id normalised to the catalog's product; a purchase the app itself reports
as pending (Android ``PENDING``, iOS Ask to Buy ``deferred``) or not completed is answered
without asking the provider; the provider's refusals of ``POST /v1/receipts`` become reasons;
and the answer is ``acknowledged: true`` only when the granted access includes what the purchase
buys. ``POST /v1/users/<id>/sync`` reports the actions of its reconcile. User tokens are
short-lived bearer tokens signed (HMAC-SHA256) for one app_user_id.

No I/O and no clock reads here: the adapters pass ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.access import Access
from engine.catalog import Catalog, Product
from engine.facts import SubscriberSnapshot, TransactionObservation
from engine.plan import Action

MAX_ID_LENGTH = 255  # the ledger's column width for app_user_id, product and transaction ids
MAX_TOKEN_LENGTH = 64 * 1024  # a base64 App Store receipt is a few KiB; Play tokens are short
MAX_WAIT_S = 30.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

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
_TRANSACTION_DATE = re.compile(TRANSACTION_DATE_PATTERN)
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"

# RevenueCat backend error codes of POST /v1/receipts (purchases-ios BackendErrorCode). The
# simulator answers 7000, 7103, 7106, 7220 and 7226; 7101 (store problem) and 7102 (receipt held
# by another user, restore behaviour "keep with original") are from the SDK's list, not seen
# here. Any other code is reported as ``provider_refused`` with the provider's own message.
_RECEIPT_ERROR_REASONS = {
    7000: "invalid_platform",
    7101: "store_problem",
    7102: "receipt_in_use",
    7103: "invalid_receipt",
    7106: "product_id_required",
    7220: "app_user_id_required",
    7226: "bad_request",
}
_RETRYABLE_RECEIPT_REASONS = frozenset({"store_problem"})


class InvalidRequest(ValueError):
    """A request the API cannot act on; ``problems`` maps each offending field to what is wrong."""

    def __init__(self, problems: Mapping[str, str]):
        self.problems = dict(problems)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.problems.items()))


# ----- identifiers and query parameters -------------------------------------------------------


def app_user_id_problem(app_user_id: Any) -> str | None:
    """Why ``app_user_id`` cannot name a user (None when it can)."""
    if not isinstance(app_user_id, str) or not app_user_id:
        return "a non-empty string is required"
    if len(app_user_id) > MAX_ID_LENGTH:
        return f"at most {MAX_ID_LENGTH} characters"
    if _CONTROL.search(app_user_id):
        return "control characters are not allowed"
    return None


def parse_wait(value: str | None) -> float:
    """``?wait=N``: seconds to long-poll, 0 when absent; at most MAX_WAIT_S (larger is capped)."""
    if value is None:
        return 0.0
    if not _JSON_NUMBER.fullmatch(value) or float(value) < 0:
        raise InvalidRequest({"wait": "a number of seconds from 0 (more than 30 waits 30)"})
    return min(abs(float(value)), MAX_WAIT_S)


def iso_ms(ms: int | None) -> str | None:
    """Epoch ms as ISO 8601 UTC with milliseconds and ``Z`` (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def access_entries(accesses: Iterable[Access]) -> list[dict[str, Any]]:
    """The ``access`` list of the access, sync and validate answers."""
    return [
        {
            "resource": a.resource,
            "mode": a.mode,
            "expires_at": iso_ms(a.expires_ms),
            "source": {"transactions": list(a.sources)},
        }
        for a in sorted(accesses, key=lambda a: a.resource)
    ]


def access_version(entries: Sequence[Mapping[str, Any]]) -> str:
    """A short digest of an ``access`` list: equal exactly when the visible access is equal."""
    canonical = json.dumps(list(entries), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def change_entries(actions: Iterable[Action]) -> list[dict[str, Any]]:
    """What a reconcile changed, as the sync answer reports it."""

    def side(access: Access | None) -> dict[str, Any] | None:
        if access is None:
            return None
        return {"mode": access.mode, "expires_at": iso_ms(access.expires_ms)}

    return [
        {"action": a.kind, "resource": a.resource, "before": side(a.before), "after": side(a.after)} for a in actions
    ]


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
    """``completed``, ``pending`` or ``not_completed``; InvalidRequest for anything else."""
    match = _STATUS.fullmatch(status)
    if match is None:
        raise InvalidRequest(
            {"status": "one of PurchaseStatus.purchased, .restored, .pending, .deferred, .error, .canceled"}
        )
    return STATUS_WORDS[match.group(1).lower()]


def _string(
    payload: Mapping[str, Any],
    name: str,
    problems: dict[str, str],
    *,
    required: bool,
    limit: int = MAX_ID_LENGTH,
    token: bool = False,
) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            problems[name] = "required"
        return None
    if not isinstance(value, str):
        problems[name] = "must be a string"
        return None
    if len(value) > limit:
        problems[name] = f"at most {limit} characters"
        return None
    if not token and _CONTROL.search(value):  # base64 receipts may carry line breaks
        problems[name] = "control characters are not allowed"
        return None
    return value


def parse_validation(payload: Any, catalog: Catalog) -> ValidationRequest | Refusal:
    """Check a validation payload; a Refusal when its product is not in the catalog.

    Raises InvalidRequest naming every malformed field at once.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest({"body": "must be a JSON object"})
    problems: dict[str, str] = {}
    platform = _string(payload, "platform", problems, required=True)
    if platform is not None and platform not in PLATFORM_TOKEN_FIELD:
        problems["platform"] = f"one of {sorted(PLATFORM_TOKEN_FIELD)}"
        platform = None
    app_user_id = _string(payload, "app_user_id", problems, required=True)
    if app_user_id is not None and (problem := app_user_id_problem(app_user_id)):
        problems["app_user_id"] = problem
    product_id = _string(payload, "product_id", problems, required=True)
    purchase_id = _string(payload, "purchase_id", problems, required=True)
    status_text = _string(payload, "status", problems, required=True)
    course_code = _string(payload, "course_code", problems, required=False)
    voice = _string(payload, "voice", problems, required=False)
    token: str | None = None
    for platform_name, field in PLATFORM_TOKEN_FIELD.items():
        value = _string(
            payload, field, problems, required=platform_name == platform, limit=MAX_TOKEN_LENGTH, token=True
        )
        if platform_name == platform:
            token = value
    status: str | None = None
    if status_text is not None:
        try:
            status = normalise_status(status_text)
        except InvalidRequest as exc:
            problems.update(exc.problems)
    transaction_ms: int | None = None
    raw_date = payload.get("transaction_date")
    if isinstance(raw_date, int) and not isinstance(raw_date, bool) and 0 <= raw_date < 10**14:
        transaction_ms = raw_date
    elif isinstance(raw_date, str) and _TRANSACTION_DATE.fullmatch(raw_date):
        transaction_ms = int(raw_date)
    elif raw_date is not None:
        problems["transaction_date"] = 'epoch milliseconds, e.g. "1703347200000"'
    if problems:
        raise InvalidRequest(problems)
    assert platform
    assert app_user_id
    assert product_id
    assert purchase_id
    assert token
    assert status
    product = catalog.product_for(product_id)
    if product is None:
        return Refusal("unknown_product", f"product {product_id!r} is not in the catalog")
    return ValidationRequest(
        platform=platform,
        app_user_id=app_user_id,
        store_product_id=product_id,
        product=product,
        purchase_id=purchase_id,
        fetch_token=token,
        status=status,
        transaction_ms=transaction_ms,
        course_code=course_code,
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
    embedded in a longer error message).
    """
    code: int | None = None
    message = ""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            body = json.loads(text[start : end + 1])
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = body.get("code") if isinstance(body.get("code"), int) else None
            message = str(body.get("message") or "")
    message = message or f"the provider refused the receipt ({status})"
    if "pending" in message.lower():
        return Refusal("purchase_pending", message, retryable=True, pending=True)
    if status in (401, 403):
        # Our credentials, not the purchase: the operator must fix them; the app may retry.
        return Refusal("provider_rejected_credentials", "the provider refused this server's API key", retryable=True)
    reason = _RECEIPT_ERROR_REASONS.get(code, "provider_refused") if code is not None else "provider_refused"
    return Refusal(reason, message, retryable=reason in _RETRYABLE_RECEIPT_REASONS)


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


def success_answer(req: ValidationRequest, obs: TransactionObservation, granted: Sequence[Access]) -> dict[str, Any]:
    """``acknowledged: true``: the app may now complete (acknowledge) the store purchase."""
    purchased_ms = obs.purchased_ms if isinstance(obs.purchased_ms, int) else req.transaction_ms
    course_code = req.course_code or _course_code(req.product)
    resources = {rule.resource for rule in req.product.grants}
    return {
        "status": "success",
        "message": "purchase validated: access granted",
        "acknowledged": True,
        "course": {
            "course_code": course_code,
            "title": req.product.title or req.product.name,
            "voice": req.voice,
            "purchased_at": iso_ms(purchased_ms),
        },
        "product": req.product.name,
        "transaction_id": obs.transaction_id,
        "access": access_entries(a for a in granted if a.resource in resources),
    }


def _course_code(product: Product) -> str | None:
    for rule in product.grants:
        if rule.resource.startswith("course:"):
            return rule.resource.split(":", 1)[1]
    return None


def refusal_answer(refusal: Refusal) -> dict[str, Any]:
    """``acknowledged: false``: the app must not complete the purchase (the store refunds it)."""
    return {
        "status": "pending" if refusal.pending else "failed",
        "acknowledged": False,
        "reason": refusal.reason,
        "error": refusal.reason,
        "message": refusal.message,
        "retryable": refusal.retryable,
    }


def invalid_request_answer(exc: InvalidRequest) -> dict[str, Any]:
    return {
        "status": "failed",
        "acknowledged": False,
        "reason": "invalid_request",
        "error": "invalid_request",
        "message": str(exc),
        "problems": exc.problems,
        "retryable": False,
    }


def http_status_of(refusal: Refusal) -> int:
    """202 pending; 503 when trying again later may help; otherwise 422."""
    if refusal.pending:
        return 202
    if refusal.retryable:
        return 503
    return 422


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


# ----- user tokens ----------------------------------------------------------------------------

USER_TOKEN_PREFIX = "ut1."
DEFAULT_USER_TOKEN_TTL_S = 900
MIN_USER_TOKEN_TTL_S = 10
MAX_USER_TOKEN_TTL_S = 3600
MIN_SECRET_LENGTH = 16


class TokenRefused(Exception):
    """A user token that cannot be accepted; ``reason`` is the API's error code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, signed: str) -> str:
    return _b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


def mint_user_token(secret: str, app_user_id: str, *, now_s: int, ttl_s: int = DEFAULT_USER_TOKEN_TTL_S) -> str:
    """A bearer token good for ``app_user_id`` only, until ``now_s + ttl_s``."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the user token secret must be at least {MIN_SECRET_LENGTH} characters")
    claims = {"sub": app_user_id, "iat": int(now_s), "exp": int(now_s) + int(ttl_s)}
    signed = USER_TOKEN_PREFIX + _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{signed}.{_signature(secret, signed)}"


def is_user_token(token: str) -> bool:
    return token.startswith(USER_TOKEN_PREFIX)


def verify_user_token(secret: str, token: str, *, now_s: int) -> str:
    """The app_user_id a valid, unexpired user token was signed for; TokenRefused otherwise."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise TokenRefused("user_tokens_not_configured", "USER_TOKEN_SECRET is not set: user tokens are refused")
    signed, dot, signature = token.rpartition(".")
    if not dot or not signed.startswith(USER_TOKEN_PREFIX) or len(token) > 4096:
        raise TokenRefused("invalid_token", "malformed user token")
    if not hmac.compare_digest(signature.encode(), _signature(secret, signed).encode()):
        raise TokenRefused("invalid_token", "user token signature does not match")
    try:
        claims = json.loads(_unb64(signed[len(USER_TOKEN_PREFIX) :]))
        subject, expires = claims["sub"], int(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise TokenRefused("invalid_token", "malformed user token") from None
    if not isinstance(subject, str) or not subject:
        raise TokenRefused("invalid_token", "malformed user token")
    if expires <= now_s:
        raise TokenRefused("token_expired", "user token has expired: mint a new one")
    return subject
