"""``POST /api/enrollment/v1/enrollment`` of the fake LMS: ``EnrollmentListView.post`` (views.py)
with ``api.add_enrollment`` / ``api.update_enrollment`` / ``api.validate_course_mode`` (api.py),
``data.create_course_enrollment`` (data.py) and ``CourseEnrollment.enroll`` (course_enrollment.py),
check for check, in their order."""

from __future__ import annotations

from typing import Any

from flask import Response

from simulators.openedx_lms.serializers import course_json, empty_response, enrollment_json, json_response
from simulators.openedx_lms.state import FREE_MODES, VALID_COURSE_KEY, Caller, Course, Enrollment, LmsState


class _Refused(Exception):
    """An error the view turns into a response (CourseModeNotFoundError, CourseNotFoundError…)."""

    def __init__(self, response: Response):
        self.response = response


def enrollment_post(state: LmsState, caller: Caller, data: dict[str, Any]) -> Response:
    """EnrollmentListView.post, step by step."""
    username = data.get("user")
    course_details = data.get("course_details") or {}
    course_id = course_details.get("course_id") if isinstance(course_details, dict) else None
    if not course_id:
        return json_response({"message": "Course ID must be specified to create a new enrollment."}, 400)
    if not VALID_COURSE_KEY.match(str(course_id)):  # CourseKey.from_string → InvalidKeyError
        return json_response({"message": f"No course '{course_id}' found for enrollment"}, 400)
    mode = data.get("mode")
    if username and username != caller.username and not caller.privileged:
        return empty_response(404)  # not a 403: one user may not learn of another's enrollment
    username = username or caller.username
    if mode not in (*FREE_MODES, None) and not caller.privileged:
        return json_response(
            {"message": f"User does not have permission to create enrollment with mode [{mode}]."}, 403
        )
    with state.lock:
        if username not in state.users:
            return json_response({"message": f"The user {username} does not exist."}, 406)
        is_active = data.get("is_active")
        try:
            if is_active is not None and not isinstance(is_active, bool):
                return json_response({"message": f"'{is_active}' is an invalid enrollment activation status."}, 400)
            force = data.get("force_enrollment")
            if force is not None and not isinstance(force, bool):
                return json_response({"message": f"'{force}' is an invalid force enrollment status."}, 400)
            force = bool(force) and caller.staff  # "Only a staff user role can enroll a user forcefully"
            existing = state.enrollments.get((username, course_id))
            mode_changed = existing is not None and mode is not None and existing.mode != mode
            active_changed = existing is not None and is_active is not None and existing.is_active != is_active
            if caller.privileged and (mode_changed or active_changed):
                assert existing is not None
                if mode_changed and active_changed and not is_active:
                    message = (
                        f"Enrollment mode mismatch: active mode={existing.mode}, requested mode={mode}. "
                        "Won't deactivate."
                    )
                    return json_response({"message": message}, 400)
                # api.update_enrollment(include_expired=has_api_key_permissions): force is not consulted
                if mode is not None:
                    _validate_course_mode(state, course_id, mode, is_active, include_expired=caller.api_key)
                state.update_enrollment(existing, mode=mode, is_active=is_active)
                return json_response(enrollment_json(state, existing))
            return json_response(_add_enrollment(state, username, course_id, mode, is_active, force=force))
        except _Refused as refused:
            return refused.response
        finally:
            if caller.api_key:  # audit_log("enrollment_change_requested", ...)
                current = state.enrollments.get((username, course_id))
                state.audit_log.append(
                    {
                        "event": "enrollment_change_requested",
                        "course_id": course_id,
                        "requested_mode": mode,
                        "actual_mode": current.mode if current else None,
                        "requested_activation": is_active,
                        "actual_activation": current.is_active if current else None,
                        "user": username,
                    }
                )


def _add_enrollment(
    state: LmsState, username: str, course_id: str, mode: str | None, is_active: bool | None, *, force: bool
) -> dict[str, Any]:
    """api.add_enrollment(include_expired=force) → data.create_course_enrollment →
    CourseEnrollment.enroll(check_access=True, can_upgrade=force)."""
    course = _course(state, course_id)
    now = state.clock()
    if mode is None:
        mode = course.default_mode(now)
    _validate_course_mode(state, course_id, mode, is_active, include_expired=force)
    # enroll(): enrollment closed is checked before "already enrolled", so an unforced call for a
    # closed run is refused even when the learner is enrolled.
    learner_is_staff = state.users.get(username, False)  # staff may enroll outside the window
    if course.enrollment_closed(now) and not force and not learner_is_staff:
        raise _Refused(
            json_response(
                {
                    "message": "An error occurred while creating the new course enrollment for user "
                    f"'{username}' in course '{course_id}'"
                },
                400,
            )
        )
    existing = state.enrollments.get((username, course_id))
    if existing is not None and existing.is_active:
        return enrollment_json(state, existing)  # AlreadyEnrolledError → CourseEnrollmentExistsError
    # enroll() activates in the run's default mode (it is not handed the requested one), then
    # data._update_enrollment sets the requested mode and activation.
    if existing is None:
        existing = Enrollment(username, course_id, course.default_mode(now), True, now)
        state.enrollments[(username, course_id)] = existing
    else:
        state.update_enrollment(existing, mode=course.default_mode(now), is_active=True)
    state.update_enrollment(existing, mode=mode, is_active=is_active)
    return enrollment_json(state, existing)


def _course(state: LmsState, course_id: str) -> Course:
    course = state.courses.get(course_id)
    if course is None:  # CourseNotFoundError
        raise _Refused(json_response({"message": f"No course '{course_id}' found for enrollment"}, 400))
    return course


def _validate_course_mode(
    state: LmsState, course_id: str, mode: str, is_active: bool | None, *, include_expired: bool
) -> None:
    """api.validate_course_mode: a deactivation counts expired modes too; an unavailable mode is
    CourseModeNotFoundError, answered 400 with the message and the full course_details."""
    course = _course(state, course_id)
    if not include_expired:
        include_expired = not is_active if is_active is not None else False
    available = [m.slug for m in course.modes_for_course(state.clock(), include_expired=include_expired)]
    if mode not in available:
        raise _Refused(
            json_response(
                {
                    "message": f"The [{mode}] course mode is expired or otherwise unavailable for course run "
                    f"[{course_id}].",
                    "course_details": course_json(state, course, include_expired=include_expired),
                },
                400,
            )
        )
