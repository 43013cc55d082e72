"""The fake LMS's HTTP side: openedx-platform's Enrollment API views, step by step, in Flask.

Each handler follows the named code of openedx/core/djangoapps/enrollments (views.py, api.py,
data.py) and common/djangoapps/student/models/course_enrollment.py, in the same order of checks:
authentication, permission, throttle (DRF's ``APIView.initial``), then the view.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, request

from simulators.openedx_lms.enroll import enrollment_post
from simulators.openedx_lms.serializers import course_json, empty_response, enrollment_json, iso, json_response
from simulators.openedx_lms.state import VALID_COURSE_KEY, Call, Caller, LmsState

# lms/envs/common.py: USERNAME_REGEX_PARTIAL and COURSE_KEY_PATTERN, as the URL patterns use them.
USERNAME = r"[\w .@_+-]+"
COURSE_KEY = r"[^/+]+(?:/|\+)[^/+]+(?:/|\+)[^/?]+"
_ENROLLMENT_OF = re.compile(rf"^({USERNAME}),({COURSE_KEY})$")
_OWN_ENROLLMENT = re.compile(rf"^({COURSE_KEY})$")
# Django's answer when no URL pattern matches (DEBUG off).
_NOT_FOUND_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    "  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)


def _not_found() -> Response:
    return Response(_NOT_FOUND_HTML, status=404, mimetype="text/html")


def create_lms_app(state: LmsState) -> Flask:
    app = Flask("simulators.openedx_lms")

    def record(status: int, caller: str, body: dict[str, Any] | None) -> None:
        with state.lock:
            state.calls.append(Call(request.method, request.path, body, status, caller))

    def authenticate(*, anonymous_view: bool = False) -> Caller | Response:
        """JwtAuthentication / BearerAuthentication, then ApiKeyHeaderPermissionIsAuthenticated
        (``anonymous_view``: the view has no authentication classes, only the key counts)."""
        has_key = bool(state.api_key) and request.headers.get("X-Edx-Api-Key") == state.api_key
        username = None
        auth = request.headers.get("Authorization", "")
        if auth and not anonymous_view:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() in {"jwt", "bearer"}:
                username = state.user_for_token(token.strip())
                if username is None:
                    detail = "Invalid token." if scheme.lower() == "bearer" else "Signature has expired."
                    return json_response({"detail": detail}, 401)
        if username is None and not has_key and not anonymous_view:
            return json_response({"detail": "Authentication credentials were not provided."}, 401)
        return Caller(username, has_key, bool(username and state.users.get(username)))

    def throttled(caller: Caller) -> Response | None:
        """APIView.check_throttles → Throttled(wait): 429, Retry-After and DRF's detail."""
        allowed, wait = state.throttle(caller, request.remote_addr or "")
        if allowed:
            return None
        detail = "Request was throttled."
        headers = {}
        if wait is not None:
            seconds = math.ceil(wait)
            unit = "second" if seconds == 1 else "seconds"
            detail += f" Expected available in {seconds} {unit}."
            if seconds:
                headers["Retry-After"] = str(seconds)
        return json_response({"detail": detail}, 429, headers)

    def admit(*, body: dict[str, Any] | None = None, anonymous_view: bool = False) -> Caller | Response:
        """Authentication and permission, then the throttle; a refusal is recorded here."""
        caller = authenticate(anonymous_view=anonymous_view)
        if isinstance(caller, Response):
            record(caller.status_code, "anonymous", body)
            return caller
        refused = throttled(caller)
        if refused is not None:
            record(refused.status_code, caller.describe(), body)
            return refused
        return caller

    @app.before_request
    def gate() -> Response | None:
        if state.down:
            return json_response({"detail": "Service Unavailable"}, 503)
        if request.path.startswith("/api/"):
            status = state.take_fault()
            if status is not None:
                record(status, "fault", None)
                return json_response({"detail": "Injected failure"}, status)
        return None

    @app.errorhandler(404)
    def no_route(_error: Exception) -> Response:
        return _not_found()

    @app.post("/oauth2/access_token")
    def access_token() -> Response:
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        token = state.issue_token(form.get("client_id", ""), form.get("client_secret", ""))
        if token is None:
            return json_response({"error": "invalid_client"}, 401)
        token_type = "JWT" if form.get("token_type", "").lower() == "jwt" else "Bearer"
        body = {"access_token": token, "token_type": token_type, "expires_in": state.token_lifetime_s}
        return json_response({**body, "scope": "read write email profile"})

    @app.get("/api/enrollment/v1/enrollment/<path:spec>")
    def get_enrollment(spec: str) -> Response:
        """EnrollmentView.get (two URL patterns: ``{username},{course}`` and ``{course}``)."""
        matched = _ENROLLMENT_OF.match(spec)
        if matched:
            username, course_id = matched.group(1), matched.group(2)
        elif _OWN_ENROLLMENT.match(spec):
            username, course_id = None, spec
        else:
            return _not_found()
        caller = admit()
        if isinstance(caller, Response):
            return caller
        username = username or caller.username or ""
        if username != caller.username and not caller.privileged:
            record(404, caller.describe(), None)
            return empty_response(404)  # not a 403: one user may not learn of another's enrollment
        if not VALID_COURSE_KEY.match(course_id):
            record(500, caller.describe(), None)  # CourseKey.from_string raises, nothing catches it
            return Response("<h1>Server Error (500)</h1>", status=500, mimetype="text/html")
        with state.lock:
            e = state.enrollments.get((username, course_id))
            body = enrollment_json(state, e) if e is not None else None
        record(200, caller.describe(), None)
        if body is None:
            return empty_response(200)  # api.get_enrollment is None: DRF renders an empty body
        return json_response(body)

    @app.get("/api/enrollment/v1/course/<path:course_id>")
    def course_details(course_id: str) -> Response:
        """EnrollmentCourseDetailView.get: no authentication, throttled (the API key bypasses)."""
        if not _OWN_ENROLLMENT.match(course_id):
            return _not_found()
        caller = admit(anonymous_view=True)
        if isinstance(caller, Response):
            return caller
        include_expired = bool(request.args.get("include_expired", ""))
        with state.lock:
            course = state.courses.get(course_id)
            body = None if course is None else course_json(state, course, include_expired=include_expired)
        if body is None:
            record(400, caller.describe(), None)
            return json_response({"message": f"No course found for course ID '{course_id}'"}, 400)
        record(200, caller.describe(), None)
        return json_response(body)

    @app.get("/api/enrollment/v1/enrollments")
    def list_enrollments() -> Response:
        """CourseEnrollmentsApiListView: IsAdminUser (the API key does not pass it), paginated."""
        caller = authenticate()
        if isinstance(caller, Response):
            return caller
        if not caller.staff:
            return json_response({"detail": "You do not have permission to perform this action."}, 403)
        refused = throttled(caller)
        if refused is not None:
            return refused
        course_id = request.args.get("course_id")
        usernames = [u for u in request.args.get("username", "").split(",") if u]
        page_size = int(request.args.get("page_size", 10))
        page = int(request.args.get("page", 1))
        with state.lock:
            rows = [
                e
                for e in sorted(state.enrollments.values(), key=lambda e: (e.created, e.username, e.course_id))
                if (course_id is None or e.course_id == course_id) and (not usernames or e.username in usernames)
            ]
        chunk = rows[(page - 1) * page_size : page * page_size]
        query = urlencode({k: v for k, v in request.args.items() if k != "page"})
        next_url = f"{request.base_url}?{query}&page={page + 1}" if page * page_size < len(rows) else None
        prev_url = f"{request.base_url}?{query}&page={page - 1}" if page > 1 else None
        results = [
            {"created": iso(e.created), "mode": e.mode, "is_active": e.is_active, "user": e.username}
            | {"course_id": e.course_id}
            for e in chunk
        ]
        return json_response({"next": next_url, "previous": prev_url, "results": results})

    @app.post("/api/enrollment/v1/enrollment")
    def post_enrollment() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            body = {}
        caller = admit(body=body)
        if isinstance(caller, Response):
            return caller
        response = enrollment_post(state, caller, body)
        record(response.status_code, caller.describe(), body)
        return response

    return app
