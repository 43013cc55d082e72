"""Which enrollment a grant calls for, and which LMS calls get there. Pure.

Open edX facts this follows (shared/reference/openedx.md, enrollments/views.py):

* ``POST /api/enrollment/v1/enrollment`` with ``mode`` and ``is_active`` creates an
  enrollment, or (server-to-server / global staff) changes its mode or activation. Sending the
  state it already has is harmless (``CourseEnrollmentExistsError`` returns it).
* The guard: when mode *and* activation both change and ``is_active`` is false, the LMS answers
  400 "Enrollment mode mismatch … Won't deactivate." So a deactivation names the current mode.
* Deactivating a paid enrollment as a logged-in user (a JWT service user) fires the LMS's
  unenroll signal, whose commerce handler asks ecommerce for a refund. A revocation must never
  do that: a paid enrollment is first moved to ``audit`` (a mode change fires no refund), and
  only then deactivated, in ``audit``.

A desired paid state is exact: enroll (pay-to-enroll), upgrade from audit, reactivate. A
desired free state (revocation) is a ceiling: it removes paid access but never creates or
reactivates an enrollment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.access import Access
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
# Modes that cost nothing: a revocation may leave a learner in one of these.
FREE_MODES: frozenset[str] = frozenset({"audit", "honor", "unpaid-executive-education", "unpaid-bootcamp"})
PAID_MODES: frozenset[str] = KNOWN_MODES - FREE_MODES

RevokePolicy = Literal["audit", "deactivate"]
REVOKE_POLICIES: frozenset[str] = frozenset({"audit", "deactivate"})

# LMS drift kinds (counted like provider drift, in the audit log's drift_kind).
LMS_MISSING = "lms_missing"  # paid access granted, no enrollment in the LMS
LMS_INACTIVE = "lms_inactive"  # paid access granted, enrollment deactivated in the LMS
LMS_WRONG_MODE = "lms_wrong_mode"  # enrollment active in another mode than the grant says
LMS_NOT_DEACTIVATED = "lms_not_deactivated"  # revoked by deactivation, still active (free mode)


def is_paid(mode: str) -> bool:
    return mode not in FREE_MODES


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
    """The desired state after a revocation: downgraded to audit, or deactivated."""
    return EnrollmentState(AUDIT, on_revoke != "deactivate")


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


def enrollment_calls(current: EnrollmentState | None, desired: EnrollmentState) -> tuple[EnrollmentState, ...]:
    """The POSTs (mode, is_active), in order, that turn ``current`` into ``desired``.

    Empty when nothing needs to change, which makes every outbox row idempotent.
    """
    if is_paid(desired.mode):
        return () if current == desired else (desired,)
    # Revocation: a ceiling. No enrollment, or an inactive one, already grants nothing.
    if current is None or not current.is_active:
        return ()
    if desired.is_active:  # downgrade
        return (EnrollmentState(AUDIT, True),) if is_paid(current.mode) else ()
    if is_paid(current.mode):  # deactivate a paid enrollment: never through the refund path
        return (EnrollmentState(AUDIT, True), EnrollmentState(AUDIT, False))
    return (EnrollmentState(current.mode, False),)  # the current mode: the guard accepts it


def lms_drift_kind(current: EnrollmentState | None, desired: EnrollmentState) -> str | None:
    """What kind of LMS drift ``current`` shows against ``desired`` (None: in sync)."""
    if not enrollment_calls(current, desired):
        return None
    if is_paid(desired.mode):
        if current is None:
            return LMS_MISSING
        return LMS_INACTIVE if not current.is_active else LMS_WRONG_MODE
    assert current is not None  # a revocation only needs calls when an enrollment is active
    return LMS_WRONG_MODE if is_paid(current.mode) else LMS_NOT_DEACTIVATED


def retry_delay_ms(attempts: int, *, jitter: float, base_ms: int = 2_000, cap_ms: int = 300_000) -> int:
    """Backoff before the next try after ``attempts`` failed ones: exponential, capped, with
    "equal jitter" (half fixed, half random; ``jitter`` in [0, 1)) so that rows failed together
    by one outage do not all come back in the same instant, and never retry at once."""
    ceiling = min(cap_ms, base_ms * 2 ** max(0, min(attempts - 1, 30)))
    half = ceiling // 2
    return half + int(jitter * (ceiling - half))
