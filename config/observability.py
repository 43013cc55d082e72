"""Logging and Sentry set-up, shared by the web, worker and beat processes."""

from __future__ import annotations

import logging

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
        # Beat jobs send their own check-ins (tasks/jobs.py, sentry_sdk.monitor): one monitor per job.
        integrations=[CeleryIntegration(monitor_beat_tasks=False)],
        server_name=component,
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    _initialised = True
    return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def report_drift(customer_id: str, actions: list, *, cause_ref: str = "") -> None:
    """Send one Sentry event per drift repair, grouped by kind (one alert per failure mode)."""
    import sentry_sdk

    for action in actions:
        kind = action.drift_kind
        before = action.before
        after = action.after
        sentry_sdk.capture_message(
            f"drift repaired: {kind}",
            level="warning",
            tags={"drift_kind": kind, "app_user_id": customer_id, "resource": action.resource},
            fingerprint=["entitlement-drift", kind],
            contexts={
                "drift": {
                    "action": action.kind,
                    "resource": action.resource,
                    "before": None if before is None else {"mode": before.mode, "expires_ms": before.expires_ms},
                    "after": None if after is None else {"mode": after.mode, "expires_ms": after.expires_ms},
                    "cause": cause_ref,
                }
            },
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
