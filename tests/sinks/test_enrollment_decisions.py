"""The pure decisions of the course sink: desired enrollment, LMS calls and their credential,
refusals, drift kinds, backoff."""

from __future__ import annotations

import itertools

import pytest

from engine.access import Access
from engine.backoff import backoff_ms
from engine.enrollment import (
    API_KEY,
    JWT,
    LMS_ENROLLMENT_CLOSED,
    LMS_MODE_NOT_OFFERED,
    LMS_UPGRADE_DEADLINE_PASSED,
    CourseMapping,
    CourseRun,
    EnrollmentCall,
    Refusal,
    desired_enrollment,
    in_sync,
    lms_drift_kind,
    plan_enrollment,
)
from engine.ports import EnrollmentState as E

NOW = 1_700_000_000_000
PRO, VERIFIED, AUDIT = E("professional", True), E("verified", True), E("audit", True)
DEACTIVATED = E(None, False)  # the desired state of a "deactivate" revocation
BOTH, KEY, TOKEN = frozenset({API_KEY, JWT}), frozenset({API_KEY}), frozenset({JWT})

OPEN = CourseRun({"audit": None, "honor": None, "verified": None, "professional": None}, complete=True)
# What an enrollment's course_details show of a run whose verified deadline passed: no verified.
PAST_DEADLINE_SEEN = CourseRun({"audit": None})
PAST_DEADLINE = CourseRun({"audit": None, "verified": NOW - 1}, complete=True)
CLOSED = CourseRun({"audit": None, "professional": None}, enrollment_end_ms=NOW - 1, complete=True)
NO_AUDIT = CourseRun({"professional": None, "no-id-professional": None})


def call(mode, is_active, credential, force=False):
    return EnrollmentCall(mode, is_active, credential, force)


PLANS = [
    # (case, current, desired, run, credentials, plan)
    ("pay-to-enroll with a JWT: forced", None, PRO, None, TOKEN, [call("professional", True, JWT, True)]),
    ("pay-to-enroll with the API key", None, PRO, OPEN, KEY, [call("professional", True, API_KEY)]),
    ("both credentials: the unthrottled API key", None, PRO, OPEN, BOTH, [call("professional", True, API_KEY)]),
    ("enrollment closed: only staff may force", None, PRO, CLOSED, BOTH, [call("professional", True, JWT, True)]),
    (
        "new enrollment past the deadline: forced",
        None,
        VERIFIED,
        PAST_DEADLINE,
        BOTH,
        [call("verified", True, JWT, True)],
    ),
    ("upgrade from audit with a JWT", AUDIT, PRO, OPEN, TOKEN, [call("professional", True, JWT)]),
    (
        "upgrade past the deadline: the API key",
        AUDIT,
        VERIFIED,
        PAST_DEADLINE_SEEN,
        BOTH,
        [call("verified", True, API_KEY)],
    ),
    (
        "reactivate in its own mode: no mode sent",
        E("verified", False),
        VERIFIED,
        PAST_DEADLINE,
        TOKEN,
        [call(None, True, JWT)],
    ),
    ("another paid mode is changed", E("verified", True), PRO, OPEN, TOKEN, [call("professional", True, JWT)]),
    ("already enrolled in the paid mode: idempotent", PRO, PRO, OPEN, BOTH, []),
    ("revoke to audit where the run offers audit", PRO, AUDIT, OPEN, TOKEN, [call("audit", True, JWT)]),
    ("revoke to audit on a run without audit: deactivate", PRO, AUDIT, NO_AUDIT, TOKEN, [call(None, False, JWT)]),
    ("revoke by deactivation: one call, no mode", PRO, DEACTIVATED, NO_AUDIT, BOTH, [call(None, False, API_KEY)]),
    ("deactivate an audit enrollment", AUDIT, DEACTIVATED, OPEN, TOKEN, [call(None, False, JWT)]),
    ("revoke to audit: free honor is left alone", E("honor", True), AUDIT, OPEN, TOKEN, []),
    ("revoke: never creates an enrollment", None, AUDIT, None, TOKEN, []),
    ("revoke: never reactivates", E("professional", False), DEACTIVATED, OPEN, TOKEN, []),
]


@pytest.mark.parametrize(("case", "current", "desired", "run", "creds", "plan"), PLANS, ids=[p[0] for p in PLANS])
def test_plan_enrollment(case, current, desired, run, creds, plan):
    planned = plan_enrollment(current, desired, run, credentials=creds, now_ms=NOW)
    assert not isinstance(planned, Refusal) and list(planned) == plan


