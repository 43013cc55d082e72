"""Around every operator command: logging (to stderr: stdout carries the command's output),
Sentry events tagged as coming from the CLI, the catalog checked first, and each failure
said in one line instead of a traceback.

Exit status 2: the operator's input (or the configuration) is wrong, nothing was written.
Exit status 1: something the engine depends on failed (database, Redis, provider) or a bug.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click
import redis
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from config.logs import configure_logging, log_context
from config.observability import cli_command_scope
from config.redaction import redact
from engine.errors import EngineError
from services.startup import StartupError, check_catalog
from web.sync import app_user_id_problem

log = logging.getLogger("web.cli")


class OperatorInputError(click.ClickException):
    """The operator's input cannot be used: one line, exit status 2, nothing written."""

    exit_code = 2


class OperatorFailure(click.ClickException):
    """Something the command depends on failed: one line, exit status 1."""

    exit_code = 1


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (click's test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def operator_command(group: click.Group, name: str, *, needs_catalog: bool = True, **options: Any) -> Callable:
    """``group.command(name)`` with the boundary described above around it."""

    def decorate(fn: Callable[..., Any]) -> click.Command:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            settings = current_app.config["ENGINE_SETTINGS"]
            configure_logging(settings, process="cli", stream=_CurrentStderr())
            with cli_command_scope(name), log_context(command=name):
                try:
                    if needs_catalog:
                        check_catalog(settings)
                    return fn(*args, **kwargs)
                except click.ClickException:
                    raise
                except StartupError as exc:
                    raise OperatorInputError(str(exc)) from None
                except SQLAlchemyError as exc:
                    raise OperatorFailure(f"database: {_first_line(exc)}") from None
                except redis.RedisError as exc:
                    raise OperatorFailure(f"Redis: {_first_line(exc)}") from None
                except EngineError as exc:
                    raise OperatorFailure(f"{type(exc).__name__}: {_first_line(exc)}") from None
                except Exception as exc:
                    import sentry_sdk

                    sentry_sdk.capture_exception(exc)
                    log.debug("%s failed", name, exc_info=True)
                    raise OperatorFailure(
                        f"unexpected {type(exc).__name__}: {_first_line(exc)} (LOG_LEVEL=DEBUG shows where)"
                    ) from None

        return group.command(name, **options)(run)

    return decorate


def _first_line(exc: BaseException) -> str:
    """The error's first line (SQLAlchemy appends the statement on later ones), secrets redacted."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:500]


def checked_app_user_id(app_user_id: str, what: str = "app_user_id") -> str:
    """``app_user_id`` if it can name a user; OperatorInputError saying why not."""
    problem = app_user_id_problem(app_user_id)
    if problem is None:
        try:
            app_user_id.encode("utf-8")
        except UnicodeEncodeError:
            problem = "not valid UTF-8"
    if problem is not None:
        shown = app_user_id if len(app_user_id) <= 40 else f"{app_user_id[:40]}… ({len(app_user_id)} characters)"
        raise OperatorInputError(f"{what} {shown!r}: {problem}")
    return app_user_id
