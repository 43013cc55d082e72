"""The two kinds of failure the engine knows (style.md, convention 5)."""

from __future__ import annotations


class EngineError(Exception):
    """Root of the engine's errors."""


class TransientError(EngineError):
    """Worth retrying later: 5xx, 429, timeouts, connection errors, a locked database.

    ``retry_after_s`` is the provider's own hint (``Retry-After``), when it gave one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


class TerminalError(EngineError):
    """Retrying cannot help (bad input, rejected credentials): record, alert, do not retry."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class CatalogError(TerminalError):
    """The product catalog file is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid catalog: " + "; ".join(problems))
        self.problems = problems


class SinkAuthError(TerminalError):
    """The sink refuses our credentials (401 after a token refresh, 403 for staff-only calls).

    Retrying one row cannot help, but the row is not wrong either: the drain stops, keeps every
    row pending, and alerts; rows go out once an operator fixes the credentials.
    """
