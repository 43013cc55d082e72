"""HTTP face of the simulator: the RevenueCat v1 and v2 endpoints we use, an admin API, webhook sending.

Provider API v1 (reference/revenuecat.md §3):
    GET  /v1/subscribers/<app_user_id>   Bearer auth; 201 when created, 200 otherwise
    POST /v1/receipts                    Bearer auth; JSON body; X-Platform header required
Provider API v2 (§4, read side: ``simulators.revenuecat.server_v2``): its own key, sent as
``Authorization: Bearer <key>`` (a v1 key is refused there, and a v2 key on v1); v2 error
objects; rate-limit headers on every answer, and 429 past an enforced limit (§5).
Admin API (JSON in and out, no auth, never subject to faults or ``down``):
    POST /_sim/<operation>   keyword arguments of ``ProviderState.<operation>`` → its webhook body
    POST /_sim/faults        {"fail_next", "status", "retry_after_s", "latency_ms", "down", "clear"}
    POST /_sim/rate_limit    {"domain", "per_minute" (null: count only), "burst"} → limits and refusals
    POST /_sim/clock         {"advance_ms"} or {"offset_ms"} → {"now_ms", "clock_offset_ms"}
    POST /_sim/deliver       {"event": body, "headers": {...}} → {"status"} (posts it to the webhook URL)
    GET  /_sim/stats         request counters, pending faults, clock
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Self

import requests
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.serving import WSGIRequestHandler

from simulators.revenuecat.rate_limit import DomainLimits
from simulators.revenuecat.server_v2 import create_v2_blueprint, domain_of, v2_error
from simulators.revenuecat.state import ERROR_BAD_REQUEST, ProviderState, SimulatorError
from simulators.serving import ServedApp

WEBHOOK_TIMEOUT = (2, 10)  # (connect, read) seconds
_RATE_LIMIT_DOC_URL = "https://errors.rev.cat/rate-limit-error"
ERROR_INTERNAL = 7110  # RevenueCat backend code for an internal server error

Deliver = Callable[..., int]


def _fault_response(status: int, retry_after_s: float | None) -> Response:
    """The body and headers a real failure of this status carries (§5 for 429)."""
    if status == 429:
        retry_after_s = 1.0 if retry_after_s is None else retry_after_s
        body: dict[str, Any] = {
            "type": "rate_limit_error",
            "message": "Rate limit exceeded",
            "retryable": True,
            "doc_url": _RATE_LIMIT_DOC_URL,
            "backoff_ms": int(retry_after_s * 1000),
        }
    elif status >= 500:
        body = {"code": ERROR_INTERNAL, "message": "Internal server error" if status == 500 else "Service unavailable"}
    else:
        body = {"code": ERROR_BAD_REQUEST, "message": "Injected failure"}
    response = _json(body, status)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after_s))  # whole seconds, per the spec
    return response


class _DocumentOrderJSON(DefaultJSONProvider):
    sort_keys = False  # keep the documented field order in bodies


def create_simulator_app(
    state: ProviderState,
    *,
    api_key: str,
    deliver: Deliver | None = None,
    v2_api_key: str = "sk_sim_v2",
    project_id: str = "proj_sim",
    limits: DomainLimits | None = None,
) -> Flask:
    """A Flask app serving ``state`` over the provider (v1 and v2) and admin APIs.

    ``deliver(body, headers=...)`` backs ``POST /_sim/deliver``; without it that route answers 409.
    ``limits`` counts (and, where enforced, limits) the requests of each rate-limit domain;
    v1, which documents no limit, is the domain ``v1`` (no headers), limited only if enforced.
    """
    app = Flask("simulators.revenuecat")
    app.json = _DocumentOrderJSON(app)
    limits = limits if limits is not None else DomainLimits()

    @app.before_request
    def provider_gate() -> Response | None:
        """Accounting, outage, latency, auth, injected faults and rate limits for every non-admin request."""
        if request.path.startswith("/_sim/"):
            return None  # the admin API must stay reachable, e.g. to end an outage
        state.record_request(request.method, request.path)
        v2 = request.path.startswith("/v2/")
        if state.down:
            return v2_error(503) if v2 else _fault_response(503, None)
        if state.latency_ms > 0:
            time.sleep(state.latency_ms / 1000)
        if request.headers.get("Authorization") != f"Bearer {v2_api_key if v2 else api_key}":
            return v2_error(401) if v2 else _json({"message": "Invalid API key"}, 401)
        fault = state.take_fault()
        if fault is not None:
            return (
                v2_error(fault.status, retry_after_s=fault.retry_after_s)
                if v2
                else _fault_response(fault.status, fault.retry_after_s)
            )
        admission = limits.admit(domain_of(request.path) if v2 else "v1")
        if admission.retry_after_s is not None:
            refused = (
                v2_error(429, retry_after_s=admission.retry_after_s)
                if v2
                else _fault_response(429, admission.retry_after_s)
            )
            if v2:
                _rate_limit_headers(refused, admission.usage, admission.limit)
            return refused
        if v2:
            g.rate_limit = (admission.usage, admission.limit)
        return None

    @app.after_request
    def rate_limit_headers(response: Response) -> Response:
        """Every v2 answer past the gate says how much of its domain's minute is used (§5)."""
        reading = g.pop("rate_limit", None)
        if reading is not None:
            _rate_limit_headers(response, *reading)
        return response

    app.register_blueprint(create_v2_blueprint(state, project_id=project_id))

    @app.post("/_sim/rate_limit")
    def set_rate_limit() -> Response:
        payload = _admin_payload()
        domain = payload.get("domain")
        if not isinstance(domain, str) or not domain:
            return _admin_error(400, "body must name a 'domain'")
        per_minute = payload.get("per_minute")
        try:
            limits.enforce(domain, None if per_minute is None else int(per_minute), payload.get("burst"))
        except (TypeError, ValueError) as exc:
            return _admin_error(400, str(exc))
        return jsonify(limits.stats())

    @app.get("/v1/subscribers/<path:app_user_id>")
    def get_subscriber(app_user_id: str) -> Response:
        status, body = state.subscriber(app_user_id)
        return _json(body, status)

    @app.post("/v1/receipts")
    def post_receipt() -> Response:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return _json({"code": ERROR_BAD_REQUEST, "message": "The request body must be a JSON object."}, 400)
        result = state.receipt(
            str(payload.get("app_user_id") or ""),
            request.headers.get("X-Platform"),
            str(payload.get("fetch_token") or ""),
            payload.get("product_id"),
        )
        return _json(result.body, result.status)

    @app.post("/_sim/faults")
    def set_faults() -> Response:
        payload = _admin_payload()
        if payload.get("clear"):
            state.clear_faults()
        if "latency_ms" in payload:
            state.latency_ms = int(payload["latency_ms"])
        if "down" in payload:
            state.down = bool(payload["down"])
        if payload.get("fail_next"):
            state.fail_next(int(payload["fail_next"]), int(payload.get("status", 500)), payload.get("retry_after_s"))
        return jsonify(state.stats(log_tail=0))

    @app.post("/_sim/clock")
    def set_clock() -> Response:
        payload = _admin_payload()
        if "offset_ms" in payload:
            state.clock_offset_ms = int(payload["offset_ms"])
        if "advance_ms" in payload:
            state.advance_clock(int(payload["advance_ms"]))
        return jsonify({"now_ms": state.now_ms(), "clock_offset_ms": state.clock_offset_ms})

    @app.post("/_sim/deliver")
    def deliver_event() -> Response:
        payload = _admin_payload()
        if deliver is None:
            return _admin_error(409, "this simulator has no webhook delivery configured")
        if not isinstance(payload.get("event"), dict):
            return _admin_error(400, "body must be {'event': <webhook body>}")
        try:
            status = deliver(payload["event"], headers=payload.get("headers"))
        except RuntimeError as exc:  # no webhook URL
            return _admin_error(409, str(exc))
        except requests.RequestException as exc:
            return _admin_error(502, f"delivery failed: {exc}")
        return jsonify({"status": status})

    @app.get("/_sim/stats")
    def stats() -> Response:
        return jsonify({**state.stats(log_tail=int(request.args.get("log_tail", 100))), "rate_limits": limits.stats()})

    @app.post("/_sim/<operation>")
    def run_operation(operation: str) -> Response:
        if operation not in ProviderState.OPERATIONS:
            return _admin_error(404, f"unknown operation {operation!r}")
        payload = _admin_payload()
        try:
            result = getattr(state, operation)(**payload)
        except TypeError as exc:  # wrong or missing keyword arguments
            return _admin_error(400, str(exc))
        except SimulatorError as exc:
            return _admin_error(400, str(exc))
        return jsonify(result)

    return app


