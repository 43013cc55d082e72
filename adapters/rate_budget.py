"""RateBudget: one provider request budget in Redis shared by every worker process.

Requests are paced, not windowed. A GCRA (the generic cell rate algorithm: a token bucket kept
as one "theoretical arrival time") hands out slots evenly at the budget's rate with a small
burst allowance, so a provider that enforces the same nominal rate as a token bucket never
refuses one (a sliding window let a whole minute's requests go out in the same second). The
burst and an arrival-jitter guard are taken out of the paced rate, so no 60 s window ever holds
more than ``per_minute`` either, for a provider that counts per minute. The decision is one Lua
script run atomically on Redis's clock, shared by every process.

Who gets a slot. Each priority has a guaranteed share of the rate (its lane: a GCRA of its own
at ``share`` of the rate) and may borrow beyond it only while the budget keeps headroom for the
priorities above it:

* ``event`` (webhook processing): half the rate guaranteed, first to borrow;
* ``sync`` (client validate, sync, restore): a fifth, borrows after events, so a flood of
  client calls can never starve event processing;
* ``sweep``: the rest, borrows after syncs;
* ``discovery`` (paging through the provider's customer list): ``discovery_share``, borrows
  last (only from a budget nobody else is using).

A request within its lane needs only the global pace; borrowers stop short of it by their
priority's headroom, so lanes are served first and a higher priority always finds a slot
before a lower one. Every grant advances the global pace, whatever the lane: the provider's
bound holds for any mix.

A 429 pauses the whole budget, for every process, for the provider's ``backoff_ms`` /
``Retry-After``. The provider's ``RevenueCat-Rate-Limit-Current-Usage`` / ``-Current-Limit``
headers are followed (``note_provider_usage``): a lower limit than ours is adopted, and
requests the provider counted that we did not send (another user of the same key) are taken
out of our rate, for one minute after each reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from engine.errors import TransientError

Priority = Literal["event", "sync", "sweep", "discovery"]
PRIORITIES: tuple[Priority, ...] = ("event", "sync", "sweep", "discovery")  # highest first

# The Lua decision. KEYS: pace (the global theoretical arrival time), paused (until when),
# lanes (hash: priority -> its lane's arrival time), counts (hash: second -> slots granted),
# provider (hash: the provider's limit and the others' usage, and until when they hold), taken
# (hash: priority -> slots granted since the budget was made: what each path spends).
_TAKE = """
local pace_key, pause_key, lanes_key, counts_key, provider_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local taken_key = KEYS[6]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local priority, wanted = ARGV[2], tonumber(ARGV[3])
local per_minute, burst, period_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local share, level = tonumber(ARGV[7]), tonumber(ARGV[8])

local paused_until = tonumber(redis.call('GET', pause_key) or '0')
if paused_until > now then
  return {0, paused_until - now}
end
-- What the provider's own headers said, while fresh: its limit, and the requests it counted
-- that were not ours.
local provider = redis.call('HMGET', provider_key, 'limit', 'others', 'until')
if provider[3] and tonumber(provider[3]) > now then
  per_minute = math.min(per_minute, tonumber(provider[1])) - tonumber(provider[2])
end
if per_minute < 1 then per_minute = 1 end
if burst > per_minute then burst = per_minute end
-- Emission interval: the burst comes out of the minute, and the minute is stretched by the
-- guard, so that any 60 s window (even with arrival jitter up to the guard) holds per_minute.
local interval = period_ms / (per_minute - burst + 1)
local tolerance = (burst - 1) * interval
-- Borrowers leave at least one slot to lane requests; lower priorities leave more.
local borrow_at = math.max(0, tolerance - interval) * (1 - level)
local lane_interval = 0
if share > 0 then lane_interval = interval / share end

local pace = tonumber(redis.call('GET', pace_key) or '0')
local lane = tonumber(redis.call('HGET', lanes_key, priority) or '0')
local granted, wait = 0, 0
for _ = 1, wanted do
  local ahead = math.max(pace, now) - now
  local lane_at = ahead - tolerance
  if lane_interval > 0 then
    lane_at = math.max(lane_at, math.max(lane, now) - now - lane_interval)
  else
    lane_at = math.huge
  end
  if lane_at <= 0 then
    lane = math.max(lane, now) + lane_interval
  elseif ahead > borrow_at then
    wait = math.min(lane_at, ahead - borrow_at)
    break
  end
  pace = math.max(pace, now) + interval
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', pace_key, pace, 'PX', math.ceil(pace - now) + period_ms)
  redis.call('HSET', lanes_key, priority, lane)
  redis.call('PEXPIRE', lanes_key, math.ceil(math.max(lane - now, 0)) + 10 * period_ms)
  local second = math.floor(now / 1000)
  redis.call('HINCRBY', counts_key, second, granted)
  redis.call('HINCRBY', taken_key, priority, granted)
  local pruned = tonumber(redis.call('HGET', counts_key, 'pruned') or '0')
  if second - pruned >= 60 then
    for _, name in ipairs(redis.call('HKEYS', counts_key)) do
      if name ~= 'pruned' and tonumber(name) <= second - 60 then redis.call('HDEL', counts_key, name) end
    end
    redis.call('HSET', counts_key, 'pruned', second)
  end
  redis.call('PEXPIRE', counts_key, 2 * period_ms)
  return {granted, 0}
