"""The Open edX sink: the LMS Enrollment API over HTTP (one small client class).

Authentication (shared/reference/openedx.md): ``X-Edx-Api-Key`` when an API key is set
(server-to-server), otherwise OAuth2 client credentials — ``POST /oauth2/access_token`` with
``token_type=jwt`` for a global-staff service user's JWT, cached until shortly before it
expires and fetched again on a 401. Transport failures map to the engine's errors here:
connection errors, timeouts, 408/429/5xx → TransientError; 401 after a refresh or 403 →
SinkAuthError; other 4xx → TerminalError; the mode-mismatch guard → ModeMismatch (re-read).

Which calls to make is decided by ``engine.enrollment.enrollment_calls`` (pure); this
module only reads the current enrollment and sends those calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from engine.enrollment import enrollment_calls, is_paid
from engine.errors import SinkAuthError, TerminalError, TransientError
from engine.ports import EnrollmentState

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
ENROLLMENT_PATH = "/api/enrollment/v1/enrollment"
TOKEN_PATH = "/oauth2/access_token"
# Refresh a token this long before the LMS says it expires (clock skew, request latency).
TOKEN_MARGIN_S = 60.0


class ModeMismatch(TransientError):
    """The LMS refused a deactivation because the mode we sent is not the current one: what we
    read is stale (someone changed the enrollment meanwhile). Read again and decide again."""


def _retry_after_s(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body.get("error") or body)[:300]
    return str(body)[:300]


class OpenEdxClient:
    """``GET``/``POST`` on the Enrollment API with a cached OAuth2 token or an API key."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str = "",
        client_secret: str = "",
        api_key: str = "",
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not api_key and not (client_id and client_secret):
            raise ValueError("Open edX needs an API key or OAuth2 client credentials")
        self.base_url = base_url.rstrip("/")
        self.client_id, self.client_secret, self.api_key = client_id, client_secret, api_key
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json"})
        self.clock = clock
        self._token: tuple[str, float] | None = None  # (Authorization header value, refresh at)
        self._lock = threading.Lock()

    # -- enrollment API ----------------------------------------------------------------------
    def get_enrollment(self, username: str, course_run_id: str) -> EnrollmentState | None:
        """The enrollment of ``username`` in ``course_run_id``, or None when there is none."""
        path = f"{ENROLLMENT_PATH}/{quote(username, safe='@+')},{quote(course_run_id, safe=':+')}"
        response = self._call("GET", path)
        if not response.content.strip():
            return None  # DRF renders "no enrollment" (None) as an empty 200
        return self._state(response)

    def post_enrollment(self, username: str, course_run_id: str, call: EnrollmentState) -> EnrollmentState:
        """Send one enrollment state; returns the enrollment the LMS then holds."""
        body: dict[str, Any] = {
            "user": username,
            "mode": call.mode,
            "is_active": call.is_active,
            "course_details": {"course_id": course_run_id},
        }
        if is_paid(call.mode) and call.is_active:
            # Paid access must land even after the run's enrollment end (global staff only).
            body["force_enrollment"] = True
        response = self._call("POST", ENROLLMENT_PATH, json=body)
        return self._state(response)

    @staticmethod
    def _state(response: requests.Response) -> EnrollmentState:
        try:
            body = response.json()
            return EnrollmentState(str(body["mode"]), bool(body["is_active"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"LMS answered an unreadable enrollment: {response.text[:200]!r}") from exc

    # -- transport ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        for attempt in (1, 2):
            headers = self._auth_headers(refresh=attempt == 2)
            response = self._send(method, url, headers=headers, **kwargs)
            if response.status_code == 401 and not self.api_key and attempt == 1:
                continue  # the token expired or was revoked early: fetch a new one, once
            break
        status = response.status_code
        if status < 400:
            return response
        what = f"{method} {path}"
        if status in TRANSIENT_STATUSES:
            raise TransientError(
                f"LMS answered {status} for {what}", retry_after_s=_retry_after_s(response), status=status
            )
        message = _message(response)
        if status == 401:
            raise SinkAuthError(f"LMS refused our credentials for {what}: {message}", status=status)
        if status == 403 and "permission" in message.lower():
            raise SinkAuthError(f"LMS says we lack staff rights for {what}: {message}", status=status)
        if status == 404:  # the LMS's answer to acting for another user without staff rights
            raise SinkAuthError(
                f"LMS does not let us act for other users (not global staff?) for {what}", status=status
            )
        if status == 400 and "Won't deactivate" in message:
            raise ModeMismatch(message, status=status)
        raise TerminalError(f"LMS refused {what}: {status} {message}", status=status)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"LMS unreachable: {exc.__class__.__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"LMS request failed: {exc}") from exc

    def _auth_headers(self, *, refresh: bool) -> dict[str, str]:
        if self.api_key:
            return {"X-Edx-Api-Key": self.api_key}
        with self._lock:
            if refresh or self._token is None or self.clock() >= self._token[1]:
                self._token = self._fetch_token()
            return {"Authorization": self._token[0]}

    def _fetch_token(self) -> tuple[str, float]:
        response = self._send(
            "POST",
            self.base_url + TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "token_type": "jwt",
            },
        )
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientError(
                f"LMS token endpoint answered {response.status_code}",
                status=response.status_code,
                retry_after_s=_retry_after_s(response),
            )
        if response.status_code >= 400:
            raise SinkAuthError(
                f"LMS refused our client credentials: {response.status_code} {_message(response)}",
                status=response.status_code,
            )
        try:
            body = response.json()
            token, token_type = str(body["access_token"]), str(body.get("token_type") or "JWT")
            lifetime = float(body.get("expires_in") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"LMS token endpoint answered an unreadable body: {response.text[:200]!r}") from exc
        margin = min(TOKEN_MARGIN_S, lifetime / 10)
        return f"{token_type} {token}", self.clock() + lifetime - margin


class OpenEdxSink:
    """The CourseSink port on Open edX: read the enrollment, send what ``enrollment_calls`` says."""

    name = "openedx"
    # Re-reads after the mode-mismatch guard (the enrollment changed between read and write).
    MAX_REREADS = 3

    def __init__(self, client: OpenEdxClient):
        self.client = client

    def read(self, username: str, course_run_id: str) -> EnrollmentState | None:
        return self.client.get_enrollment(username, course_run_id)

    def apply(self, username: str, course_run_id: str, desired: EnrollmentState) -> EnrollmentState | None:
        for _ in range(self.MAX_REREADS):
            current = self.client.get_enrollment(username, course_run_id)
            try:
                for call in enrollment_calls(current, desired):
                    current = self.client.post_enrollment(username, course_run_id, call)
            except ModeMismatch:
                continue
            return current
        raise TransientError(f"enrollment of {username} in {course_run_id} kept changing under us")
