"""Sentry for every process: errors, drift and unknown products, beat check-ins.

Nothing secret and no request body leaves: local variables are not sent, request bodies
never, and every event and breadcrumb passes ``scrub_event`` / ``scrub_breadcrumb`` (each
configured secret value redacted wherever it occurs, SQL parameters dropped, the values of
sensitive keys such as headers and parameters replaced).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

from config.redaction import register_secrets, scrub
from config.settings import Settings

if TYPE_CHECKING:
    from sentry_sdk._types import BreadcrumbProcessor, DataCollectionUserOptions, EventProcessor, MonitorConfig
    from sentry_sdk.transport import Transport

log = logging.getLogger(__name__)

_initialised = False
# What the integrations may collect: no user data, cookies, bodies, query strings, SQL or queue
# data, and no local variables (they hold what the code was working on: Settings, the auth
# header being compared, webhook bodies, SQL parameters; the stack trace finds the fault).
DATA_COLLECTION: dict[str, Any] = {
    "user_info": False,
    "cookies": {"mode": "off"},
    "http_headers": {"request": {"mode": "allowlist", "terms": ["user-agent", "content-type", "content-length"]}},
    "http_bodies": [],
    "url_query_params": {"mode": "off"},
    "gen_ai": {"inputs": False, "outputs": False},
    "database_query_data": False,
    "queues": False,
    "stack_frame_variables": False,
}
# Examples a drift event carries per kind: enough to look into, few enough to stay small.
DRIFT_EXAMPLES = 5


# Where the integrations that instrument Celery and the stores are loaded, by the process's
# ``component``. Celery's reports only where tasks run (a task's failure, with its name); in a
# process that only sends tasks it wraps each publish in a queue span and adds trace headers,
# for tracing, which is off. SQL and Redis commands become breadcrumbs where an error follows a
# long run of them worth retracing (a task, a CLI command), not in the web, whose requests are
# a statement or two: there the intake's writer, which stores and publishes for every request
# of its process, recorded them in its own scope, which no request's event carries.
TASK_PROCESSES = frozenset({"worker", "beat"})
STORE_BREADCRUMB_PROCESSES = frozenset({"worker", "beat", "cli"})


def init_sentry(settings: Settings, *, component: str, transport: Transport | None = None) -> bool:
    """Initialise Sentry once per process when SENTRY_DSN is set (or a test transport is given);
    later calls register their settings' secrets for scrubbing and tag the process.

    The Celery, SQLAlchemy and Redis integrations are loaded only where they report something
    (TASK_PROCESSES, STORE_BREADCRUMB_PROCESSES): in the web they were most of what Sentry cost
    the intake per webhook (bench/intake.py, docs/benchmarks.md). Its errors reach Sentry as
    before, with the request, the stack and the log lines before them.
    """
    global _initialised  # noqa: PLW0603 - once per process
    register_secrets(settings)
    if not _initialised and (settings.sentry_dsn or transport is not None):
        runs_tasks = component in TASK_PROCESSES
        import sentry_sdk
        from sentry_sdk.integrations import Integration
        from sentry_sdk.integrations.celery import CeleryIntegration
        from sentry_sdk.integrations.flask import FlaskIntegration
        from sentry_sdk.integrations.logging import LoggingIntegration
        from sentry_sdk.integrations.redis import RedisIntegration
        from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration

        left_out: list[type[Integration]] = [] if runs_tasks else [CeleryIntegration]
        if component not in STORE_BREADCRUMB_PROCESSES:
            left_out += [SqlalchemyIntegration, RedisIntegration]

        sentry_sdk.init(
            dsn=settings.sentry_dsn or None,
            transport=transport,
            integrations=[
                # Beat jobs send their own check-ins (beat_check_in): one monitor per job.
                *([CeleryIntegration(monitor_beat_tasks=False)] if runs_tasks else []),
                LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
                # Errors only, no performance tracing: no transaction per request (the intake's
                # hot path pays for each one, sampled or not).
                FlaskIntegration(http_methods_to_capture=()),
            ],
            disabled_integrations=left_out,
            data_collection=cast("DataCollectionUserOptions", DATA_COLLECTION),
            before_send=cast("EventProcessor", scrub_event),
            before_breadcrumb=cast("BreadcrumbProcessor", scrub_breadcrumb),
            # No tracing and no release-health sessions: a server process reports errors,
            # drift and check-ins; per-request sessions and transactions cost the intake CPU.
            traces_sample_rate=None,
            auto_session_tracking=False,
        )
        _initialised = True
    if _initialised:
        import sentry_sdk

        sentry_sdk.set_tag("process", component)
    return _initialised


def scrub_event(event: dict[str, Any], _hint: object = None) -> dict[str, Any]:
    """The event without secrets, SQL parameters, request bodies or cookies (Sentry's before_send)."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string", "env"):
            request.pop(key, None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    return scrub(event)


def scrub_breadcrumb(crumb: dict[str, Any], _hint: object = None) -> dict[str, Any]:
    """The breadcrumb without secrets or SQL parameters (Sentry's before_breadcrumb)."""
    return scrub(crumb)


@contextmanager
def cli_command_scope(command: str) -> Iterator[None]:
    """Inside the block, what is reported to Sentry is marked as coming from an operator's CLI
    command (tags ``process=cli`` and ``cli_command``)."""
    import sentry_sdk

    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("process", "cli")
        scope.set_tag("cli_command", command)
        yield


def report_drift(
    repairs: Iterable[tuple[str, Any]], *, cause_ref: str = "", kind_of: Callable[[Any], str | None] | None = None
) -> None:
    """One Sentry event per drift kind for a batch of repairs (``(customer_id, action)`` pairs):
    how many, for how many customers, and a few examples. Sentry groups them by kind.
    ``kind_of(action)``: the drift kind under the repairs' cause (``Cause.drift_kind``); by
    default the action's own (``Action.drift_kind``)."""
    import sentry_sdk

    by_kind: dict[str, list[tuple[str, Any]]] = {}
    for customer_id, action in repairs:
        kind = kind_of(action) if kind_of is not None else action.drift_kind
        if kind:
            by_kind.setdefault(kind, []).append((customer_id, action))
    for kind, found in sorted(by_kind.items()):
        customers = {customer_id for customer_id, _ in found}
        sentry_sdk.capture_message(
            f"drift repaired: {kind} ({len(found)} in this batch)",
            level="warning",
            tags={"drift_kind": kind, "cause": cause_ref},
            fingerprint=["entitlement-drift", kind],
            contexts={
                "drift": {
                    "kind": kind,
                    "repairs": len(found),
                    "customers": len(customers),
                    "cause": cause_ref,
                    "examples": [_drift_example(c, a) for c, a in found[:DRIFT_EXAMPLES]],
                }
            },
        )


def _drift_example(customer_id: str, action: Any) -> dict[str, Any]:
    def side(access: Any) -> dict[str, Any] | None:
        return None if access is None else {"mode": access.mode, "expires_ms": access.expires_ms}

    return {
        "customer_id": customer_id,
        "action": action.kind,
        "resource": action.resource,
        "before": side(action.before),
        "after": side(action.after),
    }


def report_unknown_products(customer_id: str, product_ids: Sequence[str], *, cause_ref: str = "") -> None:
    """One log line (not an event of its own) and one Sentry event per unknown product id."""
    import sentry_sdk

    log.warning(
        "unknown products %s for %s%s: recorded, granting nothing",
        list(product_ids),
        customer_id,
        f" ({cause_ref})" if cause_ref else "",
    )
    for product_id in product_ids:
        sentry_sdk.capture_message(
            f"unknown product {product_id}",
            level="error",
            tags={"product_id": product_id, "app_user_id": customer_id},
            fingerprint=["unknown-product", product_id],
        )


def monitor_config(every_s: float, *, max_runtime_s: float) -> dict[str, Any]:
    """Sentry cron monitor settings for a job beat runs every ``every_s`` seconds, sent with each
    check-in so that the monitor creates (and updates) itself. Sentry counts in whole minutes:
    jobs more frequent than that check in more often than the monitor expects, which it allows."""
    return {
        "schedule": {"type": "interval", "value": max(1, math.ceil(every_s / 60)), "unit": "minute"},
        "checkin_margin": max(1, math.ceil(every_s / 60)),
        "max_runtime": max(1, math.ceil(max_runtime_s / 60)),
        "timezone": "UTC",
        # One missed or failed run is noise after a deploy; two in a row is an alert.
        "failure_issue_threshold": 2,
        "recovery_threshold": 1,
    }


def beat_check_in(
    slug: str, every_s: float, *, max_runtime_s: float = 120, when: bool = True
) -> AbstractContextManager[Any]:
    """A cron check-in around one run of a beat job (``when`` False: none, e.g. the same task
    run on demand rather than by beat)."""
    if not when:
        return nullcontext()
    import sentry_sdk

    config = cast("MonitorConfig", monitor_config(every_s, max_runtime_s=max_runtime_s))
    return sentry_sdk.monitor(monitor_slug=slug, monitor_config=config)


def beat_monitor(slug: str, every_s: float, *, max_runtime_s: float = 120) -> Callable[[Callable], Callable]:
    """Decorator form of beat_check_in for tasks only beat runs."""
    import sentry_sdk

    config = cast("MonitorConfig", monitor_config(every_s, max_runtime_s=max_runtime_s))
    return sentry_sdk.monitor(monitor_slug=slug, monitor_config=config)


def report_dead_letter(inbox_id: int, *, event_type: str | None, kind: str, error: str) -> None:
    """One Sentry event when a webhook becomes a dead letter (grouped by failure kind and type)."""
    import sentry_sdk

    sentry_sdk.capture_message(
        f"webhook dead letter ({kind})",
        level="error",
        tags={"inbox_id": str(inbox_id), "event_type": event_type or "unknown", "failure_kind": kind},
        fingerprint=["inbox-dead-letter", kind, event_type or "unknown"],
        contexts={"dead_letter": {"error": error[:500]}},
    )


def report_lms_refusal(customer_id: str, resource: str, kind: str, message: str) -> None:
    """One Sentry event per change the LMS refused for good, grouped by kind."""
    import sentry_sdk

    sentry_sdk.capture_message(
        f"LMS refused a change: {kind}",
        level="error",
        tags={"lms_refusal": kind, "app_user_id": customer_id, "resource": resource},
        fingerprint=["lms-refusal", kind],
        contexts={"lms_refusal": {"kind": kind, "message": message[:500]}},
    )


def report_sink_paused(sink: str, message: str) -> None:
    """The sink stopped sending: credentials refused or the LMS URL/path wrong (one alert per cause)."""
    import sentry_sdk

    sentry_sdk.capture_message(
        f"{sink} sink paused: {message[:200]}",
        level="error",
        tags={"sink": sink},
        fingerprint=["sink-paused", sink],
    )
