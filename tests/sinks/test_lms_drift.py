"""LMS drift: enrollments read back, differences from the grants repaired and counted."""

from __future__ import annotations

import json

from sqlalchemy import select, update

from persistence.models import AuditEntry, SinkOutboxRow
from services.clock import wall_clock_ms
from services.outbox import repair_lms_drift
from tasks.celery_app import create_celery
from tests.sinks.conftest import COURSE, drain, map_course, one_time_tx, sync
from tests.support import queued_messages


def repair(rt, customer_id: str):
    return repair_lms_drift(rt.session_factory, rt.course_sink, customer_id, now_ms=wall_clock_ms())


def enrolled(rt, simulator, lms, user: str = "bob") -> None:
    map_course(rt)
    simulator.state.purchase_non_renewing(user, "h01enb")
    sync(rt, user)
    drain(rt)
    assert lms.state.enrollment(user, COURSE) == ("professional", True)


def drift_audit(rt) -> list[tuple[str, str, str | None, str | None]]:
    with rt.session_factory() as session:
        return [
            (a.action, a.drift_kind, a.before, a.after)
            for a in session.scalars(
                select(AuditEntry).where(AuditEntry.drift_kind.is_not(None)).order_by(AuditEntry.id)
            )
        ]


def test_in_sync_costs_one_read_and_writes_nothing(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    result = repair(lms_runtime, "bob")
    assert (result.checked, result.drift, result.unreadable) == (1, {}, 0)
    assert drift_audit(lms_runtime) == []


def test_downgraded_by_hand_is_repaired_and_counted(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    lms.state.set_enrollment("bob", COURSE, "audit")  # support staff downgraded the learner
    result = repair(lms_runtime, "bob")
    assert result.drift == {"lms_wrong_mode": 1}
    assert drift_audit(lms_runtime) == [
        (
            "lms_repair",
            "lms_wrong_mode",
            json.dumps({"mode": "audit", "is_active": True}),
            json.dumps({"mode": "professional", "is_active": True}),
        )
    ]
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    assert repair(lms_runtime, "bob").drift == {}  # healed


def test_deactivated_or_missing_in_the_lms(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms, "bob")
    enrolled(lms_runtime, simulator, lms, "alice")
    lms.state.set_enrollment("bob", COURSE, "professional", is_active=False)
    lms.state.delete_enrollment("alice", COURSE)  # the call was lost, or the LMS restored a backup
    assert repair(lms_runtime, "bob").drift == {"lms_inactive": 1}
    assert repair(lms_runtime, "alice").drift == {"lms_missing": 1}
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == lms.state.enrollment("alice", COURSE) == ("professional", True)


def test_a_lost_revocation_is_found_on_a_customer_without_course_grants(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    simulator.state.refund("bob", one_time_tx(simulator, "bob"))
    sync(lms_runtime, "bob")
    with lms_runtime.session_factory() as session, session.begin():  # the downgrade call was "sent" and lost
        session.execute(update(SinkOutboxRow).where(SinkOutboxRow.status == "pending").values(status="done"))
    assert repair(lms_runtime, "bob").drift == {"lms_wrong_mode": 1}
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("audit", True)


def test_deactivation_policy_drift_kind(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    map_course(lms_runtime, on_revoke="deactivate")
    simulator.state.refund("bob", one_time_tx(simulator, "bob"))
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("professional", False)
    lms.state.set_enrollment("bob", COURSE, "audit", is_active=True)  # the learner re-enrolled in audit
    assert repair(lms_runtime, "bob").drift == {"lms_not_deactivated": 1}


def test_changes_in_flight_are_not_drift(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")  # the enrollment is still in the outbox
    assert repair(lms_runtime, "bob").drift == {}
    assert drift_audit(lms_runtime) == []


def test_an_unreachable_lms_is_not_drift(lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    lms.state.set_enrollment("bob", COURSE, "audit")
    lms.stop()
    result = repair(lms_runtime, "bob")
    assert (result.unreadable, result.drift) == (1, {})
    lms.start()


def test_customers_without_mapped_courses_cost_nothing(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_subscription("carol", "premium_monthly")
    sync(lms_runtime, "carol")
    assert repair(lms_runtime, "carol").checked == 0
    assert lms.state.calls == []


def test_the_task_repairs_counts_and_enqueues_a_drain(lms_settings, lms_runtime, simulator, lms):
    enrolled(lms_runtime, simulator, lms)
    lms.state.set_enrollment("bob", COURSE, "honor")
    app = create_celery(lms_settings)
    assert app.tasks["lms.repair"].apply(args=(["bob"],)).get() == {"lms_wrong_mode": 1}
    queued = [m["headers"] for m in queued_messages(lms_settings)]
    assert [(h["task"], h["kwargsrepr"]) for h in queued] == [("lms.drain", "{'customer_id': 'bob'}")]
    assert lms_runtime.metrics.counters().get('engine_drift_repaired_total{kind="lms_wrong_mode"}') == 1
    assert app.tasks["lms.drain"].apply(args=("bob",)).get() == 1
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
