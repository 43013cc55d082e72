"""Logging and Sentry set-up, shared by the web, worker and beat processes."""

from __future__ import annotations

import logging

from config.settings import Settings

_initialised = False


def init_sentry(settings: Settings, *, component: str, transport: object | None = None) -> bool:
    """Initialise Sentry once per process when SENTRY_DSN is set (or a test transport is given)."""
    global _initialised
    if _initialised or not (settings.sentry_dsn or transport is not None):
        return _initialised
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn or None,
        transport=transport,  # type: ignore[arg-type]
        integrations=[CeleryIntegration(monitor_beat_tasks=True)],
        server_name=component,
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    _initialised = True
    return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
