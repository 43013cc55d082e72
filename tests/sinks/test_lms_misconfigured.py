"""A 404 is not always an authentication failure: against the fake LMS over HTTP, a wrong base URL
or path pauses the sink and alerts (every row kept), while a missing course or user refuses that
one change (terminal, counted, shown) and the outbox goes on."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from persistence.models import AuditEntry, SinkOutboxRow
from tests.sinks.conftest import COURSE, drain, map_course, sync


def rows(rt) -> list[SinkOutboxRow]:
    with rt.session_factory() as session:
        return list(session.scalars(select(SinkOutboxRow).order_by(SinkOutboxRow.id)))


def bought(rt, simulator, *users: str) -> None:
    for user in users:
        simulator.state.purchase_non_renewing(user, "h01enb")
        sync(rt, user)


@pytest.mark.parametrize(("jwt", "api_key"), [(True, False), (False, True)], ids=["oauth2", "api-key"])
def test_a_wrong_base_url_pauses_the_sink_and_alerts(lms_runtime_for, simulator, lms, sentry_events, jwt, api_key):
    rt = lms_runtime_for(jwt=jwt, api_key=api_key, openedx_lms_url=f"{lms.url}/lms")  # a path too many
    map_course(rt)
    bought(rt, simulator, "bob", "alice")
    result = drain(rt)
    assert result.auth_error and "OPENEDX_LMS_URL" in result.auth_error
    assert (result.sent, result.failed) == (0, 0)
    assert [r.status for r in rows(rt)] == ["pending", "pending"]  # every change kept for when it is fixed
    [alert] = sentry_events.items("event")
    assert alert["fingerprint"] == ["sink-paused", "openedx"] and alert["level"] == "error"
    fixed = lms_runtime_for(jwt=jwt, api_key=api_key)
    assert drain(fixed, clock=lambda: 2**62).sent == 2


@pytest.mark.parametrize(("jwt", "api_key"), [(True, False), (False, True)], ids=["oauth2", "api-key"])
def test_a_missing_course_refuses_its_changes_and_the_outbox_goes_on(lms_runtime_for, simulator, lms, jwt, api_key):
    rt = lms_runtime_for(jwt=jwt, api_key=api_key)
    map_course(rt, course="course-v1:HypnoElp+H01ENB+2099")  # a run the LMS does not have (yet)
    bought(rt, simulator, "bob", "alice")
    result = drain(rt)
    assert result.auth_error is None and result.refused == {"lms_course_missing": 2}
    assert [str(r.last_error).split(":")[0] for r in rows(rt)] == ["lms_course_missing"] * 2
    assert rt.metrics.counters()['engine_lms_refusals_total{kind="lms_course_missing"}'] == 2
    with rt.session_factory() as session:
        kinds = session.scalars(select(AuditEntry.drift_kind).where(AuditEntry.action == "lms_refused")).all()
    assert kinds == ["lms_course_missing"] * 2


def test_a_missing_user_refuses_that_change_only(lms_runtime_for, simulator, lms):
    rt = lms_runtime_for(jwt=True)
    map_course(rt)
    bought(rt, simulator, "dave", "bob")  # dave has no LMS account
    result = drain(rt)
    assert (result.sent, result.refused, result.auth_error) == (1, {"lms_user_missing": 1}, None)
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)
    [refused] = [r for r in rows(rt) if r.status == "failed"]
    assert refused.customer_id == "dave" and str(refused.last_error).startswith("lms_user_missing: ")
