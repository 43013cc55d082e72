"""Group commit for the webhook intake: webhooks that arrive together are stored together.

Under the web's gevent workers (the Procfile's) one process serves many webhooks at once, and
each would pay for its own INSERT, commit and publish: round trips, a WAL flush, and the
switches into the gevent hub and back around each. Here a request hands its webhook to the
process's writer and waits; the writer takes everything waiting, stores it with one INSERT
(one commit), enqueues the new rows in one message (``inbox.process_group``), and only then
wakes each request, which answers 200. The order holds for every webhook: stored and committed, then
enqueued, then answered.

A quiet intake pays nothing: a webhook arriving while the writer is idle is written at once,
alone; one arriving while a batch is in flight waits for that batch's round trips and goes with
the next. Under load (the last batch held more than one webhook) the writer first lets the
process ``settle`` (under gevent: until the worker has nothing else to do, that is until every
request that has arrived has been read and handed over, a millisecond at most; web.intake), as
PostgreSQL's own commit_delay waits only when commit_siblings other transactions are active.
Without it, a worker's connections split into two groups taking turns, each batch half of them:
the requests of the batch just answered send their next webhooks while the other group is
being written. Settling merges the groups into larger batches (bench/intake.py prints the rows
stored per commit).

What one webhook could do to the others is bounded: a batch that fails for another reason than
the database being unreachable (a row the database refuses) is stored again row by row, so
only that webhook is refused. A batch that cannot be stored at all fails every request in it
(503: RevenueCat retries) and the writer goes on with the next. A broker error leaves the rows
waiting for the redrive and the requests are still answered 200, as without batching; the next
batches skip the broker for ``broker_pause_s`` so that a hanging broker cannot hold them all.

The writer is a thread; under gevent's monkey-patching (gunicorn's gevent worker patches
``threading``) a greenlet, and the locks and events below gevent's. With real threads it works
too, but the handoffs cost more than they save, so the web uses it only under gevent
(services.intake).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from persistence.inbox import Stored, store_webhook, store_webhooks

log = logging.getLogger(__name__)


class StoreTimeout(Exception):
    """The writer did not answer in time: the webhook may or may not be stored (a retry of it
    is then a duplicate, answered 200, enqueued once)."""


class _Waiting:
    __slots__ = ("body", "done", "error", "event_id", "event_type", "stored")

    def __init__(self, body: bytes, event_id: str, event_type: str):
        self.body = body
        self.event_id = event_id
        self.event_type = event_type
        self.done = threading.Event()
        self.stored: Stored | None = None
        self.error: BaseException | None = None


class GroupCommitter:
    """One per process (services.intake.WebhookIntake makes it).

    ``publish_group(ids)`` enqueues the new rows (one message); its errors are logged, never raised
    to the requests (the redrive re-enqueues rows left waiting). ``max_rows`` and ``max_bytes``
    bound a batch (the statement holds every body). ``settle()``, when given, is called before
    each batch that follows a batch of more than one webhook; it must return within a bounded
    time (the requests wait for it).
    """

    def __init__(
        self,
        engine: Engine,
        publish_group: Callable[[list[int]], None],
        *,
        max_rows: int = 64,
        max_bytes: int = 4 << 20,
        answer_timeout_s: float = 10.0,
        broker_pause_s: float = 2.0,
        settle: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self.publish_group = publish_group
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.answer_timeout_s = answer_timeout_s
        self.broker_pause_s = broker_pause_s
        self.settle = settle
        self._publish_paused_until = float("-inf")
        self._queue: deque[_Waiting] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._stopping = False
        # what the writer has done, for tests and the benchmark's notes
        self.batches = 0
        self.rows = 0

    def store(self, body: bytes, event_id: str, event_type: str) -> Stored:
        """Store a well-formed webhook and, when it is new and to be processed, enqueue its
        task; block until both are done. Raises the storage error (SQLAlchemy's) or
        ``StoreTimeout``."""
        waiting = _Waiting(body, event_id, event_type)
        with self._ready:
            if self._stopping:
                raise StoreTimeout("the intake is shutting down")
            self._queue.append(waiting)
            if self._writer is None or not self._writer.is_alive():  # first use, or the last one was killed
                self._writer = threading.Thread(target=self._run, name="intake-group-commit", daemon=True)
                self._writer.start()
            self._ready.notify()
        if not waiting.done.wait(self.answer_timeout_s):
            with self._ready:
                try:
                    self._queue.remove(waiting)  # never taken: certainly not stored
                    raise StoreTimeout(
                        f"webhook {event_id} not stored: the writer did not reach it within {self.answer_timeout_s} s"
                    )
                except ValueError:
                    pass  # in a batch being written: may be stored (a retry is then a duplicate)
            raise StoreTimeout(f"webhook {event_id} not answered within {self.answer_timeout_s} s")
        if waiting.error is not None:
            raise waiting.error
        assert waiting.stored is not None
        return waiting.stored

    @property
    def queued(self) -> int:
        """Webhooks waiting for the writer, not yet taken into a batch."""
        return len(self._queue)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is waiting, then stop the writer."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
            writer = self._writer
        if writer is not None:
            writer.join(timeout_s)

    # --- the writer -------------------------------------------------------------------------

    def _run(self) -> None:
        last_size = 0
        while True:
            if self.settle is not None and last_size > 1:
                self._settle()  # under load: let the webhooks on their way join the next batch
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                batch = self._take()
                last_size = len(batch)
            try:
                self._write(batch)
            except BaseException as exc:
                # killed (GreenletExit, a gevent Timeout, SystemExit): the requests get a
                # storage error they can answer 503 with, and the next webhook starts a writer
                error = exc if isinstance(exc, Exception) else StoreTimeout(f"the intake's writer stopped: {exc!r}")
                if not isinstance(exc, Exception):
                    with self._ready:
                        self._writer = None  # before any request is woken: the next one starts a writer
                for waiting in batch:
                    if not waiting.done.is_set():
                        waiting.error = error
                        waiting.done.set()
                if not isinstance(exc, Exception):
                    raise

    def _settle(self) -> None:
        if self.settle is None:
            return
        try:
            self.settle()
        except Exception:
            log.warning("intake group commit: settle failed", exc_info=True)
        except BaseException:
            # killed while no batch is taken: the webhooks queued meanwhile go to the writer
            # that the next store starts
            with self._ready:
                self._writer = None
            raise

    def _take(self) -> list[_Waiting]:
        batch = [self._queue.popleft()]
        size = len(batch[0].body)
        while self._queue and len(batch) < self.max_rows and size + len(self._queue[0].body) <= self.max_bytes:
            waiting = self._queue.popleft()
            size += len(waiting.body)
            batch.append(waiting)
        return batch

    def _write(self, batch: Sequence[_Waiting]) -> None:
        results: list[Stored | None]
        try:
            results = list(store_webhooks(self.engine, [(w.body, w.event_id, w.event_type) for w in batch]))
        except Exception as exc:
            if len(batch) == 1 or _unavailable(exc):
                raise  # every request in the batch answers 503 (RevenueCat retries)
            # One row the database (or the driver) refuses must not cost the others their
            # answer: alone, each gets what it would have got without batching.
            log.warning("intake batch of %d refused (%r); storing its webhooks one by one", len(batch), exc)
            results = [self._store_alone(w) for w in batch]
        self.batches += 1
        self.rows += len(batch)
        new_ids = [s.inbox_id for s in results if s is not None and s.enqueue and s.inbox_id is not None]
        if new_ids and time.monotonic() < self._publish_paused_until:
            log.warning("broker unavailable; inbox rows %s wait for redrive", new_ids)
        elif new_ids:
            try:
                self.publish_group(new_ids)
            except Exception:
                # One writer publishes for every request of the process: a broker that is down
                # or hanging would hold each batch for its connect/socket timeouts, and the
                # requests behind would time out (503) although their rows are stored. So
                # after a failure the next batches skip the broker for a moment; the redrive
                # enqueues their rows.
                self._publish_paused_until = time.monotonic() + self.broker_pause_s
                log.warning(
                    "broker unavailable; inbox rows %s wait for redrive (publishing paused %.0f s)",
                    new_ids,
                    self.broker_pause_s,
                    exc_info=True,
                )
        for waiting, stored in zip(batch, results, strict=False):
            if stored is not None:
                waiting.stored = stored
                waiting.done.set()

    def _store_alone(self, waiting: _Waiting) -> Stored | None:
        try:
            return store_webhook(self.engine, waiting.body, waiting.event_id, waiting.event_type)
        except Exception as exc:
            waiting.error = exc
            waiting.done.set()
            return None


def _unavailable(exc: Exception) -> bool:
    """The database itself cannot be used now (not one row refused): storing the rows one by
    one would only repeat the failure once per row."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError, PoolTimeout))
