"""The schema of every request and answer of the HTTP API (pydantic v2).

One model per request and answer: it validates what comes in (web/payloads.py), builds what
goes out (web/answers.py), and is the OpenAPI document's schema (web/openapi.py, through
spectree). The vocabulary (id lengths, purchase statuses, platforms) is the engine's
(engine/client_flows.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from engine.client_flows import (
    MAX_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    NO_CONTROL_PATTERN,
    STATUS_PATTERN,
    TRANSACTION_DATE_PATTERN,
)
from web.tokens import DEFAULT_USER_TOKEN_TTL_S, MAX_USER_TOKEN_TTL_S, MIN_USER_TOKEN_TTL_S

# Holds a character that Python's str.strip() keeps (ECMA's \s lacks \x1c-\x1f and \x85).
_NOT_BLANK = "[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

AppUserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL_PATTERN),
    Field(description="The app's user id (RevenueCat App User ID): 1-255 characters, no control characters."),
]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL_PATTERN)]
OptionalText = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH, pattern=NO_CONTROL_PATTERN)] | None
StoreToken = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN_LENGTH)]
OptionalStoreToken = Annotated[str, StringConstraints(max_length=MAX_TOKEN_LENGTH)] | None
Instant = Annotated[str, Field(json_schema_extra={"format": "date-time"})]  # ISO 8601, UTC, ms, "Z"


def _whole_number(value: Any) -> Any:
    """900.0 is an integer to JSON Schema: take it as 900 (strict mode refuses floats otherwise)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _json_number(value: Any) -> Any:
    """A query string holds a number only in JSON's own syntax (no ' 5', '1_0', 'inf')."""
    if isinstance(value, str) and not _JSON_NUMBER.fullmatch(value):
        raise ValueError("a number of seconds, e.g. 2.5")
    return value


class _Strict(BaseModel):
    # JSON types only: "60" is not an integer, 1 is not a string, true is not a number.
    model_config = ConfigDict(strict=True, extra="ignore")


# ----- errors ---------------------------------------------------------------------------------


class ErrorAnswer(BaseModel):
    """Every error answer of every route (and any status the route does not list)."""

    error: str = Field(examples=["invalid_request"])
    message: str


# ----- access and sync ------------------------------------------------------------------------


class AccessSource(BaseModel):
    transactions: list[str]


class AccessEntry(BaseModel):
    resource: str = Field(examples=["course:H01ENB"])
    mode: str = Field(examples=["paid"])
    expires_at: Instant | None = Field(description="null: no expiry (until refunded or revoked)")
    source: AccessSource


class AccessQuery(BaseModel):
    """The query of GET /v1/users/<id>/access (query strings are text: numbers are parsed)."""

    wait: Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_json_number)] | SkipJsonSchema[None] = (
        Field(
            default=None,
            description="Seconds to wait for the access to change before answering (more than 30 waits 30).",
        )
    )
    since: str | SkipJsonSchema[None] = Field(
        default=None,
        description="The ETag of an earlier answer: with `wait`, answer as soon as the access differs from it "
        "(without it: from the access when the request arrived).",
    )


class AccessAnswer(BaseModel):
    app_user_id: str
    as_of: Instant
    access: list[AccessEntry]


class AccessSide(BaseModel):
    mode: str
    expires_at: Instant | None


class Change(BaseModel):
    action: Literal["grant", "extend", "shorten", "change_mode", "revoke"]
    resource: str
    before: AccessSide | None
    after: AccessSide | None


class SyncAnswer(AccessAnswer):
    changes: list[Change] = Field(description="What the sync changed.")
    synced_at: Instant = Field(description="When the provider was read.")
    reused: bool = Field(description="true: a sync of the last few seconds was reused (access is read now).")
    previous_owners_reconciled: int = Field(
        ge=0, description="Other users a restore moved purchases away from; their access was reconciled too."
    )


# ----- purchase validation --------------------------------------------------------------------

