"""The Open edX client and sink against the fake LMS over HTTP: OAuth2 token fetch, cache and
refresh, API-key use, revocation as the real LMS allows it, error mapping."""

from __future__ import annotations

import pytest

from adapters.openedx import OpenEdxClient, OpenEdxSink
from engine.enrollment import API_KEY as KEY
from engine.enrollment import JWT, EnrollmentCall, LmsRefusal
from engine.errors import SinkAuthError, TerminalError, TransientError
from engine.ports import EnrollmentState as E
from simulators.openedx_lms import LmsServer, LmsState
from tests.sinks.conftest import API_KEY, CLIENT_ID, CLIENT_SECRET, COURSE

PRO, AUDIT, DEACTIVATED = E("professional", True), E("audit", True), E(None, False)
ENROLL_PRO = EnrollmentCall("professional", True, JWT)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(lms: LmsServer, clock: FakeClock) -> OpenEdxClient:
    return OpenEdxClient(lms.url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, clock=clock)


@pytest.fixture
def sink(client: OpenEdxClient) -> OpenEdxSink:
    return OpenEdxSink(client)


def test_token_is_fetched_once_cached_and_refreshed_before_it_expires(lms, client, clock):
    lms.state.token_lifetime_s = 600
    assert client.get_enrollment("bob", COURSE) is None
    client.post_enrollment("bob", COURSE, ENROLL_PRO)
    assert client.get_enrollment("bob", COURSE) == PRO
    assert lms.state.token_requests == 1
    clock.now += 600 - 60  # the margin before the LMS's expiry: fetch a new one
    client.get_enrollment("bob", COURSE)
    assert lms.state.token_requests == 2
    assert {c.caller for c in lms.state.calls} == {"user:engine_worker"}  # the global-staff service user


def test_a_rejected_token_is_refreshed_once_on_401(lms, client):
    client.get_enrollment("bob", COURSE)
    lms.state.revoke_tokens()  # the LMS forgot it (restart, rotation, early expiry)
    assert client.get_enrollment("bob", COURSE) is None
    assert lms.state.token_requests == 2
    assert [c.status for c in lms.state.calls] == [200, 401, 200]


def test_bad_client_credentials_pause_the_sink_rather_than_fail_a_row(lms):
    bad = OpenEdxClient(lms.url, client_id=CLIENT_ID, client_secret="wrong")
    with pytest.raises(SinkAuthError):
        bad.get_enrollment("bob", COURSE)


def test_a_service_user_without_staff_rights_is_an_auth_problem(lms):
    lms.state.add_client("weak", "pw", service_user="not_staff", staff=False)
    weak = OpenEdxClient(lms.url, client_id="weak", client_secret="pw")
    with pytest.raises(SinkAuthError, match="act for other users"):
        weak.get_enrollment("bob", COURSE)  # the view's own empty 404: other users' enrollments are hidden
    with pytest.raises(SinkAuthError):
        weak.post_enrollment("bob", COURSE, ENROLL_PRO)  # 404 as well: acting for another user


def test_the_api_key_is_preferred_and_the_lms_audit_logs_it(lms):
    lms.state.api_key = API_KEY
    both = OpenEdxSink(OpenEdxClient(lms.url, api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET))
    assert both.apply("bob", COURSE, PRO) == PRO
    assert lms.state.token_requests == 0 and {c.caller for c in lms.state.calls} == {"api_key"}
    assert lms.state.audit_log[-1]["requested_mode"] == "professional"
    with pytest.raises(SinkAuthError):
        OpenEdxClient(lms.url, api_key="wrong").get_enrollment("bob", COURSE)


def test_pay_to_enroll_then_upgrade_from_audit(lms, sink):
    assert sink.apply("alice", COURSE, PRO) == PRO  # no enrollment before the purchase
    lms.state.set_enrollment("bob", COURSE, "audit")  # bob audited first
    assert sink.apply("bob", COURSE, PRO) == PRO
    assert lms.state.enrollment("alice", COURSE) == lms.state.enrollment("bob", COURSE) == ("professional", True)
    assert [b.get("force_enrollment") for b in lms.state.posts()] == [True, None]  # forced only where it counts


def test_resending_the_same_state_makes_no_call(lms, sink):
    sink.apply("bob", COURSE, PRO)
    posts = len(lms.state.posts())
    assert sink.apply("bob", COURSE, PRO) == PRO
    assert len(lms.state.posts()) == posts  # read, found in sync, nothing sent


