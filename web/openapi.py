"""The OpenAPI 3.1 document of every route, served at ``GET /openapi.json``.

Kept as data beside the code it describes; tests/client/test_openapi.py checks that every route
of the app is documented and fuzzes the app against this document (schemathesis).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from engine.client_flows import (
    MAX_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    MAX_USER_TOKEN_TTL_S,
    MIN_USER_TOKEN_TTL_S,
    NO_CONTROL_PATTERN,
    STATUS_PATTERN,
    TRANSACTION_DATE_PATTERN,
)

bp = Blueprint("openapi", __name__)

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ref("Error"), description, headers)


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

APP_USER_ID = {
    "name": "app_user_id",
    "in": "path",
    "required": True,
    "description": "The app's user id (RevenueCat App User ID): 1-255 characters, no control characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": NO_CONTROL_PATTERN},
}

NO_SUCH_USER_PATH = {"404": _error("No such route: e.g. an app_user_id with a line break does not match the path.")}

AUTH_REFUSALS = {
    "401": _error("No acceptable bearer token: missing, wrong, malformed or expired (`WWW-Authenticate: Bearer`)."),
    "403": _error("A valid user token asking about another user, or for something only the API token may do."),
}

TIME = {"type": ["string", "null"], "format": "date-time"}
# Holds a character that Python's str.strip() keeps (ECMA's \s lacks \x1c-\x1f and \x85).
NOT_BLANK = "[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": NO_CONTROL_PATTERN}
OPTIONAL_TEXT = {"type": ["string", "null"], "maxLength": MAX_ID_LENGTH, "pattern": NO_CONTROL_PATTERN}
TOKEN = {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_LENGTH}
OPTIONAL_TOKEN = {"type": ["string", "null"], "maxLength": MAX_TOKEN_LENGTH}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Access": {
        "type": "object",
        "required": ["resource", "mode", "expires_at", "source"],
        "properties": {
            "resource": {"type": "string", "examples": ["course:H01ENB"]},
            "mode": {"type": "string", "examples": ["paid"]},
            "expires_at": {**TIME, "description": "null: no expiry (until refunded or revoked)"},
            "source": {
                "type": "object",
                "required": ["transactions"],
                "properties": {"transactions": {"type": "array", "items": {"type": "string"}}},
            },
        },
    },
    "AccessAnswer": {
        "type": "object",
        "required": ["app_user_id", "as_of", "access"],
        "properties": {
            "app_user_id": {"type": "string"},
            "as_of": {"type": "string", "format": "date-time"},
            "access": {"type": "array", "items": _ref("Access")},
        },
    },
    "Change": {
        "type": "object",
        "required": ["action", "resource", "before", "after"],
        "properties": {
            "action": {"enum": ["grant", "extend", "shorten", "change_mode", "revoke"]},
            "resource": {"type": "string"},
            "before": {"oneOf": [{"type": "null"}, _ref("AccessSide")]},
            "after": {"oneOf": [{"type": "null"}, _ref("AccessSide")]},
        },
    },
    "AccessSide": {
        "type": "object",
        "required": ["mode", "expires_at"],
        "properties": {"mode": {"type": "string"}, "expires_at": TIME},
    },
    "SyncAnswer": {
        "type": "object",
        "required": ["app_user_id", "as_of", "access", "changes", "synced_at", "reused", "previous_owners_reconciled"],
        "properties": {
            "app_user_id": {"type": "string"},
            "as_of": {"type": "string", "format": "date-time"},
            "access": {"type": "array", "items": _ref("Access")},
            "changes": {"type": "array", "items": _ref("Change"), "description": "What the sync changed."},
            "synced_at": {"type": "string", "format": "date-time", "description": "When the provider was read."},
            "reused": {
                "type": "boolean",
                "description": "true: a sync of the last few seconds was reused (access is read now).",
            },
            "previous_owners_reconciled": {
                "type": "integer",
                "minimum": 0,
                "description": "Other users a restore moved purchases away from; their access was reconciled too.",
            },
        },
    },
    "ValidationRequest": {
        "type": "object",
        "required": ["product_id", "purchase_id", "status", "platform", "app_user_id"],
        "description": "Android sends `purchase_token`, iOS `receipt_data`.",
        "properties": {
            "product_id": {**ID, "examples": ["h01enb", "me.hypnoelp.app.h01enb"]},
            "purchase_id": {**ID, "examples": ["GPA.1234-5678-9012", "1000000123456789"]},
            "transaction_date": {
                "oneOf": [
                    {"type": "string", "pattern": TRANSACTION_DATE_PATTERN},
                    {"type": "integer", "minimum": 0, "maximum": 10**14 - 1},
                    {"type": "null"},
                ],
                "description": "Epoch milliseconds (the apps send a string).",
                "examples": ["1703347200000"],
            },
            "status": {
                "type": "string",
                "pattern": STATUS_PATTERN,
                "examples": ["PurchaseStatus.purchased", "PurchaseStatus.pending", "PurchaseStatus.restored"],
                "description": "purchased / restored: validated; pending / deferred (Ask to Buy): answered pending; "
                "error / failed / canceled: refused. Any `Enum.` prefix; the word in lower, UPPER or Capitalized case.",
            },
            "platform": {"enum": ["android", "ios"]},
            "purchase_token": OPTIONAL_TOKEN,
            "receipt_data": OPTIONAL_TOKEN,
            "course_code": OPTIONAL_TEXT,
            "voice": OPTIONAL_TEXT,
            "app_user_id": ID,
        },
        "allOf": [
            {
                "if": {"properties": {"platform": {"const": "android"}}},
                "then": {"required": ["purchase_token"], "properties": {"purchase_token": TOKEN}},
            },
            {
                "if": {"properties": {"platform": {"const": "ios"}}},
                "then": {"required": ["receipt_data"], "properties": {"receipt_data": TOKEN}},
            },
        ],
    },
    "ValidationSuccess": {
        "type": "object",
        "required": ["status", "message", "acknowledged", "course"],
        "properties": {
            "status": {"const": "success"},
            "message": {"type": "string"},
            "acknowledged": {"const": True},
            "course": {
                "type": "object",
                "required": ["course_code", "title", "voice", "purchased_at"],
                "properties": {
                    "course_code": {"type": ["string", "null"]},
                    "title": {"type": "string"},
                    "voice": {"type": ["string", "null"]},
                    "purchased_at": TIME,
                },
            },
            "product": {"type": "string", "description": "The catalog's product name."},
            "transaction_id": {"type": "string"},
            "access": {"type": "array", "items": _ref("Access")},
        },
    },
    "ValidationRefusal": {
        "type": "object",
        "required": ["status", "acknowledged", "reason", "message", "retryable"],
        "description": "Do not acknowledge the store purchase. `retryable: true`: validate again later.",
        "properties": {
            "status": {"enum": ["pending", "failed"]},
            "acknowledged": {"const": False},
            "reason": {
                "type": "string",
                "examples": [
                    "purchase_pending",
                    "purchase_not_completed",
                    "unknown_product",
                    "invalid_receipt",
                    "receipt_in_use",
                    "not_granted",
                    "sandbox_purchase",
                    "provider_unavailable",
                    "invalid_request",
                ],
            },
            "error": {"type": "string"},
            "message": {"type": "string"},
            "retryable": {"type": "boolean"},
            "problems": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "TokenRequest": {
        "type": "object",
        "properties": {
            "ttl_s": {
                "type": "integer",
                "minimum": MIN_USER_TOKEN_TTL_S,
                "maximum": MAX_USER_TOKEN_TTL_S,
                "default": 900,
            }
        },
    },
    "TokenAnswer": {
        "type": "object",
        "required": ["token", "token_type", "app_user_id", "expires_in", "expires_at"],
        "properties": {
            "token": {"type": "string"},
            "token_type": {"const": "Bearer"},
            "app_user_id": {"type": "string"},
            "expires_in": {"type": "integer"},
            "expires_at": {"type": "string", "format": "date-time"},
        },
    },
    "WebhookBody": {
        "type": "object",
        "required": ["event"],
        "properties": {
            "event": {
                "type": "object",
                "required": ["id", "type"],
                "properties": {
                    "id": {"type": "string", "maxLength": 200, "pattern": NOT_BLANK},
                    "type": {"type": "string", "maxLength": 64, "pattern": NOT_BLANK, "examples": ["INITIAL_PURCHASE"]},
                },
            },
        },
    },
    "WebhookStored": {
        "type": "object",
        "required": ["status", "duplicate", "inbox_id"],
        "properties": {
            "status": {"type": "string", "examples": ["received", "ignored", "duplicate"]},
            "duplicate": {"type": "boolean"},
            "inbox_id": {"type": ["integer", "null"]},
        },
    },
    "WebhookMalformed": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "inbox_id": {"type": ["integer", "null"]},
        },
    },
}

PATHS: dict[str, Any] = {
    "/webhooks/revenuecat": {
        "post": {
            "operationId": "revenuecatWebhook",
            "summary": "RevenueCat webhook intake: stored durably, then processed by a worker.",
            "security": [{"webhookAuth": []}],
            "requestBody": {
                "required": True,
                "description": 'A RevenueCat webhook (`{"api_version", "event": {"id", "type", ...}}`), at most 256 KiB.',
                "content": {JSON: {"schema": _ref("WebhookBody")}},
            },
            "responses": {
                "200": _json(_ref("WebhookStored"), "Stored (duplicates too)."),
                "400": _json(_ref("WebhookMalformed"), "Not a RevenueCat event (kept for inspection)."),
                "401": _error("The Authorization header does not match REVENUECAT_WEBHOOK_AUTH."),
                "413": _error("Body too large."),
                "503": _error("Cannot store now (or REVENUECAT_WEBHOOK_AUTH unset): RevenueCat retries."),
            },
        }
    },
    "/v1/users/{app_user_id}/access": {
        "get": {
            "operationId": "getAccess",
            "summary": "The user's current access; long-polls with `wait`.",
            "security": [{"apiToken": []}, {"userToken": []}],
            "parameters": [
                APP_USER_ID,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Seconds to wait for the access to change before answering (more than 30 waits 30).",
                    "schema": {"type": "number", "minimum": 0},
                },
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "The ETag of an earlier answer: with `wait`, answer as soon as the access differs from it "
                    "(without it: from the access when the request arrived).",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _json(
                    _ref("AccessAnswer"),
                    "Current access (the access changed, or `wait` ran out).",
                    {
                        "ETag": {
                            "description": "Version of this access list (pass it as `since`).",
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "400": _error("Invalid app_user_id or wait."),
                **NO_SUCH_USER_PATH,
                **AUTH_REFUSALS,
            },
        }
    },
    "/v1/users/{app_user_id}/sync": {
        "post": {
            "operationId": "syncUser",
            "summary": "Sync with the provider now (restore purchases); answers access and what changed.",
            "description": "Draws on the provider budget before the sweep. Calls within a few seconds of the last sync "
            "reuse it. A restore that moved purchases here revokes them from their previous owner.",
            "security": [{"apiToken": []}, {"userToken": []}],
            "parameters": [APP_USER_ID],
            "responses": {
                "200": _json(_ref("SyncAnswer"), "Synced."),
                "400": _error("Invalid app_user_id."),
                **NO_SUCH_USER_PATH,
                **AUTH_REFUSALS,
                "502": _error("The provider refused this user id."),
                "503": _error(
                    "The provider (or its budget, or the database) cannot serve now; the user is synced soon.",
                    RETRY_AFTER,
                ),
            },
        }
    },
    "/v1/users/{app_user_id}/token": {
        "post": {
            "operationId": "mintUserToken",
            "summary": "Mint a short-lived bearer token for this user only (API token required).",
            "security": [{"apiToken": []}],
            "parameters": [APP_USER_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": _ref("TokenRequest")}}},
            "responses": {
                "201": _json(_ref("TokenAnswer"), "The token."),
                "400": _error("Invalid app_user_id or ttl_s."),
                **NO_SUCH_USER_PATH,
                **AUTH_REFUSALS,
                "503": _error("USER_TOKEN_SECRET is not set."),
            },
        }
    },
    "/v1/purchases/validate": {
        "post": {
            "operationId": "validatePurchase",
            "summary": "Validate a store purchase before the app acknowledges it.",
            "description": "Sends the receipt to the provider, reconciles the user and answers `acknowledged: true` only "
            "once access is granted. Validating the same purchase again answers the same, with no second credit.",
            "security": [{"apiToken": []}, {"userToken": []}],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ValidationRequest")}}},
            "responses": {
                "200": _json(_ref("ValidationSuccess"), "Access granted: acknowledge the purchase."),
                "202": _json(
                    _ref("ValidationRefusal"), "Pending (Android PENDING, iOS Ask to Buy): nothing granted yet."
                ),
                "400": _json(_ref("ValidationRefusal"), "Malformed payload (`problems` names each field)."),
                **AUTH_REFUSALS,
                "413": _error("Body too large."),
                "422": _json(
                    _ref("ValidationRefusal"), "Refused (invalid receipt, unknown product, nothing granted...)."
                ),
                "503": _json(_ref("ValidationRefusal"), "Cannot check now: validate again later.", RETRY_AFTER),
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness.",
            "security": [],
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}, "Alive."
                )
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: database and broker.",
            "security": [],
            "responses": {
                status: _json(
                    {
                        "type": "object",
                        "required": ["status", "checks"],
                        "properties": {
                            "status": {"enum": ["ready", "not_ready"]},
                            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                    text,
                )
                for status, text in (("200", "Ready."), ("503", "Not ready."))
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (a bearer token when METRICS_TOKEN is set).",
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("METRICS_TOKEN is set and the bearer token is missing or wrong."),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Entitlement reconciliation engine",
        "version": "1.0.0",
        "description": "Keeps every user's granted access equal to what the provider (RevenueCat) says they paid for.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "apiToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <API_TOKEN>` (the operator).",
            },
            "userToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A short-lived token for one app_user_id (`POST /v1/users/{app_user_id}/token`).",
            },
            "webhookAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "The exact value configured in RevenueCat (REVENUECAT_WEBHOOK_AUTH).",
            },
        },
    },
    "security": [{"apiToken": []}],
}


def flask_rule_to_path(rule: str) -> str:
    """``/v1/users/<path:app_user_id>/access`` → ``/v1/users/{app_user_id}/access``."""
    import re

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(SPEC)
