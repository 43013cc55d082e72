"""Upgrade deadlines and enrollment end, through the outbox against the fake LMS over HTTP: the
credential the LMS accepts is chosen per call; where none can, the change is refused with its
own kind, alerted, counted and shown to operators, never a silent failed row."""

from __future__ import annotations

import json

from sqlalchemy import select

from persistence.audit import drift_report
from persistence.models import AuditEntry, SinkOutboxRow
from services.clock import wall_clock_ms
from services.outbox import repair_lms_drift
from tests.sinks.conftest import drain, map_course, sync

RUN = "course-v1:HypnoElp+H01ENB+2023"  # verified, upgrade deadline an hour ago
DEADLINE_PASSED = "lms_upgrade_deadline_passed"


def deadline_passed_run(lms) -> None:
    lms.state.add_course(RUN, modes=("audit", "verified"), deadlines={"verified": lms.state.clock() - 3600})


def bought(rt, simulator, user: str = "bob") -> None:
    simulator.state.purchase_non_renewing(user, "h01enb")
    sync(rt, user)


def rows(rt) -> list[SinkOutboxRow]:
    with rt.session_factory() as session:
        return list(session.scalars(select(SinkOutboxRow).order_by(SinkOutboxRow.id)))


def refusal_audit(rt) -> list[tuple[str, str, str | None]]:
    with rt.session_factory() as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "lms_refused"))
        return [(a.customer_id, a.drift_kind, a.after) for a in entries]


def test_jwt_only_an_upgrade_past_the_deadline_is_refused_alerted_counted_and_shown(
    lms_runtime_for, simulator, lms, sentry_events
):
    deadline_passed_run(lms)
    rt = lms_runtime_for(jwt=True)
    map_course(rt, mode="verified", course=RUN)
    lms.state.set_enrollment("bob", RUN, "audit")  # audited, buys after the upgrade deadline
    bought(rt, simulator)
    result = drain(rt)
    assert (result.sent, result.failed, result.refused) == (0, 1, {DEADLINE_PASSED: 1})
    assert lms.state.enrollment("bob", RUN) == ("audit", True) and lms.state.posts() == []  # no doomed POST
    [row] = rows(rt)
    assert row.status == "failed" and str(row.last_error).startswith(f"{DEADLINE_PASSED}: bob in {RUN}")
    assert "OPENEDX_API_KEY" in str(row.last_error)  # what would let the change through
    assert refusal_audit(rt) == [("bob", DEADLINE_PASSED, json.dumps({"mode": "verified", "is_active": True}))]
    [kind] = drift_report(rt.session_factory, since_ms=0, until_ms=wall_clock_ms() + 1)
    assert (kind.drift_kind, kind.repairs, kind.customers) == (DEADLINE_PASSED, 1, 1)
    assert rt.metrics.counters()[f'engine_lms_refusals_total{{kind="{DEADLINE_PASSED}"}}'] == 1
    [alert] = sentry_events.items("event")
    assert alert["fingerprint"] == ["lms-refusal", DEADLINE_PASSED] and alert["level"] == "error"
    assert alert["tags"]["app_user_id"] == "bob"


def test_a_refused_change_is_not_drift_again_until_rechecked_and_heals_once_the_lms_permits_it(
    lms_runtime_for, simulator, lms
):
    deadline_passed_run(lms)
    rt = lms_runtime_for(jwt=True)
    map_course(rt, mode="verified", course=RUN)
    lms.state.set_enrollment("bob", RUN, "audit")
    bought(rt, simulator)
    drain(rt)
    assert repair_lms_drift(rt.session_factory, rt.course_sink, "bob", now_ms=wall_clock_ms()).drift == {}
    both = lms_runtime_for(jwt=True, api_key=True)  # the operator configures the LMS's API key too
    a_day_later = wall_clock_ms() + 25 * 3600 * 1000
    drift = repair_lms_drift(both.session_factory, both.course_sink, "bob", now_ms=a_day_later).drift
    assert drift == {"lms_wrong_mode": 1}
    assert drain(both, clock=lambda: a_day_later).sent == 1
    assert lms.state.enrollment("bob", RUN) == ("verified", True)


def test_both_credentials_an_upgrade_past_the_deadline_goes_with_the_api_key(lms_runtime_for, simulator, lms):
    deadline_passed_run(lms)
    rt = lms_runtime_for(jwt=True, api_key=True)
    map_course(rt, mode="verified", course=RUN)
    lms.state.set_enrollment("bob", RUN, "audit")
    bought(rt, simulator)
    assert drain(rt).sent == 1
    assert lms.state.enrollment("bob", RUN) == ("verified", True)
    assert [c.caller for c in lms.state.calls if c.path.startswith("/api/")] == ["api_key", "api_key"]
    assert lms.state.audit_log[-1]["actual_mode"] == "verified"


def test_a_new_paid_enrollment_past_the_deadline(lms_runtime_for, simulator, lms):
    deadline_passed_run(lms)
    keyed = lms_runtime_for(jwt=False, api_key=True)
    map_course(keyed, mode="verified", course=RUN)
    bought(keyed, simulator, "alice")
    assert drain(keyed).refused == {DEADLINE_PASSED: 1}  # force_enrollment is for global staff only
    assert lms.state.enrollment("alice", RUN) is None
    assert "OPENEDX_CLIENT_ID" in str(rows(keyed)[0].last_error)
    both = lms_runtime_for(jwt=True, api_key=True)
    bought(both, simulator, "bob")
    assert drain(both).sent == 1  # the API key cannot, the staff JWT forces
    assert lms.state.enrollment("bob", RUN) == ("verified", True)
    [post] = lms.state.posts("bob")
    assert post["force_enrollment"] is True and lms.state.calls[-1].caller == "user:engine_worker"


def test_a_new_paid_enrollment_after_enrollment_end(lms_runtime_for, simulator, lms):
    closed = "course-v1:HypnoElp+H01ENB+2019"
    lms.state.add_course(closed, modes=("audit", "professional"), enrollment_end=lms.state.clock() - 60)
    keyed = lms_runtime_for(jwt=False, api_key=True)
    map_course(keyed, course=closed)
    bought(keyed, simulator, "alice")
    assert drain(keyed).refused == {"lms_enrollment_closed": 1}
    staff = lms_runtime_for(jwt=True)
    bought(staff, simulator, "bob")
    assert drain(staff).sent == 1 and lms.state.enrollment("bob", closed) == ("professional", True)
