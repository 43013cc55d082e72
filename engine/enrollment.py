"""Which enrollment a grant calls for, and which LMS calls, with which credential, get there. Pure.

openedx-platform facts this follows (shared/reference/openedx.md; the functions named decide):

* ``POST /api/enrollment/v1/enrollment`` (enrollments/views.py, ``EnrollmentListView.post``): for a
  privileged caller (API key or global staff) a change of mode or activation of an existing
  enrollment goes through ``api.update_enrollment(include_expired=<API key>)``; anything else
  (a new enrollment) through ``api.add_enrollment(force_enrollment=<global staff and asked>,
  include_expired=<force>)``.
* ``api.update_enrollment`` checks the mode only when one is sent, and ``api.validate_course_mode``
  counts expired modes when the request deactivates. So a deactivation (``is_active: false``, no
  ``mode``) passes the mode check on every run (expired modes, no audit mode) and, the mode not
  changing, never trips the guard "Enrollment mode mismatch … Won't deactivate." A reactivation
  in the enrollment's own mode, sent without a mode, passes the mode check too.
* ``CourseMode.expiration_datetime`` is the upgrade deadline (course_modes/models.py;
  ``CourseMode.clean``: professional modes never have one). A global-staff JWT caller cannot move
  an existing enrollment into an expired mode (``include_expired`` follows API-key permission,
  ``force_enrollment`` is not consulted there); an API-key caller cannot create an enrollment in
  an expired mode or after enrollment end (``CourseEnrollment.enroll(check_access=True,
  can_upgrade=force)``), ``force_enrollment`` being for global staff only.
* Deactivating starts no course refund: ``CourseEnrollment.update_enrollment`` sends
  ``UNENROLL_DONE``, and the commerce refund handler (lms/djangoapps/commerce/signals.py) listens
  to ``REFUND_ORDER`` only. So a revocation is one deactivation; it downgrades to audit instead
  only where the mapping asks for it and the run offers audit.

A desired paid state is exact (enroll, upgrade, reactivate). A desired revocation is a ceiling: it
removes paid access but never creates or reactivates an enrollment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeGuard

from engine.access import Access
from engine.errors import SinkAuthError, TerminalError
from engine.ports import EnrollmentState

AUDIT = "audit"

# common/djangoapps/course_modes/models.py: every slug the LMS knows.
KNOWN_MODES: frozenset[str] = frozenset(
    {
        "honor",
        "professional",
        "verified",
        "audit",
        "no-id-professional",
        "credit",
        "masters",
        "executive-education",
        "paid-executive-education",
        "unpaid-executive-education",
        "paid-bootcamp",
        "unpaid-bootcamp",
    }
)
# CourseMode.AUDIT_MODES: modes that cost nothing; a revocation may leave a learner in one.
FREE_MODES: frozenset[str] = frozenset({"audit", "honor", "unpaid-executive-education", "unpaid-bootcamp"})
PAID_MODES: frozenset[str] = KNOWN_MODES - FREE_MODES

RevokePolicy = Literal["audit", "deactivate"]
REVOKE_POLICIES: frozenset[str] = frozenset({"audit", "deactivate"})


def is_revoke_policy(value: str) -> TypeGuard[RevokePolicy]:
    return value in REVOKE_POLICIES


Credential = Literal["api_key", "jwt"]
API_KEY: Credential = "api_key"
JWT: Credential = "jwt"

# LMS drift kinds (counted like provider drift, in the audit log's drift_kind).
LMS_MISSING = "lms_missing"  # paid access granted, no enrollment in the LMS
LMS_INACTIVE = "lms_inactive"  # paid access granted, enrollment deactivated in the LMS
LMS_WRONG_MODE = "lms_wrong_mode"  # enrollment active in another mode than the grant says
LMS_NOT_DEACTIVATED = "lms_not_deactivated"  # revoked by deactivation, still active (free mode)
# LMS refusals: a change the LMS will not take from any configured credential (terminal for the
# outbox row, alerted, counted and shown in the drift report with this kind).
LMS_UPGRADE_DEADLINE_PASSED = "lms_upgrade_deadline_passed"
LMS_ENROLLMENT_CLOSED = "lms_enrollment_closed"
LMS_MODE_NOT_OFFERED = "lms_mode_not_offered"
LMS_USER_MISSING = "lms_user_missing"
LMS_COURSE_MISSING = "lms_course_missing"


class LmsRefusal(TerminalError):
    """The LMS will not take this one change (``kind`` says why); other changes still go out."""

    def __init__(self, kind: str, message: str, *, status: int | None = None):
        super().__init__(message, status=status)
        self.kind = kind


class LmsMisconfigured(SinkAuthError):
    """The LMS base URL or path is wrong (404 where the Enrollment API must answer): no change can
    go out until an operator fixes it, so the sink pauses and alerts, every row kept."""


def is_paid(mode: str | None) -> bool:
    return mode is not None and mode not in FREE_MODES


def is_revocation(desired: EnrollmentState) -> bool:
    return not desired.is_active or not is_paid(desired.mode)


@dataclass(frozen=True)
class CourseMapping:
    """A granted resource → one Open edX course run, the paid mode, and how to revoke.

    ``active`` False: the engine leaves this course alone (no LMS call at all). ``expires_ms``:
    paid access to this run ends then even when the grant lasts longer (the run closes).
    """

    resource: str
    course_run_id: str
    mode: str
    active: bool = True
    expires_ms: int | None = None
    on_revoke: RevokePolicy = "audit"


def revocation_state(on_revoke: str) -> EnrollmentState:
    """The desired state after a revocation: audit where the run offers it, or deactivated
    (mode None: the LMS keeps whatever mode the enrollment has)."""
    return EnrollmentState(AUDIT, True) if on_revoke != "deactivate" else EnrollmentState(None, False)


def desired_enrollment(access: Access | None, mapping: CourseMapping, now_ms: int) -> EnrollmentState | None:
    """The enrollment a grant (None: no grant) calls for; None when the mapping is inactive."""
    if not mapping.active:
        return None
    entitled = access is not None and access.is_active(now_ms)
    if mapping.expires_ms is not None and now_ms >= mapping.expires_ms:
        entitled = False
    if entitled:
        return EnrollmentState(mapping.mode, True)
    return revocation_state(mapping.on_revoke)


def in_sync(current: EnrollmentState | None, desired: EnrollmentState) -> bool:
    """Whether the LMS already holds what ``desired`` asks (a revocation is a ceiling)."""
    if not is_revocation(desired):
        return current == desired
    if current is None or not current.is_active:
        return True  # nothing active: a revocation never creates or reactivates
    return desired.is_active and not is_paid(current.mode)  # downgrade: a free mode is fine


def lms_drift_kind(current: EnrollmentState | None, desired: EnrollmentState) -> str | None:
    """What kind of LMS drift ``current`` shows against ``desired`` (None: in sync)."""
    if in_sync(current, desired):
        return None
    if not is_revocation(desired):
        if current is None:
            return LMS_MISSING
        return LMS_INACTIVE if not current.is_active else LMS_WRONG_MODE
    assert current is not None  # a revocation only needs calls when an enrollment is active
    return LMS_WRONG_MODE if is_paid(current.mode) else LMS_NOT_DEACTIVATED


@dataclass(frozen=True)
class CourseRun:
    """A course run as the LMS describes it (``course_details``): its modes with their upgrade
    deadline (ms, None: none) and its enrollment window.

    ``complete``: expired modes are listed too (``include_expired``). Otherwise, like the
    ``course_details`` of an enrollment, the listing holds unexpired modes only, and a mode
    missing from it may be expired or not offered at all.
    """

    modes: Mapping[str, int | None] = field(default_factory=dict)
    enrollment_start_ms: int | None = None
    enrollment_end_ms: int | None = None
    complete: bool = False

    def offers(self, mode: str, now_ms: int) -> bool:
        """The mode can be chosen now (CourseMode.modes_for_course: expiration >= now)."""
        if mode not in self.modes:
            return False
        deadline = self.modes[mode]
        return deadline is None or deadline >= now_ms

    def enrollment_open(self, now_ms: int) -> bool:
        """courseware access ``_can_enroll_courselike``: enrollment_start < now < enrollment_end."""
        start, end = self.enrollment_start_ms, self.enrollment_end_ms
        return (start is None or start < now_ms) and (end is None or now_ms < end)


@dataclass(frozen=True)
class EnrollmentCall:
    """One POST: ``mode`` None sends no mode (the LMS keeps the enrollment's own and checks none);
    ``force`` sends ``force_enrollment`` (heard from global staff only)."""

    mode: str | None
    is_active: bool
    credential: Credential
    force: bool = False


@dataclass(frozen=True)
class Refusal:
    """No configured credential can make this change now: ``kind`` is an LMS refusal kind."""

    kind: str
    reason: str


def plan_enrollment(
    current: EnrollmentState | None,
    desired: EnrollmentState,
    run: CourseRun | None,
    *,
    credentials: frozenset[Credential],
    now_ms: int,
) -> tuple[EnrollmentCall, ...] | Refusal:
    """The POSTs, in order, each with the credential the LMS accepts it from, that turn ``current``
    into ``desired`` on ``run`` (None: unknown); a Refusal when no credential can.

    Empty when nothing needs to change, which makes every outbox row idempotent. The API key is
    preferred wherever it is accepted: the LMS does not throttle it (``EnrollmentUserThrottle``).
    """
    if not credentials:
        raise ValueError("no LMS credential configured")
    if in_sync(current, desired):
        return ()
    preferred: Credential = API_KEY if API_KEY in credentials else JWT
    if is_revocation(desired):
        if desired.is_active and run is not None and run.offers(AUDIT, now_ms):
            return (EnrollmentCall(AUDIT, True, preferred),)  # the mapping asks for audit, the run has it
        return (EnrollmentCall(None, False, preferred),)  # one deactivation: no mode, no guard, no mode check
    mode = desired.mode
    assert mode is not None
    if run is not None and run.complete and mode not in run.modes:
        return Refusal(LMS_MODE_NOT_OFFERED, f"the course run offers no {mode} mode (check the course mapping)")
    if current is None:  # api.add_enrollment
        if API_KEY in credentials and (run is None or (run.offers(mode, now_ms) and run.enrollment_open(now_ms))):
            return (EnrollmentCall(mode, True, API_KEY),)
        if JWT in credentials:
            return (EnrollmentCall(mode, True, JWT, force=True),)  # include_expired and can_upgrade
        assert run is not None
        if not run.offers(mode, now_ms):
            return Refusal(
                LMS_UPGRADE_DEADLINE_PASSED,
                f"the {mode} upgrade deadline{_when(run.modes.get(mode))} has passed: a new enrollment in it "
                "needs force_enrollment from a global-staff OAuth2 client (OPENEDX_CLIENT_ID/SECRET); "
                "the API key cannot force",
            )
        return Refusal(
            LMS_ENROLLMENT_CLOSED,
            f"enrollment in the run is closed{_when(run.enrollment_end_ms)}: a new enrollment "
            "needs force_enrollment from a global-staff OAuth2 client (OPENEDX_CLIENT_ID/SECRET); "
            "the API key cannot force",
        )
    if current.mode == mode:  # reactivation in its own mode: sent without a mode, nothing to check
        return (EnrollmentCall(None, True, preferred),)
    if API_KEY in credentials:  # api.update_enrollment(include_expired=True)
        return (EnrollmentCall(mode, True, API_KEY),)
    if run is not None and run.offers(mode, now_ms):
        return (EnrollmentCall(mode, True, JWT),)
    deadline = run.modes.get(mode) if run is not None else None
    return Refusal(
        LMS_UPGRADE_DEADLINE_PASSED,
        f"the {mode} upgrade deadline{_when(deadline)} has passed: a global-staff JWT caller cannot move "
        f"an existing enrollment ({current.mode}, {'active' if current.is_active else 'inactive'}) into it "
        "(force_enrollment is not consulted there); the LMS's API key can (OPENEDX_API_KEY)",
    )


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return " (" + datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z") + ")"
