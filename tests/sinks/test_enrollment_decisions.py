"""The pure decisions of the course sink: desired enrollment, LMS calls, drift kinds, backoff."""

from __future__ import annotations

import pytest

from engine.access import Access
from engine.enrollment import (
    CourseMapping,
    desired_enrollment,
    enrollment_calls,
    lms_drift_kind,
    retry_delay_ms,
)
from engine.ports import EnrollmentState as E

PRO = E("professional", True)
AUDIT = E("audit", True)
DEACTIVATED = E("audit", False)  # the desired state of a "deactivate" revocation

CALLS = [
    # (case, current, desired, calls)
    ("pay-to-enroll: no enrollment yet", None, PRO, [PRO]),
    ("upgrade from audit", AUDIT, PRO, [PRO]),
    ("upgrade from honor", E("honor", True), PRO, [PRO]),
    ("already enrolled in the paid mode: idempotent", PRO, PRO, []),
    ("reactivate a deactivated paid enrollment", E("professional", False), PRO, [PRO]),
    ("reactivate and upgrade a deactivated audit enrollment", E("audit", False), PRO, [PRO]),
    ("another paid mode is changed", E("verified", True), PRO, [PRO]),
    ("revoke to audit", PRO, AUDIT, [AUDIT]),
    ("revoke to audit: already audit", AUDIT, AUDIT, []),
    ("revoke to audit: free honor is left alone", E("honor", True), AUDIT, []),
    ("revoke to audit: never creates an enrollment", None, AUDIT, []),
    ("revoke to audit: never reactivates", E("professional", False), AUDIT, []),
    (
        "deactivate paid: downgrade first, then deactivate in audit (no refund path, guard passes)",
        PRO,
        DEACTIVATED,
        [AUDIT, DEACTIVATED],
    ),
    ("deactivate audit: send the current mode", AUDIT, DEACTIVATED, [DEACTIVATED]),
    (
        "deactivate honor: send the current mode (the guard refuses another)",
        E("honor", True),
        DEACTIVATED,
        [E("honor", False)],
    ),
    ("deactivate: nothing to deactivate", None, DEACTIVATED, []),
    ("deactivate: already inactive", E("professional", False), DEACTIVATED, []),
]


@pytest.mark.parametrize(("case", "current", "desired", "calls"), CALLS, ids=[c[0] for c in CALLS])
def test_enrollment_calls(case, current, desired, calls):
    assert list(enrollment_calls(current, desired)) == calls


@pytest.mark.parametrize(("case", "current", "desired", "calls"), CALLS, ids=[c[0] for c in CALLS])
def test_no_call_ever_deactivates_a_paid_enrollment_or_trips_the_guard(case, current, desired, calls):
    state = current
    for call in enrollment_calls(current, desired):
        if not call.is_active:
            assert call.mode in {"audit", "honor"}, "deactivating a paid enrollment is the LMS refund path"
            assert state is not None and state.mode == call.mode, "mode and activation changing together: the guard"
        state = call
    assert enrollment_calls(state, desired) == ()  # one pass converges: re-sending is harmless


DRIFT = [
    ("in sync", PRO, PRO, None),
    ("learner missing from the LMS", None, PRO, "lms_missing"),
    ("enrollment deactivated by hand", E("professional", False), PRO, "lms_inactive"),
    ("downgraded to audit by hand", AUDIT, PRO, "lms_wrong_mode"),
    ("revoked but still paid in the LMS", PRO, AUDIT, "lms_wrong_mode"),
    ("revoked by deactivation, still paid", PRO, DEACTIVATED, "lms_wrong_mode"),
    ("revoked by deactivation, still active in audit", AUDIT, DEACTIVATED, "lms_not_deactivated"),
    ("revoked to audit, learner unenrolled themselves", E("audit", False), AUDIT, None),
    ("revoked, never enrolled", None, AUDIT, None),
]


@pytest.mark.parametrize(("case", "current", "desired", "kind"), DRIFT, ids=[d[0] for d in DRIFT])
def test_lms_drift_kind(case, current, desired, kind):
    assert lms_drift_kind(current, desired) == kind


NOW = 1_700_000_000_000
MAP = CourseMapping("course:H01ENB", "course-v1:Org+H01ENB+2024", "professional")
GRANT = Access("course:H01ENB", "paid", None, ("tx1",))

DESIRED = [
    ("granted: the mapping's paid mode", GRANT, MAP, PRO),
    ("no grant, revoke to audit", None, MAP, AUDIT),
    (
        "no grant, revoke by deactivation",
        None,
        CourseMapping(MAP.resource, MAP.course_run_id, "professional", on_revoke="deactivate"),
        DEACTIVATED,
    ),
    ("grant already expired", Access("course:H01ENB", "paid", NOW - 1), MAP, AUDIT),
    ("grant still running", Access("course:H01ENB", "paid", NOW + 1), MAP, PRO),
    (
        "mapping inactive: no LMS call at all",
        GRANT,
        CourseMapping(MAP.resource, MAP.course_run_id, "professional", active=False),
        None,
    ),
    (
        "mapping expired: paid access to the run ends",
        GRANT,
        CourseMapping(MAP.resource, MAP.course_run_id, "no-id-professional", expires_ms=NOW),
        AUDIT,
    ),
    (
        "mapping not yet expired",
        GRANT,
        CourseMapping(MAP.resource, MAP.course_run_id, "no-id-professional", expires_ms=NOW + 1),
        E("no-id-professional", True),
    ),
]


@pytest.mark.parametrize(("case", "access", "mapping", "desired"), DESIRED, ids=[d[0] for d in DESIRED])
def test_desired_enrollment(case, access, mapping, desired):
    assert desired_enrollment(access, mapping, NOW) == desired


@pytest.mark.parametrize(
    ("attempts", "jitter", "expected"),
    [
        (1, 0.0, 1_000),
        (1, 0.999, 1_999),
        (2, 0.0, 2_000),
        (3, 0.5, 6_000),
        (10, 0.0, 150_000),
        (10, 0.999, 299_850),
        (60, 0.0, 150_000),  # capped at 300 s
    ],
)
def test_retry_delay_is_exponential_capped_and_jittered(attempts, jitter, expected):
    assert retry_delay_ms(attempts, jitter=jitter, cap_ms=300_000) == expected


def test_retry_delay_never_zero_and_grows_until_the_cap():
    delays = [retry_delay_ms(n, jitter=0.0, cap_ms=300_000) for n in range(1, 20)]
    assert delays[0] > 0 and delays == sorted(delays) and max(delays) == 150_000
