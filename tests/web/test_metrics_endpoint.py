"""/metrics end to end: what the intake, a worker's processing, the sweep and the CLI did, in
one scrape; the backlog gauges; the METRICS_TOKEN."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from persistence.models import InboxEvent
from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from tests.conftest import WEBHOOK_AUTH
from tests.services.inbox_support import intake, set_row
from web.app import create_app


def scrape(client, **headers) -> dict[str, dict]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    text = response.data.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        exposed = name + ("_total" if family.type == "counter" else "")
        assert f"# HELP {exposed} " in text and f"# TYPE {exposed} {family.type}\n" in text
    return {f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples} for f in families.values()}


def test_a_purchase_through_intake_and_worker_shows_in_every_family(client, app, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    client.post("/webhooks/revenuecat", json={"event": {}}, headers={"Authorization": WEBHOOK_AUTH})
    client.post("/webhooks/revenuecat", json={}, headers={"Authorization": "wrong"})
    assert app.extensions["celery"].tasks["inbox.process"].apply(args=(inbox_id,)).get() == "processed"
    m = scrape(client)
    webhooks = m["engine_webhooks"]
    assert webhooks[("engine_webhooks_total", (("status", "received"), ("type", "INITIAL_PURCHASE")))] == 1
    assert webhooks[("engine_webhooks_total", (("status", "malformed"), ("type", "unknown")))] == 1
    assert webhooks[("engine_webhooks_total", (("status", "unauthorized"), ("type", "unknown")))] == 1
    assert m["engine_intake_seconds"][("engine_intake_seconds_count", ())] == 3
    assert m["engine_events"][("engine_events_total", (("outcome", "processed"),))] == 1
    assert m["engine_reconciles"][("engine_reconciles_total", (("cause", "event"),))] == 1
    assert m["engine_purchase_to_access_seconds"][("engine_purchase_to_access_seconds_count", ())] == 1
    assert m["engine_provider_requests"][("engine_provider_requests_total", (("status", "2xx"),))] >= 1
    ok = m["engine_provider_request_seconds"][("engine_provider_request_seconds_count", (("outcome", "ok"),))]
    assert ok >= 1
    assert m["engine_inbox_backlog"][("engine_inbox_backlog", ())] == 0


def test_drift_from_the_sweep_and_the_cli_is_counted_by_kind(client, app, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_non_renewing("bob", "h01enb"))
    process_inbox_event(inbox_id, runtime.event_processing)
    tx = simulator.state.subscriber("bob")[1]["subscriber"]["non_subscriptions"]["h01enb"][0]["store_transaction_id"]
    simulator.state.refund("bob", tx)  # the refund's webhook is lost
    result = app.test_cli_runner().invoke(args=["reconcile-user", "bob"])
    assert result.exit_code == 0, result.output
    simulator.state.purchase_non_renewing("bob", "h01enb")  # lost again: the sweep finds it
    reconcile_customers(["bob"], runtime.sweep_reads)
    m = scrape(client)["engine_drift_repaired"]
    assert m[("engine_drift_repaired_total", (("kind", "missed_revocation"),))] == 1
    assert m[("engine_drift_repaired_total", (("kind", "missed_grant"),))] == 1


def test_backlog_gauges_say_how_long_the_oldest_webhook_waits(client, runtime, simulator):
    # stored and queued; no worker runs in this test
    inbox_id = intake(client, simulator.state.purchase_subscription("carol", "premium_monthly"))
    set_row(runtime, inbox_id, received_at=datetime.now(UTC) - timedelta(minutes=10))
    m = scrape(client)
    assert m["engine_inbox_backlog"][("engine_inbox_backlog", ())] == 1
    age = m["engine_inbox_oldest_unprocessed_age_seconds"][("engine_inbox_oldest_unprocessed_age_seconds", ())]
    assert 590 < age < 700
    assert (
        m["engine_provider_budget_limit"][("engine_provider_budget_limit", ())]
        == runtime.settings.provider_rate_per_minute
    )
    assert m["engine_inbox_events"][("engine_inbox_events", (("status", "received"),))] == 1
    with runtime.session_factory() as session:
        assert session.get(InboxEvent, inbox_id).status == "received"


def test_metrics_token_is_required_when_set(settings, runtime):
    app = create_app(settings.with_(metrics_token="scrape-secret"))
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200
    finally:
        app.extensions["engine_wiring"].close()
