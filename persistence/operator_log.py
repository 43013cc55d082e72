"""The operator audit log: what an operator did (replays, imports, syncs...), by whom, when."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import OperatorAction


def record_action(
    session: Session, *, actor: str, action: str, target: str = "", detail: Mapping[str, Any] | None = None, now_ms: int
) -> None:
    """Add one entry in the caller's transaction."""
    session.add(
        OperatorAction(
            at_ms=now_ms,
            actor=actor[:255],
            action=action[:64],
            target=target[:255],
            detail=json.dumps(dict(detail), sort_keys=True, default=str) if detail else None,
        )
    )


def log_action(
    factory: sessionmaker[Session],
    *,
    actor: str,
    action: str,
    target: str = "",
    detail: Mapping[str, Any] | None = None,
    now_ms: int,
) -> None:
    """Add one entry in a transaction of its own."""
    with factory() as session, session.begin():
        record_action(session, actor=actor, action=action, target=target, detail=detail, now_ms=now_ms)


def recent_actions(
    factory: sessionmaker[Session], *, limit: int = 50, before_id: int | None = None
) -> list[OperatorAction]:
    stmt = select(OperatorAction)
    if before_id is not None:
        stmt = stmt.where(OperatorAction.id < before_id)
    with factory() as session:
        return list(session.scalars(stmt.order_by(OperatorAction.id.desc()).limit(limit)))
