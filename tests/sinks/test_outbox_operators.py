"""Operators and the LMS outbox: ``outbox list|retry`` and the console's outbox page. A failed
change is put back in line only while it is still the latest for its learner and course."""

from __future__ import annotations

import json

from werkzeug.security import generate_password_hash

from persistence.models import OperatorAction, SinkOutboxRow
from tests.console.conftest import ADMIN, ADMIN_PASSWORD, SECRET, csrf_token, sign_in
from tests.sinks.conftest import COURSE, drain, map_course, one_time_tx, sync
from web.app import create_app


def outbox_rows(rt) -> list[SinkOutboxRow]:
    with rt.session_factory() as session:
        return list(session.query(SinkOutboxRow).order_by(SinkOutboxRow.id))


def failed_for_an_unknown_learner(lms_runtime, simulator) -> None:
    """dave bought the course but has no LMS account yet: the enrollment fails for good."""
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("dave", "h01enb")
    sync(lms_runtime, "dave")
    assert drain(lms_runtime).failed == 1


def test_list_and_retry_a_failed_change_once_its_cause_is_fixed(lms_runtime, lms_settings, lms, simulator):
    failed_for_an_unknown_learner(lms_runtime, simulator)
    runner = create_app(lms_settings).test_cli_runner()
    listed = runner.invoke(args=["outbox", "list", "--status", "failed", "--json"])
    (row,) = [json.loads(line) for line in listed.output.splitlines()]
    assert row["customer_id"] == "dave" and row["course_run_id"] == COURSE and row["status"] == "failed"
    assert "dave" in runner.invoke(args=["outbox", "list"]).output
    assert runner.invoke(args=["outbox", "retry"]).exit_code == 2  # neither ids nor --all-failed
    lms.state.add_user("dave")
    retried = runner.invoke(args=["outbox", "retry", str(row["id"]), "--actor", "ops:sam"])
    assert retried.exit_code == 0 and f"retried 1 failed row(s): {row['id']}" in retried.output
    assert [r.status for r in outbox_rows(lms_runtime)] == ["pending"]
    assert drain(lms_runtime).sent == 1
    assert lms.state.enrollment("dave", COURSE) is not None
    with lms_runtime.session_factory() as session:
        assert session.query(OperatorAction).filter_by(action="outbox.retry").one().actor == "ops:sam"


def test_a_superseded_failure_is_left_as_it_is(lms_runtime, lms_settings, simulator):
    failed_for_an_unknown_learner(lms_runtime, simulator)
    simulator.state.refund("dave", one_time_tx(simulator, "dave"))
    sync(lms_runtime, "dave")  # the revocation comes after the failed enrollment (nothing to revoke)
    assert drain(lms_runtime).sent == 1
    older, _newer = outbox_rows(lms_runtime)
    result = create_app(lms_settings).test_cli_runner().invoke(args=["outbox", "retry", "--all-failed"])
    assert "retried 0 failed row(s)" in result.output
    assert f"supersedes them: {older.id}" in result.output
    assert [r.status for r in outbox_rows(lms_runtime)] == ["failed", "done"]  # no enrollment sent after its refund


def test_the_console_lists_the_outbox_and_an_admin_retries(lms_runtime, lms_settings, lms, simulator):
    failed_for_an_unknown_learner(lms_runtime, simulator)
    users = f"{ADMIN}:admin:{generate_password_hash(ADMIN_PASSWORD, method='pbkdf2:sha256:1000')}"
    app = create_app(lms_settings.with_(console_users=users, console_secret_key=SECRET))
    try:
        client = app.test_client()
        sign_in(client, ADMIN, ADMIN_PASSWORD)
        page = client.get("/console/outbox?status=failed").text
        assert "dave" in page and "Retry every failed change" in page
        assert "Changes sent (outbox)" in client.get("/console/learners/dave").text
        lms.state.add_user("dave")
        token = csrf_token(client, "/console/outbox?status=failed")
        response = client.post("/console/outbox/retry", data={"csrf_token": token, "status": "failed"})
        assert response.status_code == 302
        assert "1 failed LMS changes put back in line" in client.get(response.location).text
        assert [r.status for r in outbox_rows(lms_runtime)] == ["pending"]
        read_back = client.get("/console/learners/dave?lms=read").text
        assert "not enrolled" in read_back  # not drained yet: the LMS has nothing
    finally:
        app.extensions["engine_wiring"].close()
