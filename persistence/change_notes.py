"""Which customers' grants a transaction changed, published after it commits.

The customers are noted in the session (``note_access_changed``, for grants written with Core
statements, and a flush hook for ``Grant`` rows written as ORM objects); after the transaction
commits their ids go to ``publish`` at once (nothing is published for a rolled-back one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import Grant

_CHANGED_KEY = "engine.access_changed"  # Session.info key: customer ids changed in this transaction


def note_access_changed(session: Session, customer_id: str) -> None:
    """Grants of ``customer_id`` were written in this transaction without ORM objects (Core
    statements): publish them after commit like the flush hook below does."""
    session.info.setdefault(_CHANGED_KEY, set()).add(customer_id)


def install_change_notifications(factory: sessionmaker[Session], publish: Callable[[Iterable[str]], None]) -> None:
    """Publish, after each commit of a session from ``factory``, the customers whose grants changed."""

    @event.listens_for(factory, "after_flush")
    def _collect(session: Session, _context: Any) -> None:
        changed: set[str] | None = None
        for obj in chain(session.new, session.dirty, session.deleted):
            if isinstance(obj, Grant):
                if changed is None:
                    changed = session.info.setdefault(_CHANGED_KEY, set())
                changed.add(obj.customer_id)

    @event.listens_for(factory, "after_commit")
    def _publish(session: Session) -> None:
        changed = session.info.pop(_CHANGED_KEY, None)
        if changed:
            publish(changed)

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(_CHANGED_KEY, None)
