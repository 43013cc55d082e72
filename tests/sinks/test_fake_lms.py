"""The fake LMS over plain HTTP behaves like openedx-platform, not kinder: throttling, upgrade
deadlines, enrollment windows, the guard, error bodies, what a deactivation sets off."""

from __future__ import annotations

import pytest
import requests

from simulators.openedx_lms import LmsServer
from tests.sinks.conftest import API_KEY, CLIENT_ID, CLIENT_SECRET, COURSE

ENROLL = "/api/enrollment/v1/enrollment"
PAST_DEADLINE = "course-v1:HypnoElp+H01ENB+2023"
CLOSED = "course-v1:HypnoElp+H01ENB+2019"


def token(lms: LmsServer, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "token_type": "jwt"}
    answer = requests.post(f"{lms.url}/oauth2/access_token", data=body, timeout=5).json()
    return {"Authorization": f"{answer['token_type']} {answer['access_token']}"}


def post(lms: LmsServer, headers: dict[str, str], course: str = COURSE, **fields: object) -> requests.Response:
    body = {"user": "bob", "course_details": {"course_id": course}, **fields}
    return requests.post(f"{lms.url}{ENROLL}", json=body, headers=headers, timeout=5)


@pytest.fixture
def jwt(lms: LmsServer) -> dict[str, str]:
    return token(lms)


@pytest.fixture
def key(lms: LmsServer) -> dict[str, str]:
    lms.state.api_key = API_KEY
    return {"X-Edx-Api-Key": API_KEY}


@pytest.fixture
def runs(lms: LmsServer) -> None:
    now = lms.state.clock()
    lms.state.add_course(PAST_DEADLINE, modes=("audit", "verified"), deadlines={"verified": now - 60})
    lms.state.add_course(CLOSED, modes=("audit", "professional"), enrollment_end=now - 60)


def test_staff_jwt_callers_are_throttled_at_120_a_minute_and_the_api_key_never(lms, jwt, key):
    url = f"{lms.url}{ENROLL}/bob,{COURSE}"
    assert all(requests.get(url, headers=jwt, timeout=5).status_code == 200 for _ in range(120))
    refused = requests.get(url, headers=jwt, timeout=5)
    assert refused.status_code == 429 and 55 <= int(refused.headers["Retry-After"]) <= 60
    assert (
        refused.json()["detail"]
        == f"Request was throttled. Expected available in {refused.headers['Retry-After']} seconds."
    )
    assert requests.get(url, headers=key, timeout=5).status_code == 200  # ApiKeyHeaderPermission bypasses it
    lms.state.add_client("learner-app", "pw", service_user="alice", staff=False)
    learner = token(lms, "learner-app", "pw")
    own = f"{lms.url}{ENROLL}/alice,{COURSE}"
    assert [requests.get(own, headers=learner, timeout=5).status_code for _ in range(41)][-2:] == [200, 429]


def test_a_staff_jwt_cannot_upgrade_past_the_deadline_the_api_key_can(lms, jwt, key, runs):
    lms.state.set_enrollment("bob", PAST_DEADLINE, "audit")
    refused = post(lms, jwt, PAST_DEADLINE, mode="verified", is_active=True, force_enrollment=True)
    assert refused.status_code == 400  # force_enrollment is not consulted on the update path
    assert refused.json()["message"] == (
        f"The [verified] course mode is expired or otherwise unavailable for course run [{PAST_DEADLINE}]."
    )
    details = refused.json()["course_details"]  # the full course details, as views.py answers them
    assert {"course_id", "course_name", "enrollment_start", "enrollment_end", "course_start", "course_end"} <= set(
        details
    )
    assert {"invite_only", "course_modes", "pacing_type"} <= set(details)
    assert [m["slug"] for m in details["course_modes"]] == ["audit"]  # expired modes are not listed
    assert post(lms, key, PAST_DEADLINE, mode="verified", is_active=True).json()["mode"] == "verified"


def test_a_new_enrollment_past_the_deadline_needs_force_from_global_staff(lms, jwt, key, runs):
    assert post(lms, key, PAST_DEADLINE, mode="verified", force_enrollment=True).status_code == 400
    assert post(lms, jwt, PAST_DEADLINE, mode="verified").status_code == 400
    assert post(lms, jwt, PAST_DEADLINE, mode="verified", force_enrollment=True).json()["mode"] == "verified"


def test_enrollment_closed_is_checked_before_an_existing_enrollment_is_returned(lms, jwt, key, runs):
    lms.state.set_enrollment("bob", CLOSED, "professional")
    again = post(lms, key, CLOSED, mode="professional")  # nothing changes: add_enrollment, unforced
    assert again.status_code == 400 and again.json()["message"].startswith("An error occurred while creating")
    assert post(lms, jwt, CLOSED, mode="professional", force_enrollment=True).json()["mode"] == "professional"
    assert post(lms, jwt, COURSE, mode="professional").json()["mode"] == "professional"  # open run: created
    assert post(lms, jwt, COURSE, mode="professional").status_code == 200  # and returned as it is


