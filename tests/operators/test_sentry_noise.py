"""What reaches Sentry is worth an operator's attention and quota: drift once per batch and
kind (a count and examples), an unknown product once, beat check-ins that create their own
monitors, and events from CLI commands marked as such."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from tasks.celery_app import create_celery
from tests.conftest import WEBHOOK_AUTH


def known_customer(client, runtime, simulator, user: str, product: str = "h01enb") -> dict:
    body = (
        simulator.state.purchase_non_renewing(user, product)
        if product in {"h01enb", "geometry_pack_30", "mystery_pack"}
        else simulator.state.purchase_subscription(user, product)
    )
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    process_inbox_event(response.json["inbox_id"], runtime.event_processing)
    return body


def events_about(sentry_events, word: str) -> list[dict]:
    return [e for e in sentry_events.items("event") if word in str(e.get("message") or e.get("logentry"))]


def test_drift_is_one_event_per_kind_per_batch_with_a_count_and_examples(client, runtime, simulator, sentry_events):
    courses = [known_customer(client, runtime, simulator, user) for user in ("ann", "ben", "cy")]
    known_customer(client, runtime, simulator, "dee", "premium_monthly")
    for user, course in zip(("ann", "ben", "cy"), courses, strict=True):
        simulator.state.refund(user, course["event"]["transaction_id"])  # refund webhooks lost
    simulator.state.purchase_non_renewing("dee", "geometry_pack_30")  # purchase webhook lost
    sentry_events.envelopes.clear()
    result = reconcile_customers(["ann", "ben", "cy", "dee"], runtime.sweep_reads)
    assert result.drift == {"missed_revocation": 3, "missed_grant": 1}
    drift = {e["tags"]["drift_kind"]: e for e in events_about(sentry_events, "drift repaired")}
    assert set(drift) == {"missed_revocation", "missed_grant"} and len(events_about(sentry_events, "drift")) == 2
    revocations = drift["missed_revocation"]["contexts"]["drift"]
    assert (revocations["repairs"], revocations["customers"]) == (3, 3)
    assert sorted(x["customer_id"] for x in revocations["examples"]) == ["ann", "ben", "cy"]
    assert revocations["examples"][0]["action"] == "revoke"
    assert drift["missed_grant"]["fingerprint"] == ["entitlement-drift", "missed_grant"]


def test_a_batch_reports_at_most_a_few_examples(client, runtime, simulator, sentry_events):
    users = [f"u{i}" for i in range(7)]
    courses = [known_customer(client, runtime, simulator, user) for user in users]
    for user, course in zip(users, courses, strict=True):
        simulator.state.refund(user, course["event"]["transaction_id"])
    sentry_events.envelopes.clear()
    reconcile_customers(users, runtime.sweep_reads)
    [event] = events_about(sentry_events, "drift repaired")
    assert event["contexts"]["drift"]["repairs"] == 7 and len(event["contexts"]["drift"]["examples"]) == 5


def test_an_unknown_product_is_reported_once(client, runtime, simulator, sentry_events, caplog):
    body = simulator.state.purchase_non_renewing("zed", "mystery_pack")
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    sentry_events.envelopes.clear()
    process_inbox_event(response.json["inbox_id"], runtime.event_processing)
    assert [e["message"] for e in sentry_events.items("event")] == ["unknown product mystery_pack"]
    assert "unknown products ['mystery_pack'] for zed" in caplog.text  # and one log line, as a warning


@pytest.mark.parametrize("openedx", [False, True])
def test_beat_check_ins_carry_their_monitor_configuration(settings, runtime, sentry_events, openedx):
    if openedx:  # the sink's outbox drain is a beat job too (nothing to send: no LMS call)
        settings = settings.with_(openedx_lms_url="http://127.0.0.1:9", openedx_api_key="k" * 20)
    app = create_celery(settings)
    jobs = {"sweep.run": "sweep", "inbox.redrive": "inbox-redrive"}
    jobs["grants.expire"] = "grants-expire"
    if openedx:
        jobs["lms.drain"] = "lms-drain"
    for name in jobs:
        app.tasks[name].apply().get()
    check_ins = {c["monitor_slug"]: c for c in sentry_events.items("check_in") if c["status"] == "in_progress"}
    assert set(check_ins) == set(jobs.values())
    for check_in in check_ins.values():
        config = check_in["monitor_config"]
        assert config["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}
        assert config["checkin_margin"] >= 1 and config["max_runtime"] >= 1 and config["timezone"] == "UTC"


def test_a_drain_for_one_customer_is_no_check_in(settings, runtime, sentry_events):
    settings = settings.with_(openedx_lms_url="http://127.0.0.1:9", openedx_api_key="k" * 20)
    create_celery(settings).tasks["lms.drain"].apply(args=("alice",)).get()
    assert sentry_events.items("check_in") == []


def test_events_from_a_cli_command_are_tagged_as_such(app, client, runtime, simulator, sentry_events):
    course = known_customer(client, runtime, simulator, "ann")
    simulator.state.refund("ann", course["event"]["transaction_id"])
    from sqlalchemy import update

    from persistence.models import Subscriber

    with runtime.session_factory() as session, session.begin():
        session.execute(update(Subscriber).values(next_check_ms=0))
    sentry_events.envelopes.clear()
    result = app.test_cli_runner().invoke(args=["sweep"])
    assert result.exit_code == 0, result.output
    [event] = events_about(sentry_events, "drift repaired")
    assert (event["tags"]["process"], event["tags"]["cli_command"]) == ("cli", "sweep")


@pytest.mark.parametrize(
    ("component", "loaded"),
    [
        ("worker", {"celery", "sqlalchemy", "redis"}),
        ("beat", {"celery", "sqlalchemy", "redis"}),
        ("cli", {"sqlalchemy", "redis"}),
        ("web", set()),
    ],
)
def test_celery_and_store_integrations_are_loaded_only_where_they_report(component, loaded):
    """A process that only sends tasks (the web) would pay for a queue span around each publish,
    for tracing that is off, and the web's store breadcrumbs would cost each request without
    ever reaching an event (the intake's writer records them in a scope of its own); a worker
    reports its tasks' failures, and the statements before them. Flask's and logging's are
    loaded everywhere. Sentry is set up once per process, so each kind is set up in its own."""
    script = (
        "import sentry_sdk\n"
        "from sentry_sdk.transport import Transport\n"
        "from config.observability import init_sentry\n"
        "from config.settings import Settings\n"
        "class Quiet(Transport):\n"
        "    def capture_envelope(self, envelope): pass\n"
        f"init_sentry(Settings.from_env({{}}), component={component!r}, transport=Quiet())\n"
        "print(' '.join(sorted(sentry_sdk.get_client().integrations)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    names = set(done.stdout.split())
    assert names & {"celery", "sqlalchemy", "redis"} == loaded
    assert {"flask", "logging"} <= names
