"""Revocation as the real LMS allows it, through the outbox against the fake LMS over HTTP: one
POST with is_active false and no mode, on runs that offer no audit mode too; audit only where the
run offers it and the mapping asks for it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from persistence.models import SinkOutboxRow
from tests.sinks.conftest import drain, map_course, one_time_tx, sync

PRO_ONLY = "course-v1:HypnoElp+H02PRO+2024"  # pay-to-enroll: no audit, no honor


def revoked_after_purchase(rt, simulator, user: str = "bob") -> None:
    simulator.state.purchase_non_renewing(user, "h01enb")
    sync(rt, user)
    drain(rt)
    simulator.state.refund(user, one_time_tx(simulator, user))
    sync(rt, user)
    drain(rt)


@pytest.mark.parametrize("on_revoke", ["audit", "deactivate"])
@pytest.mark.parametrize("mode", ["professional", "no-id-professional"])
def test_a_refund_on_a_run_without_audit_deactivates_in_one_post(lms_runtime, simulator, lms, on_revoke, mode):
    lms.state.add_course(PRO_ONLY, modes=(mode,))
    map_course(lms_runtime, mode=mode, on_revoke=on_revoke, course=PRO_ONLY)
    revoked_after_purchase(lms_runtime, simulator)
    assert lms.state.enrollment("bob", PRO_ONLY) == (mode, False)  # paid access gone
    with lms_runtime.session_factory() as session:
        assert set(session.scalars(select(SinkOutboxRow.status))) == {"done"}
    revocation = lms.state.posts("bob")[-1]
    assert revocation == {"user": "bob", "is_active": False, "course_details": {"course_id": PRO_ONLY}}
    assert len(lms.state.posts("bob")) == 2  # enroll, deactivate: no detour
    assert lms.state.signals[-1] == ("UNENROLL_DONE", "bob", PRO_ONLY, mode)


def test_a_deactivation_refunds_a_redeemed_entitlement_which_the_readme_warns_of(lms_runtime, simulator, lms):
    map_course(lms_runtime, on_revoke="deactivate")
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    lms.state.add_entitlement("bob", "course-v1:HypnoElp+H01ENB+2024")  # bob also redeemed one on this run
    simulator.state.refund("bob", one_time_tx(simulator, "bob"))
    sync(lms_runtime, "bob")
    drain(lms_runtime)
    assert lms.state.entitlement_refunds == [{"user": "bob", "course_id": "course-v1:HypnoElp+H01ENB+2024"}]


def test_downgrade_to_audit_where_the_run_offers_it_keeps_the_learner_enrolled(lms_runtime, simulator, lms):
    map_course(lms_runtime)  # on_revoke=audit, and the default run offers audit
    lms.state.add_entitlement("bob", "course-v1:HypnoElp+H01ENB+2024")
    revoked_after_purchase(lms_runtime, simulator)
    assert lms.state.enrollment("bob", "course-v1:HypnoElp+H01ENB+2024") == ("audit", True)
    assert "UNENROLL_DONE" not in {s[0] for s in lms.state.signals} and lms.state.entitlement_refunds == []
