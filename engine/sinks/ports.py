"""The sink port: what the engine needs from an LMS (one Protocol; a new LMS is one new file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.errors import TerminalError


@dataclass(frozen=True)
class EnrollmentState:
    """An enrollment of one user in one course run: its mode and whether it is active.

    Used both for what the LMS holds and for what the engine wants it to hold (see
    ``engine.sinks.enrollment.enrollment_calls`` for how a desired state is read).
    """

    mode: str
    is_active: bool


class SinkAuthError(TerminalError):
    """The sink refuses our credentials (401 after a token refresh, 403 for staff-only calls).

    Retrying one row cannot help, but the row is not wrong either: the drain stops, keeps every
    row pending, and alerts; rows go out once an operator fixes the credentials.
    """


class CourseSink(Protocol):
    """An LMS that holds course enrollments.

    ``apply`` makes the enrollment of ``username`` in ``course_run_id`` match ``desired`` and
    returns what the LMS then holds; it must be idempotent (the outbox re-sends after a crash).
    ``read`` returns what the LMS holds now (None: no enrollment), for drift checks.
    Both raise TransientError (unreachable, 5xx, 429: retried with backoff), TerminalError
    (this row can never succeed: unknown user or course, mode not offered) or SinkAuthError.
    """

    name: str

    def apply(self, username: str, course_run_id: str, desired: EnrollmentState) -> EnrollmentState | None: ...

    def read(self, username: str, course_run_id: str) -> EnrollmentState | None: ...