def _rate_limit_headers(response: Response, usage: int, limit: int) -> None:
    response.headers["RevenueCat-Rate-Limit-Current-Usage"] = str(usage)
    response.headers["RevenueCat-Rate-Limit-Current-Limit"] = str(limit)


def _admin_payload() -> dict[str, Any]:
    payload = request.get_json(silent=True)
    return payload if isinstance(payload, dict) else {}


def _admin_error(status: int, message: str) -> Response:
    return _json({"message": message}, status)


def _json(body: Any, status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _event_identity(body: Any) -> tuple[str | None, str | None]:
    event = body.get("event") if isinstance(body, dict) else None
    if not isinstance(event, dict):
        return None, None
    return event.get("id"), event.get("type")


def _dated_by(state: ProviderState) -> type[WSGIRequestHandler]:
    """A request handler whose ``Date`` header is the simulator's clock: v2 bodies carry no
    request date, so the header is the provider's only clock there (as v1's request_date is)."""

    class ProviderDated(WSGIRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return formatdate(state.now_ms() / 1000 if timestamp is None else timestamp, usegmt=True)

    return ProviderDated


@dataclass(frozen=True)
class Delivery:
    """One attempted webhook POST: ``status`` None when it failed before any answer."""

    event_id: str | None
    event_type: str | None
    status: int | None
    error: str | None
    at_ms: int


class SimulatorServer(ServedApp):
    """The simulator on a real socket (werkzeug, threaded) in a daemon thread.

    The port is bound at construction, so ``url`` is known before ``start()`` (the provider API
    lives under ``/v1``). With ``auto_deliver`` every operation's webhook is POSTed to
    ``webhook_url`` synchronously as the operation returns; failures are swallowed and recorded
    in ``delivery_log``. REST v2 lives under ``/v2/projects/<project_id>`` with ``v2_api_key``;
    ``rate_limits`` (domain -> requests per minute) are enforced as token buckets from the start.
    """

    def __init__(
        self,
        state: ProviderState | None = None,
        *,
        api_key: str = "sk_sim",
        v2_api_key: str = "sk_sim_v2",
        project_id: str = "proj_sim",
        rate_limits: dict[str, int] | None = None,
        webhook_url: str | None = None,
        webhook_auth: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        auto_deliver: bool = False,
    ) -> None:
        self.state = state if state is not None else ProviderState()
        self.api_key = api_key
        self.v2_api_key = v2_api_key
        self.project_id = project_id
        self.limits = DomainLimits()
        for domain, per_minute in (rate_limits or {}).items():
            self.limits.enforce(domain, per_minute)
        self.webhook_url = webhook_url
        self.webhook_auth = webhook_auth
        self.auto_deliver = auto_deliver
        self.delivery_log: list[Delivery] = []
        self._log_lock = threading.Lock()
        super().__init__(
            create_simulator_app(
                self.state,
                api_key=api_key,
                deliver=self.deliver,
                v2_api_key=v2_api_key,
                project_id=project_id,
                limits=self.limits,
            ),
            host=host,
            port=port,
            name="revenuecat-simulator",
            request_handler=_dated_by(self.state),
        )

    def start(self) -> Self:
        """Serve in a daemon thread; returns self."""
        if self._thread is None and self.auto_deliver:
            self.state.add_listener(self._deliver_quietly)
        return super().start()

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Serve in the calling thread until interrupted (the CLI's foreground mode)."""
        if self.auto_deliver:
            self.state.add_listener(self._deliver_quietly)
        try:
            super().serve_forever(poll_interval)
        finally:
            self.state.remove_listener(self._deliver_quietly)

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.state.remove_listener(self._deliver_quietly)
        super().stop()

    def deliver(self, event_body: dict[str, Any], *, headers: dict[str, str] | None = None) -> int:
        """POST one webhook body to ``webhook_url`` with ``Authorization: <webhook_auth>`` verbatim.

        Returns the HTTP status; transport errors propagate (and are recorded in ``delivery_log``).
        """
        if not self.webhook_url:
            raise RuntimeError("no webhook_url configured")
        sent_headers = {"Content-Type": "application/json"}
        if self.webhook_auth is not None:
            sent_headers["Authorization"] = self.webhook_auth
        sent_headers.update(headers or {})
        event_id, event_type = _event_identity(event_body)
        try:
            response = requests.post(
                self.webhook_url, data=json.dumps(event_body), headers=sent_headers, timeout=WEBHOOK_TIMEOUT
            )
        except requests.RequestException as exc:
            self._log(Delivery(event_id, event_type, None, repr(exc), int(time.time() * 1000)))
            raise
        self._log(Delivery(event_id, event_type, response.status_code, None, int(time.time() * 1000)))
        return response.status_code

    def _deliver_quietly(self, event_body: dict[str, Any]) -> None:
        # Auto-delivery must never make the operation that produced the event fail.
        try:
            self.deliver(event_body)
        except requests.RequestException:
            pass  # deliver() has recorded it
        except Exception as exc:
            self._log(Delivery(*_event_identity(event_body), None, repr(exc), int(time.time() * 1000)))

    def _log(self, delivery: Delivery) -> None:
        with self._log_lock:
            self.delivery_log.append(delivery)
