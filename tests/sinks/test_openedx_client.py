"""The Open edX client and sink against the fake LMS over HTTP: OAuth2 token fetch, cache and
refresh, the Enrollment API's semantics (guard, refund path, idempotence), error mapping."""

from __future__ import annotations

import pytest
import requests

from adapters.openedx import OpenEdxClient, OpenEdxSink
from engine.errors import SinkAuthError, TerminalError, TransientError
from engine.ports import EnrollmentState as E
from simulators.openedx_lms import LmsServer, LmsState
from tests.sinks.conftest import CLIENT_ID, CLIENT_SECRET, COURSE

PRO, AUDIT = E("professional", True), E("audit", True)


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
    client.post_enrollment("bob", COURSE, PRO)
    assert client.get_enrollment("bob", COURSE) == PRO
    assert lms.state.token_requests == 1
    clock.now += 600 - 60  # the margin before the LMS's expiry: fetch a new one
    client.get_enrollment("bob", COURSE)
    assert lms.state.token_requests == 2
    callers = {c.caller for c in lms.state.calls}
    assert callers == {"user:engine_worker"}  # a JWT of the global-staff service user


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
    with pytest.raises(SinkAuthError):
        weak.get_enrollment("bob", COURSE)  # 404: other users' enrollments are hidden
    with pytest.raises(SinkAuthError):
        weak.post_enrollment("bob", COURSE, PRO)  # 403: paid modes need staff


def test_api_key_authentication_is_supported_and_anonymous(lms):
    lms.state.api_key = "edx-key"
    keyed = OpenEdxSink(OpenEdxClient(lms.url, api_key="edx-key"))
    assert keyed.apply("bob", COURSE, PRO) == PRO
    assert lms.state.token_requests == 0 and {c.caller for c in lms.state.calls} == {"api_key"}
    assert lms.state.audit_log[-1]["requested_mode"] == "professional"  # the LMS audit-logs API-key use
    with pytest.raises(SinkAuthError):
        OpenEdxClient(lms.url, api_key="wrong").get_enrollment("bob", COURSE)


def test_pay_to_enroll_then_upgrade_from_audit(lms, sink):
    assert sink.apply("alice", COURSE, PRO) == PRO  # no enrollment before the purchase
    lms.state.set_enrollment("bob", COURSE, "audit")  # bob audited first
    assert sink.apply("bob", COURSE, PRO) == PRO
    assert lms.state.enrollment("alice", COURSE) == lms.state.enrollment("bob", COURSE) == ("professional", True)


def test_resending_the_same_state_makes_no_call(lms, sink):
    sink.apply("bob", COURSE, PRO)
    posts = len(lms.state.posts())
    assert sink.apply("bob", COURSE, PRO) == PRO
    assert len(lms.state.posts()) == posts  # read, found in sync, nothing sent
    # And the LMS itself treats a duplicate enrollment as a no-op (CourseEnrollmentExistsError).
    OpenEdxClient(lms.url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET).post_enrollment("bob", COURSE, PRO)
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)


def test_revoke_to_audit_and_restore(lms, sink):
    sink.apply("bob", COURSE, PRO)
    assert sink.apply("bob", COURSE, AUDIT) == AUDIT
    assert sink.apply("bob", COURSE, PRO) == PRO  # refund reversed / bought again
    assert lms.state.refund_requests == []


def test_deactivation_never_takes_the_lms_refund_path(lms, sink):
    sink.apply("bob", COURSE, PRO)
    assert sink.apply("bob", COURSE, E("audit", False)) == E("audit", False)
    assert lms.state.enrollment("bob", COURSE) == ("audit", False)
    assert [(b["mode"], b["is_active"]) for b in lms.state.posts("bob")] == [
        ("professional", True),
        ("audit", True),
        ("audit", False),
    ]
    assert lms.state.refund_requests == []
    assert sink.apply("bob", COURSE, PRO) == PRO  # re-purchase reactivates in the paid mode


def test_the_fake_lms_refund_path_is_real(lms, client):
    """What the sink avoids: deactivating a paid enrollment as a JWT user asks for a refund."""
    client.post_enrollment("bob", COURSE, PRO)
    client.post_enrollment("bob", COURSE, E("professional", False))
    assert lms.state.refund_requests == [
        {"user": "bob", "course_id": COURSE, "mode": "professional", "by": "engine_worker"}
    ]


def test_the_mode_mismatch_guard(lms, client):
    client.post_enrollment("bob", COURSE, PRO)
    token = client._auth_headers(refresh=False)
    response = requests.post(
        f"{lms.url}/api/enrollment/v1/enrollment",
        headers=token,
        timeout=5,
        json={"user": "bob", "mode": "audit", "is_active": False, "course_details": {"course_id": COURSE}},
    )
    assert response.status_code == 400
    assert response.json()["message"] == (
        "Enrollment mode mismatch: active mode=professional, requested mode=audit. Won't deactivate."
    )
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)


