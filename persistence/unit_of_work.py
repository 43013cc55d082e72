"""The unit of work: one transaction and the stores over it (engine.ports.UnitOfWork). The caller
of the engine owns the transaction (convention 3): committed when the block ends without error
(unless it is a dry run), rolled back otherwise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from engine.plan import Action
from engine.ports import Cause
from persistence.change_notes import note_access_changed
from persistence.ledger_store import SqlLedgerStore
from persistence.outbox import enqueue_grant_changes


class SqlSinkOutbox:
    """The sink outbox (engine.ports.SinkOutbox) in the session's transaction."""

    def __init__(self, session: Session):
        self.session = session

    def record(self, customer_id: str, actions: Sequence[Action], cause: Cause, now_ms: int) -> int:
        return enqueue_grant_changes(self.session, customer_id, actions, cause, now_ms)


class SessionAccessChanges:
    """Access changes (engine.ports.AccessChanges) published once the session commits."""

    def __init__(self, session: Session):
        self.session = session

    def note(self, customer_id: str) -> None:
        note_access_changed(self.session, customer_id)


class SqlUnitOfWork:
    """One session, one transaction; ``ledger``, ``outbox`` and ``changes`` work inside it."""

    def __init__(self, factory: sessionmaker[Session], *, commit: bool = True, bind: Connection | None = None):
        self.factory, self.commit, self.bind = factory, commit, bind

    def __enter__(self) -> SqlUnitOfWork:
        self.session = self.factory() if self.bind is None else self.factory(bind=self.bind)
        self.session.begin()
        self.ledger = SqlLedgerStore(self.session)
        self.outbox = SqlSinkOutbox(self.session)
        self.changes = SessionAccessChanges(self.session)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None and self.commit:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()


def unit_of_work(
    factory: sessionmaker[Session], *, commit: bool = True, bind: Connection | None = None
) -> Callable[[], SqlUnitOfWork]:
    """A unit-of-work factory for reconcile (``commit=False``: a dry run that changes nothing).

    ``bind``: run every unit of work on this one connection (each still its own transaction),
    as a sweep batch does, instead of checking one out of the pool, and pinging it, each time.
    """
    return lambda: SqlUnitOfWork(factory, commit=commit, bind=bind)
