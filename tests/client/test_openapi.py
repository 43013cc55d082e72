"""The OpenAPI document covers every route and the app keeps to it (schemathesis, offline).

The document is generated from the routes' pydantic schemas (web/openapi.py); each test stands
alone (no test relies on another having run).
"""

from __future__ import annotations

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from tests.client.support import OPERATOR, WEBHOOK
from web.app import register_routes
from web.openapi import flask_rule_to_path, openapi_spec

MAX_EXAMPLES = 30


def routes_only() -> Flask:
    """An app with the API's routes and nothing behind them: enough to build the document."""
    app = Flask("documented-routes")
    register_routes(app)
    return app


SPEC = openapi_spec(routes_only())


def test_every_route_is_documented_with_its_methods(app):
    documented = {path: {m.upper() for m in ops} for path, ops in SPEC["paths"].items()}
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the operator console is HTML pages for people, not the HTTP API
        served.setdefault(flask_rule_to_path(rule.rule), set()).update(rule.methods - {"HEAD", "OPTIONS"})
    assert served == documented


def test_the_document_is_served_and_built_from_the_schemas(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.json == SPEC
    schemas = response.json["components"]["schemas"]
    assert {"ValidationPayload", "AndroidPurchase", "IosPurchase", "SyncAnswer", "TokenRequest", "ErrorAnswer"} <= set(
        schemas
    )
    validate = response.json["paths"]["/v1/purchases/validate"]["post"]
    assert validate["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationPayload"
    }
    assert {"200", "202", "400", "422", "429", "503"} <= set(validate["responses"])
    [user] = response.json["paths"]["/v1/users/{app_user_id}/sync"]["post"]["parameters"]
    assert user["schema"]["maxLength"] == 255 and user["schema"]["minLength"] == 1


def test_the_fuzzing_stays_bounded():
    operations = sum(len(ops) for ops in SPEC["paths"].values())
    assert 0 < operations * MAX_EXAMPLES <= 600


schema = schemathesis.openapi.from_dict(SPEC)
# A body over the size limit is refused with 413 before it is read: a rejection like a 400. (Long
# enough invalid tokens of multi-byte characters pass the limit; which examples are drawn varies
# with the test session, so without this the test failed or passed with the set of test files.)
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_app_keeps_to_its_openapi_document(case, live_server):
    wait = (case.query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0.2:
        case.query["wait"] = 0.2  # keep long-polls short; the wait itself is tested elsewhere
    headers = WEBHOOK if case.path == "/webhooks/revenuecat" else OPERATOR
    excluded = []
    if case.path == "/v1/purchases/validate":
        # A well-formed purchase is refused (422) when its receipt is invalid or its product unknown.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(base_url=live_server, headers={**(case.headers or {}), **headers}, excluded_checks=excluded)
