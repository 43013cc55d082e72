"""The OpenAPI document covers every route and the app keeps to it (schemathesis, offline)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from tests.client.support import OPERATOR, WEBHOOK
from web.openapi import SPEC, flask_rule_to_path

REQUESTS: list[str] = []


def test_every_route_is_documented_with_its_methods(app):
    documented = {path: {m.upper() for m in ops} for path, ops in SPEC["paths"].items()}
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the operator console is HTML pages for people, not the HTTP API
        served.setdefault(flask_rule_to_path(rule.rule), set()).update(rule.methods - {"HEAD", "OPTIONS"})
    assert served == documented


def test_the_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.json == SPEC


schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_app_keeps_to_its_openapi_document(case, live_server):
    wait = (case.query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0.2:
        case.query["wait"] = 0.2  # keep long-polls short; the wait itself is tested elsewhere
    headers = WEBHOOK if case.path == "/webhooks/revenuecat" else OPERATOR
    excluded = []
    if case.path == "/v1/purchases/validate":
        # A well-formed purchase is refused (422) when its receipt is invalid or its product unknown.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    REQUESTS.append(f"{case.method} {case.path}")
    case.call_and_validate(base_url=live_server, headers={**(case.headers or {}), **headers}, excluded_checks=excluded)


def test_the_fuzzing_stays_bounded():
    assert 0 < len(REQUESTS) <= 600, len(REQUESTS)