TransactionDate = (
    Annotated[str, StringConstraints(pattern=TRANSACTION_DATE_PATTERN)]
    | Annotated[int, Field(ge=0, le=10**14 - 1)]
    | None
)
PurchaseStatus = Annotated[
    str,
    StringConstraints(pattern=STATUS_PATTERN),
    Field(
        description="purchased / restored: validated; pending / deferred (Ask to Buy): answered pending; "
        "error / failed / canceled: refused. Any `Enum.` prefix; the word in lower, UPPER or Capitalized case.",
        examples=["PurchaseStatus.purchased", "PurchaseStatus.pending", "PurchaseStatus.restored"],
    ),
]


class _Purchase(_Strict):
    product_id: Id = Field(examples=["h01enb", "me.hypnoelp.app.h01enb"])
    purchase_id: Id = Field(examples=["GPA.1234-5678-9012", "1000000123456789"])
    transaction_date: TransactionDate = Field(
        default=None, description="Epoch milliseconds (the apps send a string).", examples=["1703347200000"]
    )
    status: PurchaseStatus
    course_code: OptionalText = None
    voice: OptionalText = None
    app_user_id: AppUserId

    @property
    def transaction_ms(self) -> int | None:
        return None if self.transaction_date is None else int(self.transaction_date)


class AndroidPurchase(_Purchase):
    """A Google Play purchase: its purchase token."""

    platform: Literal["android"]
    purchase_token: StoreToken
    receipt_data: OptionalStoreToken = None

    @property
    def fetch_token(self) -> str:
        return self.purchase_token


class IosPurchase(_Purchase):
    """An App Store purchase: the app receipt."""

    platform: Literal["ios"]
    receipt_data: StoreToken
    purchase_token: OptionalStoreToken = None

    @property
    def fetch_token(self) -> str:
        return self.receipt_data


class ValidationPayload(RootModel[Annotated[AndroidPurchase | IosPurchase, Field(discriminator="platform")]]):
    """A client app's store purchase: Android sends `purchase_token`, iOS `receipt_data`."""


class PurchasedCourse(BaseModel):
    course_code: str | None
    title: str
    voice: str | None
    purchased_at: Instant | None


class ValidationSuccess(BaseModel):
    """Access granted: the app may now complete (acknowledge) the store purchase."""

    status: Literal["success"]
    message: str
    acknowledged: Literal[True]
    course: PurchasedCourse
    product: str = Field(description="The catalog's product name.")
    transaction_id: str
    access: list[AccessEntry]


class ValidationRefusal(BaseModel):
    """Do not acknowledge the store purchase (the store refunds it). `retryable: true`: validate again later."""

    status: Literal["pending", "failed"]
    acknowledged: Literal[False]
    reason: str = Field(
        examples=[
            "purchase_pending",
            "purchase_not_completed",
            "unknown_product",
            "invalid_receipt",
            "receipt_in_use",
            "not_granted",
            "sandbox_purchase",
            "provider_unavailable",
            "too_many_requests",
            "invalid_request",
        ]
    )
    error: str
    message: str
    retryable: bool
    problems: dict[str, str] = Field(default_factory=dict, description="invalid_request: what is wrong, by field.")


# ----- user tokens ----------------------------------------------------------------------------


class TokenRequest(_Strict):
    ttl_s: Annotated[int, BeforeValidator(_whole_number)] = Field(
        default=DEFAULT_USER_TOKEN_TTL_S, ge=MIN_USER_TOKEN_TTL_S, le=MAX_USER_TOKEN_TTL_S
    )


class TokenAnswer(BaseModel):
    token: str
    token_type: Literal["Bearer"]
    app_user_id: str
    expires_in: int
    expires_at: Instant


# ----- webhooks and health --------------------------------------------------------------------


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Annotated[str, StringConstraints(max_length=200, pattern=_NOT_BLANK)]
    type: Annotated[str, StringConstraints(max_length=64, pattern=_NOT_BLANK)] = Field(examples=["INITIAL_PURCHASE"])


class WebhookBody(BaseModel):
    """A RevenueCat webhook (`{"api_version", "event": {"id", "type", ...}}`), at most 256 KiB."""

    model_config = ConfigDict(extra="allow")

    event: WebhookEvent


class WebhookStored(BaseModel):
    status: str = Field(examples=["received", "ignored", "duplicate"])
    duplicate: bool
    inbox_id: int | None


class WebhookMalformed(ErrorAnswer):
    inbox_id: int | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""
