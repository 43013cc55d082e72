"""RevenueCatClient: the provider's REST v1 over HTTP (one small client class, psf/requests style).

Transport failures are mapped to the engine's errors here, not in tasks: connection errors,
timeouts, 5xx, 423/429/529 are TransientError (with the provider's Retry-After when given);
other 4xx are TerminalError.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests

from engine.errors import EngineError, TerminalError, TransientError

TRANSIENT_STATUSES = frozenset({408, 423, 425, 429, 500, 502, 503, 504, 529})


def path_segment(value: str) -> str:
    """``value`` as one URL path segment that every client and server keeps as it is.

    App user ids contain '$' and ':' and may contain anything else, so every byte outside the
    unreserved set is percent-encoded; dots are encoded too (``%2E``), or an id ``.`` or ``..``
    would be read as a dot segment and removed on the way (RFC 3986 §5.2.4).
    """
    return quote(value, safe="").replace(".", "%2E")


def _retry_after_s(response: requests.Response) -> float | None:
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    try:
        backoff_ms = response.json().get("backoff_ms")
        if backoff_ms is not None:
            return max(0.0, float(backoff_ms) / 1000.0)
    except (ValueError, AttributeError):
        pass
    return None


class RevenueCatClient:
    """``GET /v1/subscribers/{id}`` and ``POST /v1/receipts`` with a secret key and timeouts.

    Safe to share between threads and greenlets (the sweep reads several subscribers at once;
    the web's gevent workers serve many client syncs): each call borrows an idle
    ``requests.Session`` (its keep-alive connections) and gives it back, so there are as many
    sessions as calls ever ran at once, reused. Not thread-local: under gevent that would mean
    a new session, and a new TCP and TLS handshake, for every request. Proxy and CA bundle
    settings are read from the environment once, here, instead of on every request
    (``trust_env``, which also consults ``~/.netrc``: about a third of the client's CPU per
    request, and netrc credentials would replace our Authorization header).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        observe: Callable[[int | None, str, float], None] | None = None,
    ):
        # (HTTP status or None, ok | transient | terminal, seconds) of every request: metrics
        self.observe = observe
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        # What requests would take from the environment on every request (proxies, and the CA
        # bundle of REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, e.g. behind a TLS-inspecting proxy),
        # read once.
        environment = requests.Session().merge_environment_settings(self.base_url, {}, None, None, None)
        self.proxies, self.verify = environment["proxies"], environment["verify"]
        self._idle: list[requests.Session] = []
        self._lock = threading.Lock()
        self.sessions_made = 0

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.proxies.update(self.proxies)
        session.verify = self.verify
        session.headers.update(self.headers)
        self.sessions_made += 1
        return session

    @contextmanager
    def _session(self) -> Iterator[requests.Session]:
        with self._lock:
            session = self._idle.pop() if self._idle else None
        if session is None:
            session = self._new_session()
        try:
            yield session
        finally:
            with self._lock:
                self._idle.append(session)

    def close(self) -> None:
        with self._lock:
            sessions, self._idle = self._idle, []
        for session in sessions:
            session.close()

    def _redacted(self, text: str) -> str:
        """``text`` without our API key, should the provider ever echo it."""
        return text.replace(self.api_key, "[api key]") if self.api_key else text

    def get_subscriber(self, app_user_id: str) -> Mapping[str, Any]:
        """The subscriber's v1 body (200 or 201: v1 is get-or-create)."""
        return self._call("GET", f"{self.base_url}/v1/subscribers/{path_segment(app_user_id)}")

    def post_receipt(self, platform: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """Send a store receipt/token to the provider (``X-Platform`` is required)."""
        return self._call("POST", f"{self.base_url}/v1/receipts", json=dict(payload), headers={"X-Platform": platform})

    def _call(self, method: str, url: str, **kwargs: Any) -> Mapping[str, Any]:
        started = time.perf_counter()
        try:
            body = self._request(method, url, **kwargs)
        except EngineError as exc:
            if self.observe is not None:
                kind = "transient" if isinstance(exc, TransientError) else "terminal"
                self.observe(getattr(exc, "status", None), kind, time.perf_counter() - started)
            raise
        if self.observe is not None:
            self.observe(200, "ok", time.perf_counter() - started)
        return body

    def _request(self, method: str, url: str, **kwargs: Any) -> Mapping[str, Any]:
        try:
            with self._session() as session:
                prepared = session.prepare_request(requests.Request(method, url, **kwargs))
                # requests re-quotes a URL as it prepares it, decoding %2E back to '.', and then
                # urllib3 removes the dot segments ('/v1/subscribers/..' becomes '/v1/'): send
                # the URL exactly as path_segment() encoded it.
                prepared.url = url
                response = session.send(prepared, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"provider unreachable: {exc.__class__.__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"provider request failed: {exc}") from exc
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientError(
                f"provider answered {response.status_code} for {method} {response.request.path_url}",
                retry_after_s=_retry_after_s(response),
                status=response.status_code,
            )
        if response.status_code >= 400:
            # For the operator's log: callers never pass a provider's body on to a client.
            raise TerminalError(
                self._redacted(
                    f"provider refused {method} {response.request.path_url}: {response.status_code} {response.text[:300]}"
                ),
                status=response.status_code,
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientError(f"provider answered non-JSON with {response.status_code}") from exc
        except RecursionError:
            raise TerminalError(f"provider answered JSON nested too deep to read ({response.status_code})") from None
        if not isinstance(body, dict):
            raise TerminalError("provider answered a JSON value that is not an object")
        return body
