"""RateBudget: one provider request budget in Redis shared by every worker process.

A sliding one-minute window (a sorted set of request times, trimmed and counted atomically in a
Lua script on Redis's own clock), so that the provider never sees more than ``per_minute``
requests in any 60 s window, measured however it likes. Priorities: event processing and client
syncs may use the whole window; the sweep leaves ``reserve`` requests of every window to them.
A 429 with ``Retry-After`` pauses the whole budget for that long, for every process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis

from engine.errors import TransientError

Priority = Literal["event", "sync", "sweep"]

_TAKE = """
local window_key, pause_key = KEYS[1], KEYS[2]
local limit, window_ms, member, guard_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local wanted = tonumber(ARGV[5] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused_until = tonumber(redis.call('GET', pause_key) or '0')
if paused_until > now then
  return {0, paused_until - now}
end
-- A slot is reusable a little after it leaves the window: arrival times at the provider
-- jitter by milliseconds, and the provider counts arrivals, not our grants.
redis.call('ZREMRANGEBYSCORE', window_key, '-inf', now - window_ms - guard_ms)
local used = redis.call('ZCARD', window_key)
if used < limit then
  -- up to ``wanted`` slots at once (a sweep batch), as many as the window has free
  local granted = math.min(wanted, limit - used)
  local scored = {}
  for i = 1, granted do
    scored[2 * i - 1] = now
    scored[2 * i] = member .. ':' .. i
  end
  redis.call('ZADD', window_key, unpack(scored))
  redis.call('PEXPIRE', window_key, window_ms * 2)
  return {granted, 0}
end
-- Full: the earliest slot frees when the oldest request of the window leaves it.
local rank = used - limit
local oldest = redis.call('ZRANGE', window_key, rank, rank, 'WITHSCORES')
local wait = window_ms
if oldest[2] then wait = math.max(1, tonumber(oldest[2]) + window_ms + guard_ms - now) end
return {0, wait}
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
"""


MAX_BATCH_TAKE = 1000


class BudgetExhausted(TransientError):
    """No request may be sent now; ``retry_after_s`` says when one may."""


@dataclass
class RateBudget:
    client: redis.Redis
    per_minute: int
    name: str = "revenuecat"
    window_ms: int = 60_000
    # Requests of every window the sweep leaves to events and client syncs (small: unused
    # reserve is budget wasted when no event comes).
    sweep_reserve_fraction: float = 0.03
    guard_ms: int = 500

    def __post_init__(self) -> None:
        self._take = self.client.register_script(_TAKE)
        self._pause = self.client.register_script(_PAUSE)
        self._keys = [f"budget:{self.name}:window", f"budget:{self.name}:paused"]

    def limit_for(self, priority: Priority) -> int:
        if priority == "sweep":
            reserve = max(1, int(self.per_minute * self.sweep_reserve_fraction)) if self.per_minute > 1 else 0
            return max(1, self.per_minute - reserve)
        return self.per_minute

    def try_take(self, priority: Priority) -> float:
        """Take one request slot: 0.0 when taken, else the seconds to wait before trying again."""
        granted, wait = self.try_take_up_to(priority, 1)
        return 0.0 if granted else wait

    def try_take_up_to(self, priority: Priority, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` slots in one round trip: (slots taken, seconds to wait when none)."""
        granted, wait_ms = self._take(
            keys=self._keys,
            # at most MAX_BATCH_TAKE per call: Lua's unpack() has a stack limit
            args=[
                self.limit_for(priority),
                self.window_ms,
                uuid.uuid4().hex,
                self.guard_ms,
                min(max(1, wanted), MAX_BATCH_TAKE),
            ],
        )
        return int(granted), int(wait_ms) / 1000.0

    def acquire(self, priority: Priority, *, max_wait_s: float) -> None:
        """Block up to ``max_wait_s`` for a slot; BudgetExhausted (transient) if none came."""
        self.acquire_up_to(priority, 1, max_wait_s=max_wait_s)

    def acquire_up_to(self, priority: Priority, wanted: int, *, max_wait_s: float) -> int:
        """Block up to ``max_wait_s`` until at least one slot is free, then take up to ``wanted``
        of them: the number taken (each must be spent on a request sent now, so that the
        request arrives within the guard of the time its slot records). BudgetExhausted
        (transient) if none came."""
        deadline = time.monotonic() + max_wait_s
        while True:
            granted, wait = self.try_take_up_to(priority, wanted)
            if granted:
                return granted
            remaining = deadline - time.monotonic()
            if remaining <= 0 or wait > remaining:
                raise BudgetExhausted(f"provider budget of {self.per_minute}/min in use", retry_after_s=wait)
            time.sleep(min(wait, remaining))

    def pause(self, seconds: float) -> None:
        """Stop every process from calling the provider for ``seconds`` (a 429's Retry-After)."""
        self._pause(keys=[self._keys[1]], args=[max(1, int(seconds * 1000))])

    def resume(self) -> None:
        """Lift a pause (an operator who knows the provider is healthy again)."""
        self.client.delete(self._keys[1])

    def paused_for_s(self) -> float:
        until = int(self.client.get(self._keys[1]) or 0)
        return max(0.0, (until - self._now_ms()) / 1000.0)

    def used_in_window(self) -> int:
        return int(self.client.zcount(self._keys[0], f"({self._now_ms() - self.window_ms}", "+inf"))

    def _now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000


class BudgetedProvider:
    """A SubscriberSource that spends the shared budget before every provider call."""

    def __init__(self, provider: Any, budget: RateBudget, priority: Priority, *, max_wait_s: float):
        self.provider, self.budget, self.priority, self.max_wait_s = provider, budget, priority, max_wait_s

    def get_subscriber(self, app_user_id: str) -> Mapping[str, Any]:
        return self._spend(self.provider.get_subscriber, app_user_id)

    def post_receipt(self, platform: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        return self._spend(self.provider.post_receipt, platform, payload)

    def reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` slots for requests about to be sent at once (a sweep batch):
        the number taken, at least one; BudgetExhausted if none came within ``max_wait_s``.
        Spend each on ``get_subscriber_reserved`` straight away."""
        return self.budget.acquire_up_to(self.priority, wanted, max_wait_s=self.max_wait_s)

    def try_reserve(self, wanted: int) -> int:
        """``reserve`` without waiting: the slots free now (maybe none)."""
        granted, _ = self.budget.try_take_up_to(self.priority, wanted)
        return granted

    def get_subscriber_reserved(self, app_user_id: str) -> Mapping[str, Any]:
        """``get_subscriber`` on a slot already taken with ``reserve``."""
        return self._call(self.provider.get_subscriber, app_user_id)

    def _spend(self, call: Any, *args: Any) -> Mapping[str, Any]:
        self.budget.acquire(self.priority, max_wait_s=self.max_wait_s)
        return self._call(call, *args)

    def _call(self, call: Any, *args: Any) -> Mapping[str, Any]:
        try:
            return call(*args)
        except TransientError as exc:
            if exc.status == 429:
                self.budget.pause(exc.retry_after_s if exc.retry_after_s is not None else 1.0)
            raise