REFUSALS = [
    ("JWT only: upgrade past the deadline", AUDIT, VERIFIED, PAST_DEADLINE, TOKEN, LMS_UPGRADE_DEADLINE_PASSED),
    (
        "JWT only: reactivate into another, expired mode",
        E("audit", False),
        VERIFIED,
        PAST_DEADLINE,
        TOKEN,
        LMS_UPGRADE_DEADLINE_PASSED,
    ),
    ("API key only: new enrollment past the deadline", None, VERIFIED, PAST_DEADLINE, KEY, LMS_UPGRADE_DEADLINE_PASSED),
    ("API key only: new enrollment after enrollment end", None, PRO, CLOSED, KEY, LMS_ENROLLMENT_CLOSED),
    ("the run has no such mode at all", AUDIT, E("credit", True), OPEN, BOTH, LMS_MODE_NOT_OFFERED),
]


@pytest.mark.parametrize(("case", "current", "desired", "run", "creds", "kind"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_their_kind(case, current, desired, run, creds, kind):
    refusal = plan_enrollment(current, desired, run, credentials=creds, now_ms=NOW)
    assert isinstance(refusal, Refusal) and refusal.kind == kind


STATES = [None, *(E(m, a) for m, a in itertools.product(["audit", "honor", "verified", "professional"], [True, False]))]
DESIRED_STATES = [PRO, VERIFIED, AUDIT, DEACTIVATED]
RUNS = [None, OPEN, PAST_DEADLINE, PAST_DEADLINE_SEEN, CLOSED, NO_AUDIT]


@pytest.mark.parametrize("creds", [BOTH, KEY, TOKEN], ids=["both", "api-key", "jwt"])
def test_no_call_deactivates_paid_access_trips_the_guard_or_takes_a_detour(creds):
    for current, desired, run in itertools.product(STATES, DESIRED_STATES, RUNS):
        plan = plan_enrollment(current, desired, run, credentials=creds, now_ms=NOW)
        if isinstance(plan, Refusal):
            assert desired.is_active and desired.mode not in {"audit", None}, (current, desired, run)
            continue
        assert len(plan) <= 1, "one POST per change: no downgrade-first detour"
        state = current
        for c in plan:
            if desired.mode not in {"audit", None}:
                assert c.is_active, "a call never deactivates an enrollment the grant says is paid"
            if not c.is_active:
                assert c.mode is None, "a deactivation names no mode: neither the mode check nor the guard"
            assert c.credential in creds and (not c.force or c.credential == JWT)
            mode = c.mode
            if mode is None:
                assert state is not None, "a new enrollment names its mode"
                mode = state.mode
            state = E(mode, c.is_active)
        assert in_sync(state, desired), (current, desired, run, plan)


DRIFT = [
    ("in sync", PRO, PRO, None),
    ("learner missing from the LMS", None, PRO, "lms_missing"),
    ("enrollment deactivated by hand", E("professional", False), PRO, "lms_inactive"),
    ("downgraded to audit by hand", AUDIT, PRO, "lms_wrong_mode"),
    ("revoked but still paid in the LMS", PRO, AUDIT, "lms_wrong_mode"),
    ("revoked by deactivation, still paid", PRO, DEACTIVATED, "lms_wrong_mode"),
    ("revoked by deactivation, still active in audit", AUDIT, DEACTIVATED, "lms_not_deactivated"),
    ("revoked to audit on a run without audit: deactivated", E("professional", False), AUDIT, None),
    ("revoked to audit, learner unenrolled themselves", E("audit", False), AUDIT, None),
    ("revoked, never enrolled", None, AUDIT, None),
]


@pytest.mark.parametrize(("case", "current", "desired", "kind"), DRIFT, ids=[d[0] for d in DRIFT])
def test_lms_drift_kind(case, current, desired, kind):
    assert lms_drift_kind(current, desired) == kind


MAP = CourseMapping("course:H01ENB", "course-v1:Org+H01ENB+2024", "professional")
GRANT = Access("course:H01ENB", "paid", None, ("tx1",))

DESIRED = [
    ("granted: the mapping's paid mode", GRANT, MAP, PRO),
    ("no grant, revoke to audit", None, MAP, AUDIT),
    (
        "no grant, revoke by deactivation: no mode named",
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


def test_a_run_offers_a_mode_until_its_deadline_and_enrollment_inside_its_window():
    run = CourseRun({"verified": NOW}, enrollment_start_ms=NOW - 10, enrollment_end_ms=NOW + 10)
    assert run.offers("verified", NOW) and not run.offers("verified", NOW + 1) and not run.offers("audit", NOW)
    assert run.enrollment_open(NOW) and not run.enrollment_open(NOW - 10) and not run.enrollment_open(NOW + 10)


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
    assert backoff_ms(attempts, base_ms=2_000, jitter=jitter, cap_ms=300_000) == expected


def test_retry_delay_never_zero_and_grows_until_the_cap():
    delays = [backoff_ms(n, base_ms=2_000, jitter=0.0, cap_ms=300_000) for n in range(1, 20)]
    assert delays[0] > 0 and delays == sorted(delays) and max(delays) == 150_000