def test_the_sink_reads_again_when_the_guard_says_its_read_was_stale(lms, sink, monkeypatch):
    sink.apply("bob", COURSE, PRO)
    sink.apply("bob", COURSE, AUDIT)  # bob was revoked to audit
    real_get = sink.client.get_enrollment
    reads = []

    def stale_once(username, course):
        reads.append(1)
        if len(reads) == 1:
            lms.state.set_enrollment("bob", COURSE, "honor")  # changed by hand between read and write
            return AUDIT
        return real_get(username, course)

    monkeypatch.setattr(sink.client, "get_enrollment", stale_once)
    assert sink.apply("bob", COURSE, E("audit", False)) == E("honor", False)
    assert len(reads) == 2


def test_non_staff_callers_get_the_documented_refusals(lms):
    lms.state.add_client("learner-app", "pw", service_user="alice", staff=False)
    token = requests.post(
        f"{lms.url}/oauth2/access_token",
        timeout=5,
        data={"grant_type": "client_credentials", "client_id": "learner-app", "client_secret": "pw"},
    ).json()
    assert token["token_type"] == "Bearer"
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    url = f"{lms.url}/api/enrollment/v1/enrollment"
    body = {"user": "alice", "mode": "professional", "course_details": {"course_id": COURSE}}
    assert requests.post(url, json=body, headers=auth, timeout=5).status_code == 403
    assert requests.post(url, json={**body, "user": "bob", "mode": "audit"}, headers=auth, timeout=5).status_code == 404
    assert requests.post(url, json={**body, "mode": "audit"}, headers=auth, timeout=5).json()["mode"] == "audit"
    assert requests.get(f"{lms.url}/api/enrollment/v1/enrollments", headers=auth, timeout=5).status_code == 403
    assert requests.get(f"{url}/alice,{COURSE}", timeout=5).status_code == 401


def test_errors_map_to_transient_or_terminal(lms, client):
    with pytest.raises(TerminalError, match="406"):
        client.post_enrollment("nobody", COURSE, PRO)  # the user does not exist
    with pytest.raises(TerminalError, match="unavailable"):
        client.post_enrollment("bob", COURSE, E("credit", True))  # mode not offered by the run
    with pytest.raises(TerminalError, match="No course"):
        client.post_enrollment("bob", "course-v1:Nope+X+Y", PRO)
    lms.state.fail_next(1, 503)
    with pytest.raises(TransientError) as info:
        client.get_enrollment("bob", COURSE)
    assert info.value.status == 503
    lms.state.fail_next(1, 429)
    with pytest.raises(TransientError):
        client.get_enrollment("bob", COURSE)


def test_down_then_back_on_the_same_port(lms, client):
    client.post_enrollment("bob", COURSE, PRO)
    lms.stop()
    with pytest.raises(TransientError, match="unreachable"):
        client.get_enrollment("bob", COURSE)
    lms.start()
    assert client.get_enrollment("bob", COURSE) == PRO
    lms.state.down = True  # a proxy in front of a dead LMS
    with pytest.raises(TransientError):
        client.get_enrollment("bob", COURSE)


def test_closed_enrollment_is_forced_for_paid_access(lms, client):
    closed = "course-v1:HypnoElp+H01ENB+2019"
    lms.state.add_course(closed, enrollment_closed=True)
    assert client.post_enrollment("bob", closed, PRO) == PRO  # force_enrollment, global staff
    lms.state.add_client("weak", "pw", service_user="ops", staff=False)
    lms.state.api_key = "k"
    keyed = OpenEdxClient(lms.url, api_key="k")
    with pytest.raises(TerminalError):
        keyed.post_enrollment("alice", closed, PRO)  # the API key cannot force


def test_bulk_enrollment_listing_for_staff(lms, client):
    for user in ("alice", "bob", "carol"):
        client.post_enrollment(user, COURSE, PRO)
    headers = client._auth_headers(refresh=False)
    page = requests.get(
        f"{lms.url}/api/enrollment/v1/enrollments",
        params={"course_id": COURSE, "page_size": 2},
        headers=headers,
        timeout=5,
    ).json()
    assert [r["user"] for r in page["results"]] == ["alice", "bob"] and page["next"]
    rest = requests.get(page["next"], headers=headers, timeout=5).json()
    assert [r["user"] for r in rest["results"]] == ["carol"] and rest["next"] is None


def test_a_fresh_lms_state_has_no_users():
    assert LmsState().users == {}