def test_a_deactivation_passes_expired_modes_and_runs_without_audit_and_refunds_no_course(lms, jwt, runs):
    lms.state.set_enrollment("bob", PAST_DEADLINE, "verified")
    lms.state.add_course("course-v1:HypnoElp+PRO+1", modes=("professional",))
    lms.state.set_enrollment("bob", "course-v1:HypnoElp+PRO+1", "professional")
    for course in (PAST_DEADLINE, "course-v1:HypnoElp+PRO+1"):
        assert post(lms, jwt, course, is_active=False).json()["is_active"] is False
    no_audit = post(lms, jwt, "course-v1:HypnoElp+PRO+1", mode="audit", is_active=True)
    assert no_audit.status_code == 400 and "unavailable" in no_audit.json()["message"]
    assert [s[0] for s in lms.state.signals] == ["UNENROLL_DONE", "UNENROLL_DONE"]
    assert lms.state.entitlement_refunds == []  # the commerce refund handler listens to REFUND_ORDER only


def test_the_one_refund_a_deactivation_reaches_is_an_entitlements(lms, jwt):
    lms.state.set_enrollment("bob", COURSE, "verified")
    lms.state.add_entitlement("bob", COURSE)  # bob redeemed a course entitlement on this run
    post(lms, jwt, is_active=False)
    assert lms.state.entitlement_refunds == [{"user": "bob", "course_id": COURSE}]


def test_the_mode_mismatch_guard(lms, jwt):
    post(lms, jwt, mode="professional")
    refused = post(lms, jwt, mode="audit", is_active=False)
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "Enrollment mode mismatch: active mode=professional, requested mode=audit. Won't deactivate."
    )
    assert lms.state.enrollment("bob", COURSE) == ("professional", True)


def test_professional_modes_have_no_upgrade_deadline(lms):
    with pytest.raises(ValueError, match="not allowed to have expiration_datetime"):
        lms.state.add_course("course-v1:X+Y+Z", modes=("professional",), deadlines={"professional": 0.0})


def test_course_details_unknown_courses_and_unknown_paths(lms, runs):
    url = f"{lms.url}/api/enrollment/v1/course/{PAST_DEADLINE}"
    assert [m["slug"] for m in requests.get(url, timeout=5).json()["course_modes"]] == ["audit"]
    every = requests.get(url, params={"include_expired": "1"}, timeout=5).json()["course_modes"]
    assert [m["slug"] for m in every] == ["audit", "verified"] and every[1]["expiration_datetime"].endswith("Z")
    missing = requests.get(f"{lms.url}/api/enrollment/v1/course/course-v1:No+Such+Run", timeout=5)
    assert missing.status_code == 400 and missing.json()["message"].startswith("No course found")
    lost = requests.get(f"{lms.url}/lms/api/enrollment/v1/course/{COURSE}", timeout=5)
    assert lost.status_code == 404 and lost.headers["Content-Type"].startswith("text/html")


def test_non_staff_callers_get_the_documented_refusals(lms):
    lms.state.add_client("learner-app", "pw", service_user="alice", staff=False)
    body = {"grant_type": "client_credentials", "client_id": "learner-app", "client_secret": "pw"}
    answer = requests.post(f"{lms.url}/oauth2/access_token", data=body, timeout=5).json()
    assert answer["token_type"] == "Bearer"
    auth = {"Authorization": f"Bearer {answer['access_token']}"}
    assert post(lms, auth, user="alice", mode="professional").status_code == 403
    hidden = post(lms, auth, mode="audit")  # bob is another user
    assert hidden.status_code == 404 and hidden.content == b""
    assert post(lms, auth, user="alice", mode="audit").json()["mode"] == "audit"
    assert requests.get(f"{lms.url}/api/enrollment/v1/enrollments", headers=auth, timeout=5).status_code == 403
    assert requests.get(f"{lms.url}{ENROLL}/alice,{COURSE}", timeout=5).status_code == 401


def test_bulk_enrollment_listing_for_staff(lms, jwt):
    for user in ("alice", "bob", "carol"):
        post(lms, jwt, user=user, mode="professional")
    url = f"{lms.url}/api/enrollment/v1/enrollments"
    page = requests.get(url, params={"course_id": COURSE, "page_size": "2"}, headers=jwt, timeout=5).json()
    assert [r["user"] for r in page["results"]] == ["alice", "bob"] and page["next"]
    rest = requests.get(page["next"], headers=jwt, timeout=5).json()
    assert [r["user"] for r in rest["results"]] == ["carol"] and rest["next"] is None
