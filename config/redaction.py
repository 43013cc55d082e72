"""Keeping secrets and request bodies out of what a process prints or reports.

One registry per process holds every secret value of every Settings the process was given
(``register_secrets``); log lines (config/logs.py) and Sentry events (config/observability.py)
pass through ``redact`` / ``scrub`` before they leave. Values are matched, not only names: a
secret copied into an error message or a header dict is caught wherever it ends up.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from config.settings import Settings

REDACTED = "[redacted]"

# SQLAlchemy error messages end with the statement's parameters, i.e. whatever was being
# written (a whole webhook body when the intake's INSERT fails). The engines hide them
# (hide_parameters); this catches any that come from elsewhere.
_SQL_PARAMETERS = re.compile(r"\[parameters: .*?\](?=\s*(?:\n|\(Background|$))", re.DOTALL)

# Keys whose values are never reported, whatever they hold (request headers, SQL parameters,
# bodies, credentials).
SENSITIVE_KEY = re.compile(
    r"pass(word|wd)?|secret|token|auth|api[-_.]?key|dsn|cookie|credential|signature|param|"
    r"^body$|^payload$|^raw_?body$",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def register_secrets(settings: Settings) -> None:
    """Add the secrets of ``settings`` to this process's registry (idempotent)."""
    add_secrets(settings.secret_values())


def add_secrets(values: Iterable[str]) -> None:
    global _secrets, _pattern  # noqa: PLW0603 - one registry per process, replaced whole
    with _lock:
        merged = _secrets | {v for v in values if v}
        if merged == _secrets:
            return
        # Longest first, so that "Bearer abc" is replaced whole rather than around "abc".
        alternatives = sorted(merged, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in alternatives))
        _secrets = frozenset(merged)


def redact(text: str) -> str:
    """``text`` with every registered secret and any SQL parameters replaced."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "[parameters: " in text:
        text = _SQL_PARAMETERS.sub("[parameters: hidden]", text)
    return text


def scrub(value: Any, *, depth: int = 0) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with secrets redacted and the values
    of sensitive keys replaced, however deeply nested."""
    if depth > 40:
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {
            key: (REDACTED if isinstance(key, str) and SENSITIVE_KEY.search(key) else scrub(item, depth=depth + 1))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item, depth=depth + 1) for item in value]
    return value