end
return {0, math.max(1, math.ceil(wait))}
"""

_PAUSE = """
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
"""

# The provider's figures: Current-Usage counts the requests of its current one-minute period;
# ours are the slots granted over the last 60 s (at least as many, when nobody else calls).
_NOTE = """
local counts_key, provider_key = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local usage, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local second = math.floor(now / 1000)
local ours = 0
local counts = redis.call('HGETALL', counts_key)
for i = 1, #counts, 2 do
  if counts[i] ~= 'pruned' and tonumber(counts[i]) > second - 60 then ours = ours + tonumber(counts[i + 1]) end
end
local others = math.max(0, usage - ours)
redis.call('HSET', provider_key, 'limit', limit, 'others', others, 'until', now + 60000)
redis.call('PEXPIRE', provider_key, 60000)
return others
"""

MAX_BATCH_TAKE = 1000


class BudgetExhausted(TransientError):
    """No request may be sent now; ``retry_after_s`` says when one may."""


@dataclass(frozen=True)
class Share:
    """A priority's guaranteed fraction of the rate, and how late it may borrow beyond it
    (``level`` 0: as soon as a lane request would; 1: only from a budget nobody is using)."""

    guaranteed: float
    level: float


def default_shares(discovery_share: float = 0.1) -> dict[Priority, Share]:
    """Event 1/2, sync 1/5, discovery ``discovery_share``, the sweep the rest (they sum to 1)."""
    if not 0.0 <= discovery_share <= 0.3:
        raise ValueError("the discovery share must be between 0 and 0.3")
    return {
        "event": Share(0.5, 0.0),
        "sync": Share(0.2, 1 / 3),
        "sweep": Share(round(0.3 - discovery_share, 6), 2 / 3),
        "discovery": Share(discovery_share, 1.0),
    }


def default_burst(per_minute: int) -> int:
    """Slots that may go out back to back: half a second of the rate, at most 4 (priorities need
    room to differ), at least 1; small rates get no burst, as it would come out of their minute."""
    return max(1, min(4, per_minute // 60))


@dataclass
class RateBudget:
    client: redis.Redis
    per_minute: int
    name: str = "revenuecat"
    discovery_share: float = 0.1
    # Requests that may go out at once; 0: ``default_burst(per_minute)``.
    burst: int = 0
    # Arrival jitter absorbed: the paced minute is this much longer than 60 s.
    guard_ms: int = 500
    # Epoch ms; None: Redis's own clock (tests pass a fake one to drive the decision).
    clock: Callable[[], int] | None = None
    shares: Mapping[Priority, Share] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._take = self.client.register_script(_TAKE)
        self._pause = self.client.register_script(_PAUSE)
        self._note = self.client.register_script(_NOTE)
        if not self.shares:
            self.shares = default_shares(self.discovery_share)
        if self.burst <= 0:
            self.burst = default_burst(self.per_minute)
        prefix = f"budget:{self.name}"
        self._keys = [
            f"{prefix}:pace",
            f"{prefix}:paused",
            f"{prefix}:lanes",
            f"{prefix}:counts",
            f"{prefix}:provider",
            f"{prefix}:taken",
        ]

    @property
    def interval_ms(self) -> float:
        """Time between two paced slots at the configured rate (the provider's figures aside)."""
        burst = min(self.burst, self.per_minute)
        return (60_000 + self.guard_ms) / (self.per_minute - burst + 1)

    def limit_for(self, priority: Priority) -> int:
        """Requests per minute ``priority`` may send when it has the budget to itself (every
        priority may borrow the others' unused lanes)."""
        return max(1, int(60_000 / self.interval_ms))

    def try_take(self, priority: Priority) -> float:
        """Take one request slot: 0.0 when taken, else the seconds to wait before trying again."""
        granted, wait = self.try_take_up_to(priority, 1)
        return 0.0 if granted else wait

    def try_take_up_to(self, priority: Priority, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` slots in one round trip: (slots taken, seconds to wait when none)."""
        share = self.shares[priority]
        granted, wait_ms = self._take(
            keys=self._keys,
            # at most MAX_BATCH_TAKE per call, like the batches that ask
            args=[
                self._clock_arg(),
                priority,
                min(max(1, wanted), MAX_BATCH_TAKE),
                self.per_minute,
                self.burst,
                60_000 + self.guard_ms,
                share.guaranteed,
                share.level,
            ],
        )
        return int(granted), int(wait_ms) / 1000.0

    def acquire(self, priority: Priority, *, max_wait_s: float) -> None:
        """Block up to ``max_wait_s`` for a slot; BudgetExhausted (transient) if none came."""
        self.acquire_up_to(priority, 1, max_wait_s=max_wait_s)

    def acquire_up_to(self, priority: Priority, wanted: int, *, max_wait_s: float) -> int:
        """Block up to ``max_wait_s`` until at least one slot is free, then take up to ``wanted``
        of them: the number taken (each must be spent on a request sent now: the pace counted
        them as sent). BudgetExhausted (transient) if none came."""
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
        """Stop every process from calling the provider for ``seconds`` (a 429's backoff)."""
        self._pause(keys=[self._keys[1]], args=[max(1, int(seconds * 1000)), self._clock_arg()])

    def resume(self) -> None:
        """Lift a pause (an operator who knows the provider is healthy again)."""
        self.client.delete(self._keys[1])

    def paused_for_s(self) -> float:
        until = int(cast(Any, self.client.get(self._keys[1])) or 0)
        return max(0.0, (until - self._now_ms()) / 1000.0)

    def note_provider_usage(self, usage: int, limit: int) -> int:
        """Follow the provider's rate-limit headers for the next minute: pace at most at
        ``limit``, less the requests it counted that were not ours. Returns those others."""
        if usage < 0 or limit < 1:
            return 0
        return int(self._note(keys=[self._keys[3], self._keys[4]], args=[self._clock_arg(), usage, limit]))

    def used_in_window(self) -> int:
        """Slots granted over the last 60 s, by every process."""
        second = self._now_ms() // 1000
        # redis-py types a synchronous client's replies as ``Awaitable | reply``
        counts = cast("dict[bytes | str, bytes | str]", self.client.hgetall(self._keys[3]))
        seconds = {(s.decode() if isinstance(s, bytes) else s): int(n) for s, n in counts.items()}
        return sum(n for s, n in seconds.items() if s != "pruned" and int(s) > second - 60)

    def taken_by_priority(self) -> dict[str, int]:
        """Slots granted to each priority since the budget's keys were made, by every process:
        the provider requests each path sent (every slot taken is spent on one request)."""
        taken: Mapping[Any, Any] = self.client.hgetall(self._keys[5])  # type: ignore[assignment]
        return {(p.decode() if isinstance(p, bytes) else str(p)): int(n) for p, n in taken.items()}

    def _clock_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock()))

    def _now_ms(self) -> int:
        if self.clock is not None:
            return int(self.clock())
        seconds, micros = cast(tuple[int, int], self.client.time())
        return int(seconds) * 1000 + int(micros) // 1000


class BudgetedProvider:
    """A SubscriberSource that spends the shared budget before every provider call.

    It is also the request pacer of the REST v2 client (``RevenueCatV2Client.paced``), which
    sends several requests per read: a slot before each, the provider's rate-limit headers
    after each, and a pause of the whole budget on a 429.
    """

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

    # The request pacer protocol of adapters.revenuecat_v2.

    def before_request(self) -> None:
        """One slot for a request about to be sent; BudgetExhausted if none came in time."""
        self.budget.acquire(self.priority, max_wait_s=self.max_wait_s)

    def after_response(self, usage: int | None, limit: int | None) -> None:
        """The provider's rate-limit headers of the answer, when it sent them."""
        if usage is not None and limit is not None:
            self.budget.note_provider_usage(usage, limit)

    def throttled(self, retry_after_s: float | None) -> None:
        """The provider answered 429: every process waits."""
        self.budget.pause(retry_after_s if retry_after_s is not None else 1.0)

    def _spend(self, call: Any, *args: Any) -> Mapping[str, Any]:
        self.budget.acquire(self.priority, max_wait_s=self.max_wait_s)
        return self._call(call, *args)

    def _call(self, call: Any, *args: Any) -> Mapping[str, Any]:
        try:
            return call(*args)
        except TransientError as exc:
            if exc.status == 429:
                self.throttled(exc.retry_after_s)
            raise
