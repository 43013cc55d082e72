"""The database connections a sweep batch writes one group of customers on."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from engine.errors import TerminalError, TransientError

log = logging.getLogger(__name__)

# Threads a sweep batch reconciles changed customers on, each with its own connection, so that
# one customer's round trips and commit overlap another's CPU work (two: the work is mostly
# Python, which runs one thread at a time).
RECONCILE_OVERLAP = 2


class GroupConnections:
    """The database connections one group of a sweep batch is written on: checked out (and
    pinged) once per group, not per customer, and not held across the budget's waits. Each
    customer still gets its own transaction on one of them. On PostgreSQL there are
    ``RECONCILE_OVERLAP`` of them, one per reconcile thread; SQLite takes one writer at a time,
    so it gets one. A connection that saw an unexpected error is given back
    to the pool (which resets or discards it) and a fresh one is checked out in its place."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        self.size = RECONCILE_OVERLAP if db.dialect.name == "postgresql" else 1
        self.free: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.open: list[Connection] = []
        for _ in range(self.size):
            self.free.put(None)  # checked out on first use

    def __enter__(self) -> GroupConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            connections, self.open = self.open, []
        for connection in connections:
            connection.close()

    def _checkout(self) -> Connection:
        connection = self.db.connect()
        with self.lock:
            self.open.append(connection)
        return connection

    def _discard(self, connection: Connection) -> None:
        with self.lock:
            if connection in self.open:
                self.open.remove(connection)
        try:
            connection.close()
        except Exception:
            log.debug("closing a failed batch connection", exc_info=True)

    @contextmanager
    def one(self) -> Iterator[Connection]:
        connection = self.free.get()
        try:
            if connection is None:
                connection = self._checkout()
            yield connection
        except (TransientError, TerminalError):
            self.free.put(connection)  # the engine's own errors leave the connection clean
            raise
        except BaseException:
            if connection is not None:
                self._discard(connection)
            self.free.put(None)
            raise
        else:
            self.free.put(connection)
