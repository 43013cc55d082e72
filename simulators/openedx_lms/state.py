"""What the fake LMS knows: users, OAuth2 clients, course runs with their modes, enrollments,
entitlements, the throttle's history, and a record of every request and signal. Thread-safe.

Each behaviour names the openedx-platform code it follows.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# common/djangoapps/course_modes/models.py
FREE_MODES = ("audit", "honor")  # views.py lets non-privileged callers ask only for these
PROFESSIONAL_MODES = ("professional", "no-id-professional")  # CourseMode.is_professional_slug
DEFAULT_MODE = "audit"  # settings.COURSE_MODE_DEFAULTS["slug"], CourseMode.DEFAULT_MODE
DEFAULT_MODES = ("audit", "honor", "verified", "professional", "no-id-professional")
PRICES = {"audit": 0, "honor": 0}
# opaque_keys: what CourseKey.from_string accepts.
_KEY_PART = r"[\w\-~.:]+"
VALID_COURSE_KEY = re.compile(
    rf"^(course-v1:{_KEY_PART}\+{_KEY_PART}\+{_KEY_PART}|{_KEY_PART}/{_KEY_PART}/{_KEY_PART})$"
)
# EnrollmentUserThrottle.THROTTLE_RATES (enrollments/views.py): requests per window (s).
THROTTLE_RATES: dict[str, tuple[int, float]] = {"user": (40, 60.0), "staff": (120, 60.0)}


@dataclass
class CourseMode:
    slug: str
    expiration: float | None = None  # the upgrade deadline (epoch s); None: none
    min_price: int = 49


@dataclass
class Course:
    course_id: str
    modes: list[CourseMode]
    enrollment_start: float | None = None
    enrollment_end: float | None = None
    name: str = ""

    def modes_for_course(self, now: float, *, include_expired: bool) -> list[CourseMode]:
        """CourseMode.modes_for_course: unexpired modes (expiration >= now) unless include_expired;
        the default mode when none is left."""
        found = [m for m in self.modes if include_expired or m.expiration is None or m.expiration >= now]
        return found or [CourseMode(DEFAULT_MODE, min_price=0)]

    def default_mode(self, now: float) -> str:
        """enrollments/api.py ``_default_course_mode``."""
        available = [m.slug for m in self.modes_for_course(now, include_expired=False)]
        if DEFAULT_MODE in available:
            return DEFAULT_MODE
        return "honor" if "honor" in available else DEFAULT_MODE

    def enrollment_closed(self, now: float) -> bool:
        """courseware access ``_can_enroll_courselike``: open while start < now < end."""
        start = self.enrollment_start if self.enrollment_start is not None else -math.inf
        end = self.enrollment_end if self.enrollment_end is not None else math.inf
        return not start < now < end


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

    def describe(self) -> str:
        return f"user:{self.username}" if self.username else ("api_key" if self.api_key else "anonymous")


@dataclass
class LmsState:
    """Users, OAuth2 clients, courses and enrollments of the fake LMS."""

    api_key: str = ""
    token_lifetime_s: int = 36000
    clock: Callable[[], float] = time.time
    throttle_rates: dict[str, tuple[int, float]] = field(default_factory=lambda: dict(THROTTLE_RATES))
    users: dict[str, bool] = field(default_factory=dict)  # username -> is global staff
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)  # client_id -> (secret, username)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (username, expires_at)
    courses: dict[str, Course] = field(default_factory=dict)
    enrollments: dict[tuple[str, str], Enrollment] = field(default_factory=dict)
    # (username, course_id) -> refundable: the learner redeemed a course entitlement for this run
    entitlements: dict[tuple[str, str], bool] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    signals: list[tuple[str, str, str, str]] = field(default_factory=list)  # (signal, user, course, mode)
    entitlement_refunds: list[dict[str, Any]] = field(default_factory=list)
    audit_log: list[dict[str, Any]] = field(default_factory=list)
    throttle_history: dict[str, list[float]] = field(default_factory=dict)
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
        self,
        course_id: str,
        *,
        modes: tuple[str, ...] = DEFAULT_MODES,
        deadlines: Mapping[str, float] | None = None,
        enrollment_start: float | None = None,
        enrollment_end: float | None = None,
    ) -> None:
        """A course run offering ``modes``; ``deadlines``: upgrade deadline (epoch s) per mode."""
        deadlines = dict(deadlines or {})
        for slug in deadlines:
            if slug in PROFESSIONAL_MODES:  # CourseMode.clean
                raise ValueError("Professional education modes are not allowed to have expiration_datetime set.")
            if slug not in modes:
                raise ValueError(f"no {slug} mode to give a deadline to")
        course_modes = [CourseMode(m, deadlines.get(m), PRICES.get(m, 49)) for m in modes]
        with self.lock:
            self.courses[course_id] = Course(course_id, course_modes, enrollment_start, enrollment_end, course_id)

    def add_entitlement(self, username: str, course_id: str, *, refundable: bool = True) -> None:
        """The learner holds a course entitlement redeemed on this run (ecommerce sold it)."""
        with self.lock:
            self.entitlements[(username, course_id)] = refundable

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

    def use_throttle(self, username: str, n: int) -> None:
        """``n`` requests made now by another client acting as ``username`` (they share its throttle)."""
        with self.lock:
            now = self.clock()
            self.throttle_history.setdefault(f"user:{username}", [])[:0] = [now] * n

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

    def statuses(self, status: int) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.status == status]

    # -- behaviour --------------------------------------------------------------------------
    def issue_token(self, client_id: str, secret: str) -> str | None:
        with self.lock:
            self.token_requests += 1
            client = self.clients.get(client_id)
            if client is None or not secrets.compare_digest(client[0], secret):
                return None
            token = secrets.token_urlsafe(24)
            self.tokens[token] = (client[1], self.clock() + self.token_lifetime_s)
            return token

    def user_for_token(self, token: str) -> str | None:
        with self.lock:
            entry = self.tokens.get(token)
            if entry is None or entry[1] <= self.clock():
                return None
            return entry[0]

    def take_fault(self) -> int | None:
        with self.lock:
            return self._faults.pop(0) if self._faults else None

    def throttle(self, caller: Caller, ident: str) -> tuple[bool, float | None]:
        """EnrollmentUserThrottle.allow_request on DRF's SimpleRateThrottle: (allowed, wait), the
        request counted when allowed; ``wait`` as DRF's ``wait()`` gives it (None: over the rate).

        API-key requests bypass it; staff users get the "staff" rate, everyone else "user"; an
        anonymous request is counted by client address."""
        if caller.api_key:
            return True, None
        scope = "staff" if caller.staff else "user"
        num, duration = self.throttle_rates[scope]
        key = f"user:{caller.username}" if caller.username else f"ip:{ident}"
        with self.lock:
            now = self.clock()
            history = self.throttle_history.setdefault(key, [])
            while history and history[-1] <= now - duration:
                history.pop()
            if len(history) < num:
                history.insert(0, now)
                return True, None
            available = num - len(history) + 1
            if available <= 0:
                return False, None
            return False, (duration - (now - history[-1])) / available

    def update_enrollment(self, e: Enrollment, *, mode: str | None, is_active: bool | None) -> None:
        """CourseEnrollment.update_enrollment: a deactivation sends UNENROLL_DONE (whose one refund
        handler is the entitlement's), a mode change ENROLLMENT_TRACK_UPDATED."""
        activation_changed = is_active is not None and e.is_active != is_active
        mode_changed = mode is not None and e.mode != mode
        if activation_changed:
            e.is_active = bool(is_active)
        if mode_changed:
            assert mode is not None
            e.mode = mode
        if activation_changed and not e.is_active:
            self.signals.append(("UNENROLL_DONE", e.username, e.course_id, e.mode))
            self._unenroll_entitlement(e)
        if mode_changed:
            self.signals.append(("ENROLLMENT_TRACK_UPDATED", e.username, e.course_id, e.mode))

    def _unenroll_entitlement(self, e: Enrollment) -> None:
        """entitlements: ``unenroll_entitlement`` on UNENROLL_DONE → CourseEntitlement.
        unenroll_entitlement: detach the run and, while refundable, expire and refund it."""
        refundable = self.entitlements.pop((e.username, e.course_id), None)
        if refundable:
            self.entitlement_refunds.append({"user": e.username, "course_id": e.course_id})
