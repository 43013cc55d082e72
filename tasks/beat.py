"""SingleBeatScheduler: only one beat schedules at a time, however many are started.

A lock in Redis (SET NX PX, extended on every tick by its owner only) decides which beat
publishes; the others wait and take over within ``beat_lock_ttl_s`` if the owner dies.

The schedule is kept in memory, not in a file: beat needs no writable folder (a fresh clone
has no instance/, some platforms have no writable disk at all). A beat that restarts runs
each job once at start; every job is idempotent and runs every minute or so anyway.
"""

from __future__ import annotations

import logging
import socket
import uuid

import redis
from celery.beat import Scheduler

from adapters.embedded_redis import redis_url

log = logging.getLogger(__name__)

LOCK_KEY = "beat:lock"

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class BeatLock:
    def __init__(self, client: redis.Redis, ttl_s: int, key: str = LOCK_KEY):
        self.client, self.ttl_ms, self.key = client, ttl_s * 1000, key
        self.token = f"{socket.gethostname()}:{uuid.uuid4().hex}"
        self._extend = client.register_script(_EXTEND)

    def hold(self) -> bool:
        """Take the lock or extend it if we own it; False when another beat owns it."""
        if self._extend(keys=[self.key], args=[self.token, self.ttl_ms]) == 1:
            return True
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        if self.client.get(self.key) == self.token.encode():
            self.client.delete(self.key)


class SingleBeatScheduler(Scheduler):
    """An in-memory Scheduler that ticks only while it holds the beat lock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = self.app.conf.engine_settings
        self._lock = BeatLock(redis.Redis.from_url(redis_url(settings)), settings.beat_lock_ttl_s)
        self._owner = False
        self._wait_s = max(1.0, settings.beat_lock_ttl_s / 3)

    def tick(self, *args, **kwargs) -> float:
        try:
            owner = self._lock.hold()
        except redis.RedisError:
            log.warning("beat lock unreachable; not scheduling", exc_info=True)
            owner = False
        if owner != self._owner:
            log.info("beat lock %s", "acquired: scheduling" if owner else "held elsewhere: standing by")
            self._owner = owner
        if not owner:
            return self._wait_s
        # Never sleep past a third of the lock's life, or the lock could lapse while we own it.
        return min(super().tick(*args, **kwargs), self._wait_s)

    def close(self) -> None:
        try:
            if self._owner:
                self._lock.release()
        finally:
            super().close()
