"""Grant changes reach the LMS through the outbox: written with the grant, drained after commit
in order per (customer, course), retried with backoff, nothing lost while the LMS is down."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from engine.access import Access
from engine.plan import Action
from engine.ports import Cause
from persistence.course_mappings import set_lms_username
from persistence.models import AuditEntry, Grant, SinkOutboxRow
from persistence.outbox import enqueue_expired_mappings, outbox_counts
from persistence.unit_of_work import unit_of_work
from services.clock import wall_clock_ms
from tests.sinks.conftest import COURSE, drain, map_course, one_time_tx, sync


def rows(rt, customer_id: str | None = None) -> list[SinkOutboxRow]:
    with rt.session_factory() as session:
        stmt = select(SinkOutboxRow).order_by(SinkOutboxRow.id)
        if customer_id is not None:
            stmt = stmt.where(SinkOutboxRow.customer_id == customer_id)
        return list(session.scalars(stmt))


def desired(rt, customer_id: str) -> list[tuple[str | None, bool]]:
    return [(r.mode, r.is_active) for r in rows(rt, customer_id)]


def test_a_purchase_writes_one_outbox_row_in_the_grants_transaction(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    simulator.state.purchase_subscription("bob", "premium_monthly")  # an app module: no LMS row
    sync(lms_runtime, "bob")
    [row] = rows(lms_runtime)
    assert (row.customer_id, row.resource, row.course_run_id, row.mode, row.is_active, row.status) == (
        "bob",
        "course:H01ENB",
        COURSE,
        "professional",
        True,
        "pending",
    )
    assert row.cause_kind == "request"
    assert lms.state.enrollment("bob", COURSE) is None  # nothing is sent inside the transaction


def test_the_outbox_row_rolls_back_with_the_grant(lms_runtime):
    map_course(lms_runtime)
    grant = Action("grant", "course:H01ENB", None, Access("course:H01ENB", "paid", None, ("t1",)))
    try:
        with unit_of_work(lms_runtime.session_factory)() as uow:
            uow.ledger.lock_customer("bob")
            uow.ledger.apply("bob", [grant], Cause("request"), wall_clock_ms())
            raise RuntimeError("the transaction fails after apply")
    except RuntimeError:
        pass
    assert rows(lms_runtime) == []


def test_no_mapping_or_an_inactive_one_means_no_lms_work(lms_runtime, simulator):
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    map_course(lms_runtime, active=False)
    simulator.state.purchase_non_renewing("alice", "h01enb")
    sync(lms_runtime, "alice")
    assert rows(lms_runtime) == []


def test_pay_to_enroll_refund_to_audit_reversal_restores(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    assert drain(lms_runtime).sent == 1
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    tx = one_time_tx(simulator, "bob")
    simulator.state.refund("bob", tx)
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("audit", True)
    simulator.state.reverse_refund("bob", tx)
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    assert [r.status for r in rows(lms_runtime)] == ["done"] * 3
    # The run offers audit and the mapping asks for it: each change is one mode change, never a deactivation.
    assert [(b["mode"], b["is_active"]) for b in lms.state.posts("bob")] == [
        ("professional", True),
        ("audit", True),
        ("professional", True),
    ]
    assert "UNENROLL_DONE" not in {s[0] for s in lms.state.signals}


def test_upgrade_from_audit_and_revocation_by_deactivation(lms_runtime, simulator, lms):
    map_course(lms_runtime, mode="no-id-professional", on_revoke="deactivate")
    lms.state.set_enrollment("alice", COURSE, "audit")  # audited before buying
    simulator.state.purchase_non_renewing("alice", "h01enb")
    sync(lms_runtime, "alice")
    drain(lms_runtime)
    assert lms.state.enrollment("alice", COURSE) == ("no-id-professional", True)
    simulator.state.refund("alice", one_time_tx(simulator, "alice"))
    sync(lms_runtime, "alice")
    drain(lms_runtime)
    # One POST, is_active false and no mode: the LMS keeps the mode paid for, and no detour
    # through audit fires a track change (a grade recalculation) before the unenrollment.
    assert lms.state.enrollment("alice", COURSE) == ("no-id-professional", False)
    assert lms.state.posts("alice")[-1] == {
        "user": "alice",
        "is_active": False,
        "course_details": {"course_id": COURSE},
    }
    assert lms.state.signals[-2:] == [
        ("ENROLLMENT_TRACK_UPDATED", "alice", COURSE, "no-id-professional"),  # the upgrade
        ("UNENROLL_DONE", "alice", COURSE, "no-id-professional"),  # the revocation
    ]
    assert [r.mode for r in rows(lms_runtime, "alice")] == ["no-id-professional", None]
    simulator.state.purchase_non_renewing("alice", "h01enb")  # bought again
    sync(lms_runtime, "alice")
    drain(lms_runtime)
    assert lms.state.enrollment("alice", COURSE) == ("no-id-professional", True)


def test_lms_down_for_an_hour_loses_nothing_and_applies_every_change_in_order(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    now = [wall_clock_ms()]
    clock = lambda: now[0]  # noqa: E731
    lms.stop()
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    tx = one_time_tx(simulator, "bob")
    simulator.state.purchase_non_renewing("alice", "h01enb")
    sync(lms_runtime, "alice")
    attempts = 0
    for _ in range(12):  # an hour of beat runs, each finding the LMS down
        result = drain(lms_runtime, clock=clock)
        assert result.sent == 0
        attempts += result.deferred
        if _ == 3:  # changes keep coming while it is down
            simulator.state.refund("bob", tx)
            sync(lms_runtime, "bob")
        if _ == 6:
            simulator.state.reverse_refund("bob", tx)
            sync(lms_runtime, "bob")
        now[0] += 5 * 60 * 1000
    assert attempts >= 12
    pending = rows(lms_runtime)
    assert [r.status for r in pending] == ["pending"] * 4
    assert max(r.attempts for r in pending) > 3 and "unreachable" in str(pending[0].last_error)
    lms.start()
    now[0] += 60 * 60 * 1000
    result = drain(lms_runtime, clock=clock)
    assert (result.sent, result.deferred, result.next_attempt_ms) == (4, 0, None)
    assert [(b["mode"], b["is_active"]) for b in lms.state.posts("bob")] == [
        ("professional", True),
        ("audit", True),
        ("professional", True),
    ]
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    assert lms.state.enrollment("alice", COURSE) == ("professional", True)


def test_backoff_holds_the_whole_group_so_order_is_kept(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    simulator.state.refund("bob", one_time_tx(simulator, "bob"))
    sync(lms_runtime, "bob")
    now = wall_clock_ms()
    lms.state.fail_next(1, 503)
    result = drain(lms_runtime, clock=lambda: now)
    assert (result.sent, result.deferred) == (0, 1)
    assert all(r.next_attempt_ms >= now + 1000 for r in rows(lms_runtime))  # both rows wait
    assert drain(lms_runtime, clock=lambda: now).sent == 0  # not due yet: nothing jumps the queue
    assert drain(lms_runtime, clock=lambda: now + 2_000).sent == 2
    assert [(b["mode"]) for b in lms.state.posts("bob")] == ["professional", "audit"]


def test_concurrent_drains_send_each_row_once_and_in_order(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    for user in ("alice", "bob", "carol"):
        simulator.state.purchase_non_renewing(user, "h01enb")
        sync(lms_runtime, user)
        simulator.state.refund(user, one_time_tx(simulator, user))
        sync(lms_runtime, user)
    results = []
    threads = [threading.Thread(target=lambda: results.append(drain(lms_runtime))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drain(lms_runtime)  # whatever a drainer skipped because another held the group
    assert [r.status for r in rows(lms_runtime)] == ["done"] * 6
    for user in ("alice", "bob", "carol"):
        assert [b["mode"] for b in lms.state.posts(user)] == ["professional", "audit"]
        assert lms.state.enrollment(user, COURSE) == ("audit", True)


def test_a_terminal_failure_is_recorded_and_the_group_moves_on(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("dave", "h01enb")  # dave has no LMS account yet
    sync(lms_runtime, "dave")
    result = drain(lms_runtime)
    assert (result.sent, result.failed, result.refused) == (0, 1, {"lms_user_missing": 1})
    [row] = rows(lms_runtime)
    assert row.status == "failed" and str(row.last_error).startswith("lms_user_missing: ") and row.username == "dave"
    assert "dave does not exist" in str(row.last_error)
    assert outbox_counts(lms_runtime.session_factory) == {"failed": 1}
    assert lms_runtime.metrics.counters()['engine_lms_refusals_total{kind="lms_user_missing"}'] == 1


def test_the_lms_username_mapping_and_anonymous_customers(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    lms.state.add_user("b.smith")
    with lms_runtime.session_factory() as session, session.begin():
        set_lms_username(session, "bob", "b.smith")
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    assert lms.state.enrollment("b.smith", COURSE) == ("professional", True)
    assert lms.state.enrollment("bob", COURSE) is None
    anon = "$RCAnonymousID:0a1b2c"
    simulator.state.purchase_non_renewing(anon, "h01enb")
    sync(lms_runtime, anon)
    result = drain(lms_runtime)
    assert result.failed == 1 and str(rows(lms_runtime, anon)[0].last_error) == "no LMS username for this customer"


def test_bad_credentials_pause_the_outbox_without_failing_rows(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    lms.state.clients.clear()  # the OAuth2 application was deleted
    result = drain(lms_runtime)
    assert result.auth_error and result.sent == result.failed == 0
    assert rows(lms_runtime)[0].status == "pending"


def test_an_extension_sends_nothing_new(lms_runtime):
    map_course(lms_runtime)
    start = Access("course:H01ENB", "paid", wall_clock_ms() + 10_000, ("t1",))
    longer = Access("course:H01ENB", "paid", wall_clock_ms() + 99_000, ("t1", "t2"))
    with unit_of_work(lms_runtime.session_factory)() as uow:
        uow.ledger.lock_customer("bob")
        for action in (Action("grant", "course:H01ENB", None, start), Action("extend", "course:H01ENB", start, longer)):
            uow.ledger.apply("bob", [action], Cause("event"), wall_clock_ms())
            uow.outbox.record("bob", [action], Cause("event"), wall_clock_ms())
    assert desired(lms_runtime, "bob") == [("professional", True)]


def test_a_new_mapping_enrolls_existing_holders_and_an_expired_one_revokes(lms_runtime, simulator, lms):
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")  # sold before the course was mapped
    map_course(lms_runtime, expires_at="2030-01-01T00:00:00Z")
    assert desired(lms_runtime, "bob") == [("professional", True)]
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    after_expiry = 1893456000000 + 1
    assert enqueue_expired_mappings(lms_runtime.session_factory, now_ms=after_expiry) == 1
    assert enqueue_expired_mappings(lms_runtime.session_factory, now_ms=after_expiry) == 0  # once
    drain(lms_runtime, clock=lambda: after_expiry)
    assert lms.state.enrollment("bob", COURSE) == ("audit", True)
    with lms_runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Grant)) == 1  # the grant itself stays


def test_changing_the_mapped_mode_re_sends_to_holders(lms_runtime, simulator, lms):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    map_course(lms_runtime, mode="verified")
    drain(lms_runtime)
    assert lms.state.enrollment("bob", COURSE) == ("verified", True)
    with lms_runtime.session_factory() as session:
        assert (
            session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.drift_kind.is_not(None))) == 0
        )


def test_the_beat_drain_task_sends_everything_due_and_is_idle_when_disabled(
    settings, lms_settings, lms_runtime, simulator, lms
):
    from tasks.celery_app import create_celery

    map_course(lms_runtime)
    for user in ("alice", "bob"):
        simulator.state.purchase_non_renewing(user, "h01enb")
        sync(lms_runtime, user)
    assert create_celery(settings).tasks["lms.drain"].apply().get() == 0  # no LMS configured
    assert create_celery(lms_settings).tasks["lms.drain"].apply().get() == 2
    assert lms.state.enrollment("alice", COURSE) == lms.state.enrollment("bob", COURSE) == ("professional", True)
