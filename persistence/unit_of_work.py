"""The unit of work: one transaction yielding the LedgerStore port over it; the caller of the
engine owns the transaction (convention 3)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from persistence.ledger_store import SqlLedgerStore


class _unit_of_work:
    """Context manager: one transaction, yielding the LedgerStore port over it; committed on
    success unless ``commit`` is False (dry runs), rolled back otherwise."""

    def __init__(self, factory: sessionmaker[Session], commit: bool = True, bind: Connection | None = None):
        self.factory = factory
        self.commit = commit
        self.bind = bind

    def __enter__(self) -> SqlLedgerStore:
        self.session = self.factory() if self.bind is None else self.factory(bind=self.bind)
        self.session.begin()
        return SqlLedgerStore(self.session)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.commit:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()


def unit_of_work(
    factory: sessionmaker[Session], *, commit: bool = True, bind: Connection | None = None
) -> Callable[[], _unit_of_work]:
    """A unit-of-work factory for reconcile (``commit=False``: a dry run that changes nothing).

    ``bind``: run every unit of work on this one connection (each still its own transaction),
    as a sweep batch does, instead of checking one out of the pool, and pinging it, each time.
    """
    return lambda: _unit_of_work(factory, commit, bind)
