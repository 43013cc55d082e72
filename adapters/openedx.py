"""The Open edX sink: the LMS Enrollment API over HTTP (one small client class and the sink).

Credentials (shared/reference/openedx.md): the LMS's ``X-Edx-Api-Key`` (server-to-server) and/or
OAuth2 client credentials of a global-staff service user (``POST /oauth2/access_token`` with
``token_type=jwt``; the token cached until shortly before it expires, fetched again on a 401).
With both configured, each call goes with the credential the LMS accepts it from
(``engine.enrollment.plan_enrollment``), the API key first: the LMS does not throttle it.

JWT calls spend the LMS's own rate budget (``EnrollmentUserThrottle`` allows staff 120/min): each
waits for a slot, a 429 pauses the budget for its ``Retry-After``. Answers map to the engine's
errors here: connection errors, timeouts, 408/429/5xx → TransientError; 401 after a refresh or a
403 for staff-only calls → SinkAuthError; 406 (no such user) and "No course" → LmsRefusal;
a 404 is explained by asking the course-details route whether the API is at that URL at all:
no → LmsMisconfigured (pause and alert), course unknown → LmsRefusal, else our missing staff
rights (the view hides other users' enrollments behind a 404) → SinkAuthError.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import requests

from adapters.rate_budget import RateBudget
from engine.enrollment import (
    API_KEY,
    JWT,
    LMS_COURSE_MISSING,
    LMS_USER_MISSING,
    CourseRun,
    Credential,
    EnrollmentCall,
    LmsMisconfigured,
    LmsRefusal,
    Refusal,
    is_revocation,
    plan_enrollment,
)
from engine.errors import SinkAuthError, TerminalError, TransientError
from engine.ports import EnrollmentState

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
ENROLLMENT_PATH = "/api/enrollment/v1/enrollment"
COURSE_PATH = "/api/enrollment/v1/course"
TOKEN_PATH = "/oauth2/access_token"
# Refresh a token this long before the LMS says it expires (clock skew, request latency).
TOKEN_MARGIN_S = 60.0
# lms/envs/common.py USERNAME_REGEX_PARTIAL: what the enrollment URL accepts as a username. Any
# other name cannot exist in the LMS (and its URL would reach another view).
LMS_USERNAME = re.compile(r"^[\w .@_+-]+$")

Priority = Literal["event", "sweep"]


class ModeUnavailable(TerminalError):
    """400 "The [mode] course mode is expired or otherwise unavailable": the run as the LMS saw
    it is in ``course_details`` (the sink reads the run again and decides again)."""


def _retry_after_s(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(response: requests.Response) -> str:
    body = _body(response)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body.get("error") or body)[:300]
    return (response.text if body is None else str(body))[:300]


def _instant_ms(text: object) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    moment = datetime.fromisoformat(text)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def course_run_from(details: Mapping[str, Any], *, complete: bool) -> CourseRun:
    """A CourseRun from the LMS's ``course_details`` (serializers.CourseSerializer)."""
    modes = {str(m["slug"]): _instant_ms(m.get("expiration_datetime")) for m in details.get("course_modes") or []}
    return CourseRun(
        modes, _instant_ms(details.get("enrollment_start")), _instant_ms(details.get("enrollment_end")), complete
    )


