"""A fake Open edX LMS over HTTP: the Enrollment API and the OAuth2 token endpoint.

Semantics follow openedx-platform ``openedx/core/djangoapps/enrollments/views.py`` (commit
85f323f, shared/reference/openedx.md §2.8):

    POST /oauth2/access_token                         client credentials → JWT (or Bearer) token
    GET  /api/enrollment/v1/enrollment/{user},{course} one enrollment; 200 with an empty body if none
    POST /api/enrollment/v1/enrollment                enroll / change mode / (de)activate
    GET  /api/enrollment/v1/enrollments               global staff only, paginated

* Authentication: ``X-Edx-Api-Key`` (server-to-server: privileged, anonymous) or
  ``Authorization: JWT|Bearer <token>``; a bad token is 401 even with a good key.
* Only privileged callers (API key or global staff) may use other modes than audit/honor
  (403), act for another user (404), and change mode or deactivate an existing enrollment;
  everyone else goes through ``add_enrollment`` (creates or reactivates, never changes an
  active one: the existing enrollment is returned).
* The guard: mode and activation both change with ``is_active`` false → 400 "Enrollment mode
  mismatch: active mode=…, requested mode=…. Won't deactivate."
* Unknown user → 406; unknown course → 400; mode not offered → 400; enrollment closed →
  400 unless a global-staff caller sends ``force_enrollment``.
* The refund path: deactivating a paid enrollment fires UNENROLL_DONE, whose commerce handler
  asks ecommerce for a refund when the request has a user (JWT), not for anonymous API-key
  calls. The fake records those in ``state.refund_requests``; the engine must never cause one.

``LmsServer`` serves a ``LmsState`` on a real port in a thread; ``stop()`` then ``start()``
brings it down (connections refused) and back on the same port; ``state.down`` answers 503.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, request

from simulators.serving import ServedApp

FREE_MODES = ("audit", "honor")
DEFAULT_MODES = ("audit", "honor", "verified", "professional", "no-id-professional")
_KEY_PART = r"[\w\-~.:]+"
_COURSE_KEY = re.compile(rf"^(course-v1:{_KEY_PART}\+{_KEY_PART}\+{_KEY_PART}|{_KEY_PART}/{_KEY_PART}/{_KEY_PART})$")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Course:
    course_id: str
    modes: tuple[str, ...] = DEFAULT_MODES
    enrollment_closed: bool = False
    name: str = ""


@dataclass
class Enrollment:
    username: str
    course_id: str
    mode: str
    is_active: bool
    created: float


@dataclass
class Call:
    """One request the LMS answered (for assertions on order and count)."""

    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    caller: str  # "api_key", "user:<username>" or "anonymous"


@dataclass
class Caller:
    username: str | None  # None: anonymous (API key only)
    api_key: bool
    staff: bool

    @property
    def privileged(self) -> bool:
        return self.api_key or self.staff


@dataclass
class LmsState:
    """Users, OAuth2 clients, courses and enrollments of the fake LMS. Thread-safe."""

    api_key: str = ""
    token_lifetime_s: int = 36000
    token_type: str = "JWT"
    clock: Callable[[], float] = time.time
    users: dict[str, bool] = field(default_factory=dict)  # username -> is global staff
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)  # client_id -> (secret, username)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (username, expires_at)
    courses: dict[str, Course] = field(default_factory=dict)
    enrollments: dict[tuple[str, str], Enrollment] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    refund_requests: list[dict[str, Any]] = field(default_factory=list)
    audit_log: list[dict[str, Any]] = field(default_factory=list)
    token_requests: int = 0
    down: bool = False
    _faults: list[int] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- set-up and inspection (tests and operators acting "by hand") ------------------------
    def add_user(self, username: str, *, staff: bool = False) -> None:
        with self.lock:
            self.users[username] = staff

    def add_client(
        self, client_id: str, secret: str, *, service_user: str = "engine_worker", staff: bool = True
    ) -> None:
        """An OAuth2 application whose tokens act as ``service_user`` (global staff by default)."""
        with self.lock:
            self.clients[client_id] = (secret, service_user)
            self.users[service_user] = staff

    def add_course(
        self, course_id: str, *, modes: tuple[str, ...] = DEFAULT_MODES, enrollment_closed: bool = False
    ) -> None:
        with self.lock:
            self.courses[course_id] = Course(course_id, tuple(modes), enrollment_closed, name=course_id)

    def enrollment(self, username: str, course_id: str) -> tuple[str, bool] | None:
        """(mode, is_active) of an enrollment, or None."""
        with self.lock:
            e = self.enrollments.get((username, course_id))
            return None if e is None else (e.mode, e.is_active)

    def set_enrollment(self, username: str, course_id: str, mode: str, is_active: bool = True) -> None:
        """Change an enrollment behind the engine's back (an admin in Django admin)."""
        with self.lock:
            self.enrollments[(username, course_id)] = Enrollment(username, course_id, mode, is_active, self.clock())

    def delete_enrollment(self, username: str, course_id: str) -> None:
        with self.lock:
            self.enrollments.pop((username, course_id), None)

    def revoke_tokens(self) -> None:
        """Every issued token stops working (expiry, key rotation): the next call gets 401."""
        with self.lock:
            self.tokens.clear()

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next ``n`` API requests (not the token endpoint) answer ``status``."""
        with self.lock:
            self._faults.extend([status] * n)

    def posts(self, username: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the enrollment POSTs answered 200, in order (optionally for one user)."""
        with self.lock:
            return [
                c.body
                for c in self.calls
                if c.method == "POST"
                and c.path.endswith("/enrollment")
                and c.status == 200
                and c.body is not None
                and (username is None or c.body.get("user") == username)
            ]

    # -- behaviour --------------------------------------------------------------------------
    def issue_token(self, client_id: str, secret: str) -> tuple[str, str] | None:
        with self.lock:
            self.token_requests += 1
            client = self.clients.get(client_id)
            if client is None or not secrets.compare_digest(client[0], secret):
                return None
            token = secrets.token_urlsafe(24)
            self.tokens[token] = (client[1], self.clock() + self.token_lifetime_s)
            return token, client[1]

    def user_for_token(self, token: str) -> str | None:
        with self.lock:
            entry = self.tokens.get(token)
            if entry is None or entry[1] <= self.clock():
                return None
            return entry[0]

    def take_fault(self) -> int | None:
        with self.lock:
            return self._faults.pop(0) if self._faults else None

    def set_state(self, enrollment: Enrollment, *, mode: str | None, is_active: bool | None, caller: Caller) -> None:
        """Change mode/activation; a paid deactivation by a user fires the refund path."""
        was_active = enrollment.is_active
        if mode is not None:
            enrollment.mode = mode
        if is_active is not None:
            enrollment.is_active = is_active
        if (
            was_active
            and not enrollment.is_active
            and enrollment.mode not in FREE_MODES
            and caller.username is not None
        ):
            # commerce.signals.handle_unenroll_done → refund_seat (the request has a user).
            self.refund_requests.append(
                {
                    "user": enrollment.username,
                    "course_id": enrollment.course_id,
                    "mode": enrollment.mode,
                    "by": caller.username,
                }
            )


