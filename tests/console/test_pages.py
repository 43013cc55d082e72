"""Console pages through the test client: filters, keyset pages, a webhook's story, a learner's
story, the drift report and its CSV, course mappings with the import's rules."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from persistence.models import AuditEntry, CourseMappingRow, OperatorAction
from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from tests.console.conftest import post
from tests.services.inbox_support import intake, set_row


def ids_on(page) -> list[int]:
    return [int(i) for i in re.findall(r'href="/console/inbox/(\d+)"', page.get_data(as_text=True))]


def test_inbox_filters_by_status_type_user_and_time(console, client, runtime, simulator):
    alice = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    bob = intake(client, simulator.state.purchase_non_renewing("bob", "h01enb"))
    old = intake(client, simulator.state.purchase_subscription("carol", "premium_monthly"))
    for inbox_id in (alice, bob, old):
        process_inbox_event(inbox_id, runtime.event_processing)
    set_row(runtime, old, received_at=datetime.now(UTC) - timedelta(days=3))
    set_row(runtime, bob, status="dead", last_error="TerminalError: boom")
    assert ids_on(console.get("/console/inbox")) == [old, bob, alice]
    assert ids_on(console.get("/console/inbox?status=dead")) == [bob]
    assert ids_on(console.get("/console/inbox?type=NON_RENEWING_PURCHASE")) == [bob]
    assert ids_on(console.get("/console/inbox?user=alice")) == [alice]
    assert ids_on(console.get("/console/inbox?within=24h")) == [bob, alice]
    until = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ids_on(console.get(f"/console/inbox?until={until}")) == [old]
    assert "TerminalError: boom" in console.get("/console/inbox?status=dead").text


def test_inbox_pages_by_key(console, client, simulator):
    stored = [intake(client, simulator.state.purchase_subscription(f"u{i}", "premium_monthly")) for i in range(55)]
    first = console.get("/console/inbox")
    assert ids_on(first) == sorted(stored, reverse=True)[:50]
    link = re.search(r'href="([^"]*before=\d+[^"]*)">Older', first.text)
    assert link, "no link to the next page"
    older = link.group(1).replace("&amp;", "&")
    assert ids_on(console.get(older)) == sorted(stored, reverse=True)[50:]


def test_a_webhook_shows_its_body_attempts_users_and_the_reconciles_it_caused(console, client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    process_inbox_event(inbox_id, runtime.event_processing)
    page = console.get(f"/console/inbox/{inbox_id}").text
    assert "INITIAL_PURCHASE" in page and "&#34;app_user_id&#34;: &#34;alice&#34;" in page
    assert 'href="/console/learners/alice"' in page
    assert "module:algebra" in page and "<b>grant</b>" in page  # the reconcile it caused
    assert console.get("/console/inbox/999999").status_code == 404


def test_a_learner_page_tells_the_whole_story(console, client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    process_inbox_event(inbox_id, runtime.event_processing)
    page = console.get("/console/learners/alice").text
    assert "module:algebra" in page  # access now
    assert "premium_monthly" in page  # ledger
    assert "INITIAL_PURCHASE:" in page  # audit cause
    assert f'href="/console/inbox/{inbox_id}"' in page  # the webhook that named her
    assert "Open edX sink is not configured" in page
    assert console.get("/console/learners?q=alice").location.endswith("/console/learners/alice")
    assert console.get("/console/learners/nobody").status_code == 404


def test_sync_now_reads_the_provider_converges_and_is_logged(console, runtime, simulator):
    simulator.state.purchase_subscription("alice", "premium_monthly")  # its webhook never came
    reconcile_customers(["alice"], runtime.sweep_reads)  # known, then the purchase below is missed too
    simulator.state.purchase_non_renewing("alice", "h01enb")
    response = post(console, "/console/learners/alice/sync", token_from="/console/learners/alice")
    assert response.status_code == 302
    page = console.get(response.location).text
    assert "Synced from the provider: grant course:H01ENB" in page
    with runtime.session_factory() as session:
        action = session.query(OperatorAction).filter_by(action="learner.sync").one()
    assert action.actor == "console:ada" and action.target == "alice"


def test_drift_report_and_a_csv_a_spreadsheet_cannot_execute(console, client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_non_renewing("=HYPERLINK(1)", "h01enb"))
    process_inbox_event(inbox_id, runtime.event_processing)
    tx = simulator.state.subscriber("=HYPERLINK(1)")[1]["subscriber"]["non_subscriptions"]["h01enb"][0]
    simulator.state.refund("=HYPERLINK(1)", tx["store_transaction_id"])
    reconcile_customers(["=HYPERLINK(1)"], runtime.sweep_reads)
    page = console.get("/console/drift?window=1h").text
    assert "missed_revocation" in page and "=HYPERLINK(1)" in page
    response = console.get("/console/drift.csv?window=1h&kind=missed_revocation")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert (
        len(rows) == 1 and rows[0]["customer_id"] == "'=HYPERLINK(1)" and rows[0]["drift_kind"] == "missed_revocation"
    )
    assert rows[0]["at"].endswith("Z")


def test_overview_counts_the_window_only(console, client, runtime, simulator):
    recent = intake(client, simulator.state.purchase_subscription("alice", "premium_monthly"))
    old = intake(client, simulator.state.purchase_subscription("bob", "premium_monthly"))
    process_inbox_event(recent, runtime.event_processing)
    set_row(runtime, old, received_at=datetime.now(UTC) - timedelta(hours=3))
    hour = console.get("/console/?window=1h").text
    day = console.get("/console/?window=24h").text
    assert re.search(r'id="kpi-received">1<', hour) and re.search(r'id="kpi-received">2<', day)
    assert re.search(r'id="kpi-success">100.00%<', hour)
    assert re.search(r'id="kpi-inbox-backlog">1<', hour)  # bob's webhook still waits
    with runtime.session_factory() as session:
        assert session.query(AuditEntry).count() == 1


def test_mappings_add_edit_delete_with_the_import_rules(console, runtime):
    form = {
        "creating": "1",
        "resource": "course:H01ENB",
        "course_run_id": "course-v1:Org+H01ENB+2024",
        "mode": "professional",
        "active": "true",
        "on_revoke": "audit",
    }
    assert post(console, "/console/mappings", form, token_from="/console/mappings/new").status_code == 302
    again = post(console, "/console/mappings", form, token_from="/console/mappings/new")
    assert again.status_code == 422 and "already mapped: edit it instead" in again.text
    bad = {**form, "creating": "0", "mode": "audit", "course_run_id": "nope", "resource": "course:H01ENB"}
    page = post(console, "/console/mappings", bad, token_from="/console/mappings/new")
    assert page.status_code == 422
    assert re.search(r'id="error-course_run_id">course_run_id &#39;nope&#39; is not an Open edX course key', page.text)
    assert re.search(r'id="error-mode">mode &#39;audit&#39; is free', page.text)
    unknown = post(
        console, "/console/mappings", {**form, "resource": "course:NOPE"}, token_from="/console/mappings/new"
    )
    assert re.search(r'id="error-resource">resource &#39;course:NOPE&#39; is not granted', unknown.text)
    edited = post(
        console, "/console/mappings", {**form, "creating": "0", "mode": "verified"}, token_from="/console/mappings/new"
    )
    assert edited.status_code == 302
    with runtime.session_factory() as session:
        assert session.get(CourseMappingRow, "course:H01ENB").mode == "verified"
    assert post(console, "/console/mappings/course:H01ENB/delete", token_from="/console/mappings").status_code == 302
    with runtime.session_factory() as session:
        assert session.get(CourseMappingRow, "course:H01ENB") is None
        logged = [
            a.action
            for a in session.query(OperatorAction)
            .filter(OperatorAction.action.like("mapping.%"))
            .order_by(OperatorAction.id)
        ]
    assert logged == ["mapping.create", "mapping.update", "mapping.delete"]


def test_import_previews_before_writing_and_export_round_trips(console, runtime):
    text = "resource,course_run_id,mode\ncourse:H01ENB,course-v1:Org+H01ENB+2024,professional\n"
    preview = post(console, "/console/mappings/import", {"text": text}, token_from="/console/mappings/import")
    assert preview.status_code == 200 and "Preview: nothing is written yet" in preview.text
    with runtime.session_factory() as session:
        assert session.query(CourseMappingRow).count() == 0
    done = post(
        console, "/console/mappings/import", {"text": text, "confirm": "1"}, token_from="/console/mappings/import"
    )
    assert done.status_code == 302
    exported = console.get("/console/mappings.csv").get_data(as_text=True)
    assert "course:H01ENB,course-v1:Org+H01ENB+2024,professional,true,,audit" in exported
    broken = "resource,course_run_id,mode\ncourse:H01ENB,nope,audit\n"
    problems = post(console, "/console/mappings/import", {"text": broken}, token_from="/console/mappings/import")
    assert problems.status_code == 422 and "line 2" not in problems.text and ">2</td>" in problems.text