class OpenEdxClient:
    """The Enrollment API with an API key and/or a cached OAuth2 token, JWT calls on ``budget``."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str = "",
        client_secret: str = "",
        api_key: str = "",
        budget: RateBudget | None = None,
        budget_wait_s: float = 10.0,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        if not api_key and not (client_id and client_secret):
            raise ValueError("Open edX needs an API key or OAuth2 client credentials")
        self.base_url = base_url.rstrip("/")
        self.client_id, self.client_secret, self.api_key = client_id, client_secret, api_key
        self.budget, self.budget_wait_s = budget, budget_wait_s
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json"})
        self.clock, self.now_ms = clock, now_ms
        self._token: tuple[str, float] | None = None  # (Authorization header value, refresh at)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    @property
    def credentials(self) -> frozenset[Credential]:
        found: set[Credential] = {API_KEY} if self.api_key else set()
        if self.client_id and self.client_secret:
            found.add(JWT)
        return frozenset(found)

    @property
    def preferred(self) -> Credential:
        return API_KEY if self.api_key else JWT

    # -- enrollment API ----------------------------------------------------------------------
    def read_enrollment(
        self, username: str, course_run_id: str, *, priority: Priority = "event"
    ) -> tuple[EnrollmentState | None, CourseRun | None]:
        """The enrollment of ``username`` in ``course_run_id`` (None: none) and the run as its
        ``course_details`` show it (unexpired modes only; None without an enrollment)."""
        path = f"{ENROLLMENT_PATH}/{quote(username, safe='@+')},{quote(course_run_id, safe=':+')}"
        response = self._call("GET", path, self.preferred, priority, course_run_id=course_run_id)
        if not response.content.strip():
            return None, None  # DRF renders "no enrollment" (None) as an empty 200
        body = _body(response)
        details = body.get("course_details") if isinstance(body, dict) else None
        run = course_run_from(details, complete=False) if isinstance(details, dict) else None
        return self._state(response), run

    def get_enrollment(self, username: str, course_run_id: str) -> EnrollmentState | None:
        return self.read_enrollment(username, course_run_id)[0]

    def course_run(self, course_run_id: str) -> CourseRun:
        """The run with every mode, expired ones too (``GET /course/{id}?include_expired=1``).

        EnrollmentCourseDetailView reads no credentials; the API key only lifts its throttle."""
        path = f"{COURSE_PATH}/{quote(course_run_id, safe=':+')}"
        headers = {"X-Edx-Api-Key": self.api_key} if self.api_key else {}
        response = self._send("GET", self.base_url + path, headers=headers, params={"include_expired": "1"})
        body = _body(response)
        if response.status_code == 200 and isinstance(body, dict):
            return course_run_from(body, complete=True)
        if response.status_code == 400 and isinstance(body, dict):
            raise LmsRefusal(LMS_COURSE_MISSING, f"the LMS has no course run {course_run_id}", status=400)
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientError(
                f"LMS answered {response.status_code} for GET {path}",
                status=response.status_code,
                retry_after_s=_retry_after_s(response),
            )
        raise LmsMisconfigured(
            f"GET {self.base_url}{path} answered {response.status_code} {response.headers.get('Content-Type', '')}: "
            "the Enrollment API is not at OPENEDX_LMS_URL (wrong base URL or path?)",
            status=response.status_code,
        )

    def post_enrollment(self, username: str, course_run_id: str, call: EnrollmentCall) -> EnrollmentState:
        """Send one call; returns the enrollment the LMS then holds."""
        body: dict[str, Any] = {
            "user": username,
            "is_active": call.is_active,
            "course_details": {"course_id": course_run_id},
        }
        if call.mode is not None:
            body["mode"] = call.mode
        if call.force:
            body["force_enrollment"] = True
        response = self._call("POST", ENROLLMENT_PATH, call.credential, "event", course_run_id=course_run_id, json=body)
        return self._state(response)

    @staticmethod
    def _state(response: requests.Response) -> EnrollmentState:
        body = _body(response)
        try:
            return EnrollmentState(str(body["mode"]), bool(body["is_active"]))
        except (KeyError, TypeError) as exc:
            raise TransientError(f"LMS answered an unreadable enrollment: {response.text[:200]!r}") from exc

    # -- transport ---------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, credential: Credential, priority: Priority, *, course_run_id: str, **kwargs: Any
    ) -> requests.Response:
        url = self.base_url + path
        for attempt in (1, 2):
            if credential == JWT and self.budget is not None:
                self.budget.acquire(priority, max_wait_s=self.budget_wait_s)  # BudgetExhausted: transient
            response = self._send(method, url, headers=self._auth_headers(credential, refresh=attempt == 2), **kwargs)
            if response.status_code == 401 and credential == JWT and attempt == 1:
                continue  # the token expired or was revoked early: fetch a new one, once
            break
        status = response.status_code
        if status < 400:
            return response
        what = f"{method} {path}"
        if status == 429 and credential == JWT and self.budget is not None:
            self.budget.pause(_retry_after_s(response) or 1.0)  # every process waits, not just this one
        if status in TRANSIENT_STATUSES:
            raise TransientError(
                f"LMS answered {status} for {what}", retry_after_s=_retry_after_s(response), status=status
            )
        message = _message(response)
        if status == 401:
            raise SinkAuthError(f"LMS refused our credentials for {what}: {message}", status=status)
        if status == 403 and "permission" in message.lower():
            raise SinkAuthError(f"LMS says we lack staff rights for {what}: {message}", status=status)
        if status == 404:
            raise self._explain_404(what, response, course_run_id)
        if status == 406:
            raise LmsRefusal(LMS_USER_MISSING, f"LMS refused {what}: {message}", status=status)
        body = _body(response)
        if status == 400 and isinstance(body, dict) and isinstance(body.get("course_details"), dict):
            raise ModeUnavailable(f"LMS refused {what}: {message}", status=status)
        if status == 400 and message.startswith("No course"):
            raise LmsRefusal(LMS_COURSE_MISSING, f"LMS refused {what}: {message}", status=status)
        raise TerminalError(f"LMS refused {what}: {status} {message}", status=status)

    def _explain_404(self, what: str, response: requests.Response, course_run_id: str) -> Exception:
        """Which 404: the Enrollment API is not at this URL (misconfigured), the course does not
        exist, or the view hid another user's enrollment from a caller without staff rights."""
        try:
            self.course_run(course_run_id)
        except (LmsRefusal, LmsMisconfigured, TransientError) as explained:
            return explained
        if not response.content.strip():  # the view's own Response(status=404), no body
            return SinkAuthError(f"LMS does not let us act for other users (not global staff?) for {what}", status=404)
        return LmsMisconfigured(
            f"{what} answered 404 though the Enrollment API answers at {self.base_url}: check the route "
            "(a proxy in front of the LMS?)",
            status=404,
        )

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"LMS unreachable: {exc.__class__.__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"LMS request failed: {exc}") from exc

    def _auth_headers(self, credential: Credential, *, refresh: bool) -> dict[str, str]:
        if credential == API_KEY:
            return {"X-Edx-Api-Key": self.api_key}
        with self._lock:
            if refresh or self._token is None or self.clock() >= self._token[1]:
                self._token = self._fetch_token()
            return {"Authorization": self._token[0]}

    def _fetch_token(self) -> tuple[str, float]:
        data = {"grant_type": "client_credentials", "token_type": "jwt"}
        data |= {"client_id": self.client_id, "client_secret": self.client_secret}
        response = self._send("POST", self.base_url + TOKEN_PATH, data=data)
        status = response.status_code
        if status in TRANSIENT_STATUSES:
            raise TransientError(
                f"LMS token endpoint answered {status}", status=status, retry_after_s=_retry_after_s(response)
            )
        if status == 404:
            raise LmsMisconfigured(
                f"POST {self.base_url}{TOKEN_PATH} answered 404: no OAuth2 token endpoint at OPENEDX_LMS_URL "
                "(wrong base URL or path?)",
                status=status,
            )
        if status >= 400:
            raise SinkAuthError(f"LMS refused our client credentials: {status} {_message(response)}", status=status)
        body = _body(response)
        try:
            token, token_type = str(body["access_token"]), str(body.get("token_type") or "JWT")
            lifetime = float(body.get("expires_in") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientError(f"LMS token endpoint answered an unreadable body: {response.text[:200]!r}") from exc
        margin = min(TOKEN_MARGIN_S, lifetime / 10)
        return f"{token_type} {token}", self.clock() + lifetime - margin


class OpenEdxSink:
    """The CourseSink port on Open edX: read the enrollment (and, where the choice of credential
    depends on it, the run), then send what ``plan_enrollment`` says, with the credential it says."""

    name = "openedx"
    # Reads again after the LMS found a mode unavailable that the run we read offered.
    MAX_REREADS = 3

    def __init__(self, client: OpenEdxClient):
        self.client = client

    def read(self, username: str, course_run_id: str) -> EnrollmentState | None:
        _check_username(username)
        return self.client.read_enrollment(username, course_run_id, priority="sweep")[0]

    def apply(self, username: str, course_run_id: str, desired: EnrollmentState) -> EnrollmentState | None:
        _check_username(username)
        credentials = self.client.credentials
        fresh: CourseRun | None = None  # the whole run, read after the LMS contradicted ours
        for _ in range(self.MAX_REREADS):
            current, run = self.client.read_enrollment(username, course_run_id)
            run = fresh or run
            if current is None and not is_revocation(desired) and API_KEY in credentials and run is None:
                run = self.client.course_run(course_run_id)  # can the API key still create it?
            plan = self._plan(current, desired, run, credentials)
            if isinstance(plan, Refusal) and (run is None or not run.complete):
                run = self.client.course_run(course_run_id)  # expired, or not offered at all?
                plan = self._plan(current, desired, run, credentials)
            if isinstance(plan, Refusal):
                raise LmsRefusal(plan.kind, f"{username} in {course_run_id}: {plan.reason}")
            try:
                for call in plan:
                    current = self.client.post_enrollment(username, course_run_id, call)
            except ModeUnavailable:
                fresh = self.client.course_run(course_run_id)  # a deadline passed since we read the run
                continue
            return current
        raise TransientError(f"LMS keeps refusing a mode for {username} in {course_run_id} that the run offers")

    def _plan(
        self,
        current: EnrollmentState | None,
        desired: EnrollmentState,
        run: CourseRun | None,
        credentials: frozenset[Credential],
    ) -> tuple[EnrollmentCall, ...] | Refusal:
        return plan_enrollment(current, desired, run, credentials=credentials, now_ms=self.client.now_ms())


def _check_username(username: str) -> None:
    if not LMS_USERNAME.match(username):
        raise LmsRefusal(LMS_USER_MISSING, f"{username!r} is not a username the LMS can have")