def enrollment_json(state: LmsState, e: Enrollment) -> dict[str, Any]:
    course = state.courses.get(e.course_id) or Course(e.course_id)
    return {
        "created": _iso(e.created),
        "mode": e.mode,
        "is_active": e.is_active,
        "course_details": {
            "course_id": e.course_id,
            "course_name": course.name or e.course_id,
            "enrollment_start": None,
            "enrollment_end": None,
            "course_start": None,
            "course_end": None,
            "invite_only": False,
            "course_modes": [
                {
                    "slug": m,
                    "name": m.title(),
                    "min_price": 0 if m in FREE_MODES else 49,
                    "suggested_prices": "",
                    "currency": "usd",
                    "expiration_datetime": None,
                    "description": None,
                    "sku": None,
                    "bulk_sku": None,
                }
                for m in course.modes
            ],
        },
        "user": e.username,
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def create_lms_app(state: LmsState) -> Flask:
    app = Flask("simulators.openedx_lms")

    def record(status: int, caller: str, body: dict[str, Any] | None) -> None:
        with state.lock:
            state.calls.append(Call(request.method, request.path, body, status, caller))

    def authenticate() -> Caller | Response:
        """DRF authentication + ApiKeyHeaderPermissionIsAuthenticated."""
        has_key = bool(state.api_key) and request.headers.get("X-Edx-Api-Key") == state.api_key
        username = None
        auth = request.headers.get("Authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() in {"jwt", "bearer"}:
                username = state.user_for_token(token.strip())
                if username is None:
                    return _json(
                        {"detail": "Invalid token." if scheme.lower() == "bearer" else "Signature has expired."}, 401
                    )
        if username is None and not has_key:
            return _json({"detail": "Authentication credentials were not provided."}, 401)
        return Caller(username, has_key, bool(username and state.users.get(username)))

    def describe(caller: Caller) -> str:
        return f"user:{caller.username}" if caller.username else ("api_key" if caller.api_key else "anonymous")

    @app.before_request
    def gate() -> Response | None:
        if state.down:
            return _json({"detail": "Service Unavailable"}, 503)
        if request.path.startswith("/api/"):
            status = state.take_fault()
            if status is not None:
                record(status, "fault", None)
                return _json({"detail": "Injected failure"}, status)
        return None

    @app.post("/oauth2/access_token")
    def access_token() -> Response:
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400)
        issued = state.issue_token(form.get("client_id", ""), form.get("client_secret", ""))
        if issued is None:
            return _json({"error": "invalid_client"}, 401)
        token, _user = issued
        token_type = "JWT" if form.get("token_type", "").lower() == "jwt" else "Bearer"
        return _json(
            {
                "access_token": token,
                "token_type": token_type,
                "expires_in": state.token_lifetime_s,
                "scope": "read write email profile",
            }
        )

    @app.get("/api/enrollment/v1/enrollment/<path:spec>")
    def get_enrollment(spec: str) -> Response:
        caller = authenticate()
        if isinstance(caller, Response):
            record(caller.status_code, "anonymous", None)
            return caller
        username, sep, course_id = spec.partition(",")
        if not sep:
            username, course_id = caller.username or "", spec
        if username != caller.username and not caller.privileged:
            record(404, describe(caller), None)
            return Response(status=404)
        with state.lock:
            e = state.enrollments.get((username, course_id))
            body = enrollment_json(state, e) if e is not None else None
        record(200, describe(caller), None)
        # DRF renders Response(None) as an empty body.
        return Response(b"" if body is None else json.dumps(body), status=200, mimetype="application/json")

    @app.get("/api/enrollment/v1/enrollments")
    def list_enrollments() -> Response:
        caller = authenticate()
        if isinstance(caller, Response):
            return caller
        if not caller.staff:  # permissions.IsAdminUser: the API key does not pass it
            return _json({"detail": "You do not have permission to perform this action."}, 403)
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
        base = request.base_url
        params = {k: v for k, v in request.args.items() if k != "page"}
        query = urlencode(params)
        next_url = f"{base}?{query}&page={page + 1}" if page * page_size < len(rows) else None
        prev_url = f"{base}?{query}&page={page - 1}" if page > 1 else None
        results = [
            {
                "created": _iso(e.created),
                "mode": e.mode,
                "is_active": e.is_active,
                "user": e.username,
                "course_id": e.course_id,
            }
            for e in chunk
        ]
        return _json({"next": next_url, "previous": prev_url, "results": results})

    @app.post("/api/enrollment/v1/enrollment")
    def post_enrollment() -> Response:
        caller = authenticate()
        body = request.get_json(silent=True)
        if isinstance(caller, Response):
            record(caller.status_code, "anonymous", body if isinstance(body, dict) else None)
            return caller
        if not isinstance(body, dict):
            body = {}
        response = _post(state, caller, body)
        record(response.status_code, describe(caller), body)
        return response

    return app


def _post(state: LmsState, caller: Caller, data: dict[str, Any]) -> Response:
    """EnrollmentListView.post, step by step."""
    username = data.get("user")
    course_details = data.get("course_details") or {}
    course_id = course_details.get("course_id") if isinstance(course_details, dict) else None
    if not course_id:
        return _json({"message": "Course ID must be specified to create a new enrollment."}, 400)
    if not _COURSE_KEY.match(str(course_id)):
        return _json({"message": f"No course '{course_id}' found for enrollment"}, 400)
    mode = data.get("mode")
    if username and username != caller.username and not caller.privileged:
        return Response(status=404)
    if not username:
        username = caller.username
    if mode not in (*FREE_MODES, None) and not caller.privileged:
        return _json({"message": f"User does not have permission to create enrollment with mode [{mode}]."}, 403)
    with state.lock:
        if username not in state.users:
            return _json({"message": f"The user {username} does not exist."}, 406)
        is_active = data.get("is_active")
        if is_active is not None and not isinstance(is_active, bool):
            return _json({"message": f"'{is_active}' is an invalid enrollment activation status."}, 400)
        force = data.get("force_enrollment")
        if force is not None and not isinstance(force, bool):
            return _json({"message": f"'{force}' is an invalid force enrollment status."}, 400)
        force = bool(force) and caller.staff  # only a global staff user may force
        course = state.courses.get(course_id)
        if course is None:
            return _json({"message": f"No course '{course_id}' found for enrollment"}, 400)
        try:
            existing = state.enrollments.get((username, course_id))
            mode_changed = existing is not None and mode is not None and existing.mode != mode
            active_changed = existing is not None and is_active is not None and existing.is_active != is_active
            if caller.privileged and (mode_changed or active_changed):
                assert existing is not None
                if mode_changed and active_changed and not is_active:
                    return _json(
                        {
                            "message": f"Enrollment mode mismatch: active mode={existing.mode}, "
                            f"requested mode={mode}. Won't deactivate."
                        },
                        400,
                    )
                if mode is not None and mode not in course.modes:
                    return _mode_unavailable(mode, course)
                state.set_state(existing, mode=mode, is_active=is_active, caller=caller)
                return _json(enrollment_json(state, existing))
            # add_enrollment: creates or reactivates; an active enrollment is returned unchanged.
            wanted = mode or "audit"
            if wanted not in course.modes:
                return _mode_unavailable(wanted, course)
            if existing is not None and existing.is_active:
                return _json(enrollment_json(state, existing))  # CourseEnrollmentExistsError
            if course.enrollment_closed and not force:
                return _json(
                    {
                        "message": "An error occurred while creating the new course enrollment for user "
                        f"'{username}' in course '{course_id}'"
                    },
                    400,
                )
            if existing is None:
                existing = state.enrollments[(username, course_id)] = Enrollment(
                    username, course_id, wanted, True, state.clock()
                )
            else:
                state.set_state(existing, mode=wanted, is_active=True, caller=caller)
            if is_active is not None:
                state.set_state(existing, mode=None, is_active=is_active, caller=caller)
            return _json(enrollment_json(state, existing))
        finally:
            if caller.api_key:
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


def _mode_unavailable(mode: str, course: Course) -> Response:
    return _json(
        {
            "message": f"The [{mode}] course mode is expired or otherwise unavailable for course run "
            f"[{course.course_id}].",
            "course_details": {"course_id": course.course_id},
        },
        400,
    )


class LmsServer(ServedApp):
    """The fake LMS on a real port, in a daemon thread; can be stopped and started again."""

    def __init__(self, state: LmsState | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.state = state if state is not None else LmsState()
        super().__init__(create_lms_app(self.state), host=host, port=port, name="openedx-lms")
