"""A fake Open edX LMS over HTTP that behaves like openedx-platform, not kinder.

    POST /oauth2/access_token                          client credentials → JWT (or Bearer) token
    GET  /api/enrollment/v1/enrollment/{user},{course} one enrollment; 200 with an empty body if none
    POST /api/enrollment/v1/enrollment                 enroll / change mode / (de)activate
    GET  /api/enrollment/v1/course/{course}            a run's modes and dates (?include_expired=1)
    GET  /api/enrollment/v1/enrollments                global staff only, paginated

What it models, each after the openedx-platform code named where it is implemented:

* Authentication: ``X-Edx-Api-Key`` (server-to-server: privileged, anonymous) or
  ``Authorization: JWT|Bearer <token>``; a bad token is 401 even with a good key.
* Throttling (``EnrollmentUserThrottle``): 40 requests/min for users, 120/min for staff, the API
  key bypasses it; over the rate, 429 with ``Retry-After`` and DRF's "Request was throttled."
* Only privileged callers (API key or global staff) may ask for other modes than audit/honor
  (403), act for another user (404, empty body), change the mode or deactivate: through
  ``update_enrollment``, where a global-staff JWT caller cannot choose an expired mode (no
  ``include_expired``) and ``force_enrollment`` is not consulted. Everything else goes through
  ``add_enrollment``, where an expired mode or a closed enrollment needs ``force_enrollment``,
  heard from global staff only; enrollment closed is checked before an existing enrollment is
  returned. Course runs carry modes with an upgrade deadline (``expiration_datetime``; never on
  professional modes) and may offer no audit mode.
* The guard: mode and activation both change with ``is_active`` false → 400 "Enrollment mode
  mismatch … Won't deactivate." A mode unavailable → 400 with the message and the full
  ``course_details``. Unknown user → 406; unknown course → 400; no URL pattern matched → 404 page.
* A deactivation sends UNENROLL_DONE, a mode change ENROLLMENT_TRACK_UPDATED (``state.signals``).
  No course refund follows a deactivation (the commerce handler listens to REFUND_ORDER, which
  only the learner dashboard sends); the one refund UNENROLL_DONE reaches is a course
  entitlement's, while refundable (``state.entitlement_refunds``).

``LmsServer`` serves a ``LmsState`` on a real port in a thread; ``stop()`` then ``start()``
brings it down (connections refused) and back on the same port; ``state.down`` answers 503.
"""

from __future__ import annotations

from simulators.openedx_lms.app import create_lms_app
from simulators.openedx_lms.state import DEFAULT_MODES, THROTTLE_RATES, Call, Caller, Course, Enrollment, LmsState
from simulators.serving import ServedApp

__all__ = [
    "DEFAULT_MODES",
    "THROTTLE_RATES",
    "Call",
    "Caller",
    "Course",
    "Enrollment",
    "LmsServer",
    "LmsState",
    "create_lms_app",
]


class LmsServer(ServedApp):
    """The fake LMS on a real port, in a daemon thread; can be stopped and started again."""

    def __init__(self, state: LmsState | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.state = state if state is not None else LmsState()
        super().__init__(create_lms_app(self.state), host=host, port=port, name="openedx-lms")
