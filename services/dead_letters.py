"""Dead letters and the rest of the inbox, as operators see them (CLI and console): list with
filters, show one row, replay dead letters by id or by filter. Every replay is recorded in the
operator audit log."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from persistence.inbox_rows import RowFilter, get_row, list_rows, reset_for_replay, users_of
from persistence.models import InboxEvent
from persistence.operator_log import log_action

# A body is shown whole up to this size; beyond, its start (webhooks are at most 256 KiB).
SHOWN_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class InboxRowView:
    id: int
    event_id: str | None
    event_type: str | None
    status: str
    attempts: int
    replays: int
    error_kind: str | None
    last_error: str | None
    received_at: str | None
    processed_at: str | None
    next_attempt_ms: int | None
    users: tuple[str, ...] = ()
    body: Any = None  # parsed JSON when it parses, else the text

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in {"body", "users"}}


def _view(row: InboxEvent, *, users: Sequence[str] = (), with_body: bool = False) -> InboxRowView:
    body: Any = None
    if with_body:
        raw = bytes(row.body or b"")[:SHOWN_BODY_BYTES]
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
    return InboxRowView(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        replays=row.replays,
        error_kind=row.error_kind,
        last_error=row.last_error,
        received_at=row.received_at.isoformat() if row.received_at else None,
        processed_at=row.processed_at.isoformat() if row.processed_at else None,
        next_attempt_ms=row.next_attempt_ms,
        users=tuple(users),
        body=body,
    )


def list_inbox(
    factory: sessionmaker[Session], f: RowFilter, *, before_id: int | None = None, limit: int = 50
) -> list[InboxRowView]:
    return [_view(row) for row in list_rows(factory, f, before_id=before_id, limit=limit)]


def show_inbox_row(factory: sessionmaker[Session], inbox_id: int) -> InboxRowView | None:
    row = get_row(factory, inbox_id)
    if row is None:
        return None
    return _view(row, users=users_of(factory, inbox_id), with_body=True)


def replay_dead_letters(
    factory: sessionmaker[Session],
    f: RowFilter,
    *,
    actor: str,
    enqueue: Callable[[int], None],
    now_ms: int,
) -> list[int]:
    """Put the dead letters matching ``f`` back in the queue; the ids replayed. Recorded in the
    operator audit log with who asked and which filter. A row whose message is lost is sent
    again by the redrive, like any received row."""
    ids = reset_for_replay(factory, f, now_ms=now_ms)
    log_action(
        factory,
        actor=actor,
        action="inbox.replay",
        target=",".join(map(str, ids[:20])) + ("..." if len(ids) > 20 else ""),
        detail={"filter": {k: v for k, v in f.__dict__.items() if v is not None}, "replayed": len(ids)},
        now_ms=now_ms,
    )
    for inbox_id in ids:
        enqueue(inbox_id)
    return ids
