"""The fake LMS's JSON: openedx-platform's enrollment serializers (enrollments/serializers.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Response

from simulators.openedx_lms.state import Course, CourseMode, Enrollment, LmsState


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def empty_response(status: int) -> Response:
    """DRF's Response(status=...) with no data: an empty body, no Content-Type."""
    response = Response(b"", status=status)
    del response.headers["Content-Type"]
    return response


def mode_json(mode: CourseMode) -> dict[str, Any]:
    """serializers.ModeSerializer"""
    return {
        "slug": mode.slug,
        "name": mode.slug.replace("-", " ").title(),
        "min_price": mode.min_price,
        "suggested_prices": "",
        "currency": "usd",
        "expiration_datetime": iso(mode.expiration),
        "description": None,
        "sku": None,
        "bulk_sku": None,
    }


def course_json(state: LmsState, course: Course, *, include_expired: bool) -> dict[str, Any]:
    """serializers.CourseSerializer (course_details)."""
    return {
        "course_id": course.course_id,
        "course_name": course.name or course.course_id,
        "enrollment_start": iso(course.enrollment_start),
        "enrollment_end": iso(course.enrollment_end),
        "course_start": None,
        "course_end": None,
        "invite_only": False,
        "course_modes": [mode_json(m) for m in course.modes_for_course(state.clock(), include_expired=include_expired)],
        "pacing_type": "Instructor Paced",
    }


def enrollment_json(state: LmsState, e: Enrollment) -> dict[str, Any]:
    """serializers.CourseEnrollmentSerializer: course_details lists unexpired modes only."""
    course = state.courses.get(e.course_id)
    return {
        "created": iso(e.created),
        "mode": e.mode,
        "is_active": e.is_active,
        "course_details": None if course is None else course_json(state, course, include_expired=False),
        "user": e.username,
    }
