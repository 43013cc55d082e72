"""Access-change notifications: committed grant changes are published on Redis, and long-polls
(``GET /v1/users/<id>/access?wait=N``) in any web process wake up on them.

Publishing: ``install_change_notifications`` hooks the session factory. The customers whose
grants a transaction changed are noted in the session (``note_access_changed``, which
``SqlLedgerStore.apply`` calls for the grants it writes with Core statements, and a flush hook
for ``Grant`` rows written as ORM objects); after the transaction commits, their ids go out in
one ``PUBLISH`` (nothing is published for a rolled-back transaction). Every unit of work that
changes grants (webhook processing, degraded mode, sweep, expiry, client sync) goes through
``apply``, so every one notifies.

Waiting: each process holds one Redis subscription (``AccessWatch``, a background thread, a
greenlet under gevent) that wakes the waiters registered for a customer id. A waiting client
costs an Event, not a thread, a worker or a Redis connection. Pub/sub is at-most-once, so a
waiter also re-reads the database every few seconds (at once when the subscription is down).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from itertools import chain
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

CHANNEL = "engine:access-changed"

RedisConnect = Callable[[], redis.Redis]
T = TypeVar("T")


def channel_for(client: redis.Redis) -> str:
    """The channel of this Redis database (pub/sub is server-wide; databases keep apart)."""
    return f"{CHANNEL}:{client.connection_pool.connection_kwargs.get('db', 0)}"


class AccessNotifier:
    """Publishes the ids of customers whose grants changed. Never raises: the change is
    committed already, and waiters re-read the database on their own anyway."""

    def __init__(self, connect: RedisConnect):
        self._connect = connect
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def publish(self, customer_ids: Iterable[str]) -> None:
        ids = sorted(set(customer_ids))
        if not ids:
            return
        try:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
            client.publish(channel_for(client), json.dumps(ids))
        except Exception:
            log.warning("could not publish access changes for %d customers", len(ids), exc_info=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AccessWatch:
    """One Redis subscription per process, fanning notifications out to local waiters."""

    def __init__(self, connect: RedisConnect, *, retry_s: float = 1.0):
        self._connect = connect
        self._retry_s = retry_s
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._stop = threading.Event()

    @property
    def healthy(self) -> bool:
        """Subscribed now: notifications published from here on reach the waiters."""
        return self._subscribed.is_set()

    @contextmanager
    def watch(self, key: str) -> Iterator[threading.Event]:
        """An Event set whenever ``key``'s access changes, for the duration of the block."""
        flag = threading.Event()
        with self._lock:
            self._waiters.setdefault(key, set()).add(flag)
            self._start()
        try:
            # The first waiter of a process waits (briefly) for the subscription, so that a
            # change committed right after its first read is not missed.
            self._subscribed.wait(1.0)
            yield flag
        finally:
            with self._lock:
                flags = self._waiters.get(key)
                if flags is not None:
                    flags.discard(flag)
                    if not flags:
                        del self._waiters[key]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(flags) for flags in self._waiters.values())

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=3)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="access-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self._connect()
                pubsub = client.pubsub()
                pubsub.subscribe(channel_for(client))
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except Exception:
                if not self._stop.is_set():
                    log.warning("access-change subscription lost; retrying in %.1fs", self._retry_s, exc_info=True)
                    self._wake_everyone()
            finally:
                self._subscribed.clear()
                if pubsub is not None:
                    with suppress(Exception):
                        pubsub.close()
            self._stop.wait(self._retry_s)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            ids = json.loads(data)
        except ValueError:
            return
        if not isinstance(ids, list):
            return
        with self._lock:
            for key in ids:
                for flag in self._waiters.get(str(key), ()):
                    flag.set()

    def _wake_everyone(self) -> None:
        # Waiters switch to polling while the subscription is down: wake them to re-read now.
        with self._lock:
            for flag in chain.from_iterable(self._waiters.values()):
                flag.set()


def wait_for_change(
    watch: AccessWatch,
    key: str,
    read: Callable[[], T],
    version_of: Callable[[T], str],
    *,
    baseline: str | None,
    wait_s: float,
    key_of: Callable[[T], str] | None = None,
    next_change_s: Callable[[T], float | None] = lambda _: None,
    recheck_s: float = 5.0,
    degraded_recheck_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Read, and until ``wait_s`` runs out, read again whenever ``key`` is notified, until the
    version differs from ``baseline`` (the first read's, when None). Returns the last read.

    ``key_of`` tells the key a read belongs to (an app user id resolves to its customer): when
    it differs from ``key``, that key is watched too and the value read again. ``next_change_s``
    tells how soon the value changes by itself (an access expiring): the waiter wakes then too.
    Without notifications it re-reads every ``recheck_s`` seconds (``degraded_recheck_s`` while
    the subscription is down).
    """
    deadline = clock() + wait_s
    with ExitStack() as stack:
        flag = stack.enter_context(watch.watch(key))
        current = read()  # after registering: a change committed from now on sets the flag
        if key_of is not None and key_of(current) != key:
            flag = stack.enter_context(watch.watch(key_of(current)))
            current = read()
        if baseline is None:
            baseline = version_of(current)
        while version_of(current) == baseline:
            remaining = deadline - clock()
            if remaining <= 0:
                break
            timeout = min(remaining, recheck_s if watch.healthy else degraded_recheck_s)
            by_itself = next_change_s(current)
            if by_itself is not None:
                timeout = min(timeout, max(0.0, by_itself) + 0.01)
            flag.wait(timeout)
            flag.clear()
            current = read()
    return current
