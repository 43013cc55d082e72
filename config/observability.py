"""Logging and Sentry set-up, shared by the web, worker and beat processes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from config.settings import Settings

_initialised = False


def init_sentry(settings: Settings, *, component: str, transport: object | None = None) -> bool:
    """Initialise Sentry once per process when SENTRY_DSN is set (or a test transport is given)."""
    global _initialised  # noqa: PLW0603 - once per process
    if _initialised or not (settings.sentry_dsn or transport is not None):
        return _initialised
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn or None,
        transport=transport,  # type: ignore[arg-type]
        # Beat jobs send their own check-ins (tasks/*.py, sentry_sdk.monitor): one monitor per job.
        integrations=[CeleryIntegration(monitor_beat_tasks=False)],
        server_name=component,
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    _initialised = True
    return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def report_drift(drift: Mapping[str, int], *, cause_ref: str = "") -> None:
    """One Sentry event per drift kind a sweep batch repaired, with the count (grouped by kind:
    one alert per failure mode, not one event per repair)."""
    import sentry_sdk

    for kind, count in sorted(drift.items()):
        sentry_sdk.capture_message(
            f"drift repaired: {kind}",
            level="warning",
            tags={"drift_kind": kind, "cause": cause_ref or "sweep"},
            fingerprint=["entitlement-drift", kind],
            contexts={"drift": {"kind": kind, "repairs": count, "cause": cause_ref}},
        )


def report_unknown_products(customer_id: str, product_ids: tuple[str, ...]) -> None:
    import sentry_sdk

    for product_id in product_ids:
        sentry_sdk.capture_message(
            f"unknown product {product_id}",
            level="error",
            tags={"product_id": product_id, "app_user_id": customer_id},
            fingerprint=["unknown-product", product_id],
        )


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