def test_revoke_to_audit_where_the_run_offers_it_and_restore(lms, sink):
    sink.apply("bob", COURSE, PRO)
    assert sink.apply("bob", COURSE, AUDIT) == AUDIT
    assert sink.apply("bob", COURSE, PRO) == PRO  # refund reversed / bought again
    assert [s[0] for s in lms.state.signals] == ["ENROLLMENT_TRACK_UPDATED"] * 3  # enroll, downgrade, upgrade


def test_revocation_by_deactivation_is_one_post_without_a_mode(lms, sink):
    sink.apply("bob", COURSE, PRO)
    assert sink.apply("bob", COURSE, DEACTIVATED) == E("professional", False)
    revocation = lms.state.posts("bob")[-1]
    assert "mode" not in revocation and revocation["is_active"] is False and len(lms.state.posts("bob")) == 2
    # The LMS records the learner in the mode paid for, inactive: no detour through audit, no
    # mode change (no grade recalculation), one UNENROLL_DONE.
    assert lms.state.signals[-1] == ("UNENROLL_DONE", "bob", COURSE, "professional")
    assert sink.apply("bob", COURSE, PRO) == PRO  # re-purchase reactivates, in its own mode
    assert "mode" not in lms.state.posts("bob")[-1]


def test_revocation_on_a_run_without_audit(lms, sink):
    pro_only = "course-v1:HypnoElp+H02PRO+2024"
    lms.state.add_course(pro_only, modes=("no-id-professional",))
    sink.apply("bob", pro_only, E("no-id-professional", True))
    # Mapped to "downgrade to audit", but the run has no audit: deactivated instead, in one call.
    assert sink.apply("bob", pro_only, AUDIT) == E("no-id-professional", False)
    assert sink.apply("bob", pro_only, DEACTIVATED) == E("no-id-professional", False)  # nothing more to do
    assert [("mode" in b, b["is_active"]) for b in lms.state.posts("bob")] == [(True, True), (False, False)]


def test_a_stale_read_cannot_trip_the_guard(lms, sink, monkeypatch):
    sink.apply("bob", COURSE, PRO)
    real_read = sink.client.read_enrollment

    def stale(username, course, **kwargs):
        current, run = real_read(username, course, **kwargs)
        lms.state.set_enrollment("bob", COURSE, "honor")  # changed by hand between read and write
        return current, run

    monkeypatch.setattr(sink.client, "read_enrollment", stale)
    assert sink.apply("bob", COURSE, DEACTIVATED) == E("honor", False)  # no mode sent: the guard has nothing to compare


def test_errors_map_to_transient_refusal_or_terminal(lms, client):
    with pytest.raises(LmsRefusal) as info:
        client.post_enrollment("nobody", COURSE, ENROLL_PRO)  # 406: the user does not exist
    assert info.value.kind == "lms_user_missing"
    with pytest.raises(LmsRefusal) as info:
        client.post_enrollment("bob", "course-v1:Nope+X+Y", ENROLL_PRO)
    assert info.value.kind == "lms_course_missing"
    with pytest.raises(TerminalError, match="unavailable"):
        client.post_enrollment("bob", COURSE, EnrollmentCall("credit", True, JWT))  # not offered by the run
    lms.state.fail_next(1, 503)
    with pytest.raises(TransientError) as transient:
        client.get_enrollment("bob", COURSE)
    assert transient.value.status == 503
    with pytest.raises(LmsRefusal, match="not a username"):
        OpenEdxSink(client).apply("$RCAnonymousID:abc", COURSE, PRO)  # no such name in any LMS


def test_down_then_back_on_the_same_port(lms, client):
    client.post_enrollment("bob", COURSE, ENROLL_PRO)
    lms.stop()
    with pytest.raises(TransientError, match="unreachable"):
        client.get_enrollment("bob", COURSE)
    lms.start()
    assert client.get_enrollment("bob", COURSE) == PRO
    lms.state.down = True  # a proxy in front of a dead LMS
    with pytest.raises(TransientError):
        client.get_enrollment("bob", COURSE)


def test_closed_enrollment_is_forced_for_paid_access_by_staff_only(lms, client):
    closed = "course-v1:HypnoElp+H01ENB+2019"
    lms.state.add_course(closed, enrollment_end=lms.state.clock() - 3600)
    assert client.post_enrollment("bob", closed, EnrollmentCall("professional", True, JWT, force=True)) == PRO
    lms.state.api_key = API_KEY
    keyed = OpenEdxClient(lms.url, api_key=API_KEY)
    with pytest.raises(TerminalError, match="error occurred while creating"):
        keyed.post_enrollment("alice", closed, EnrollmentCall("professional", True, KEY, force=True))


def test_a_fresh_lms_state_has_no_users():
    assert LmsState().users == {}
