"""ProviderHealth: a provider-wide backoff shared by every process (in Redis), for when most
reads fail with 5xx or time out. A per-customer backoff alone would still spend the whole
budget asking an unwell provider about each customer in turn; this holds the sweep's reads
for a while instead, longer each time the provider is found failing, until reads succeed.
429s are not counted here: the rate budget pauses on them (adapters/rate_budget.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis

from engine.backoff import backoff_ms


@dataclass
class ProviderHealth:
    """Reads' outcomes from every process, counted over a short window in Redis (the sweep sends
    a few reads at a time: one group alone says too little)."""

    client: redis.Redis
    name: str = "revenuecat"
    min_reads: int = 4  # fewer outcomes in the window say too little to hold everyone
    window_s: int = 30
    base_ms: int = 5_000
    cap_ms: int = 600_000
    jitter: Callable[[], float] = field(default=random.random)

    def __post_init__(self) -> None:
        self._window_key = f"provider-health:{self.name}:window"
        self._level_key = f"provider-health:{self.name}:failing-windows"
        self._held_key = f"provider-health:{self.name}:held"

    def record(self, *, ok: int, failed: int) -> float:
        """Report reads (``failed``: 5xx or unreachable). When at least half of the window's reads
        failed, the provider is held for a backoff that grows with each such window in a row; a
        window of mostly good reads lifts it. The seconds now held (0.0: not held)."""
        if ok + failed == 0:
            return self.held_for_s()
        pipe = self.client.pipeline()
        pipe.hincrby(self._window_key, "ok", ok)
        pipe.hincrby(self._window_key, "failed", failed)
        total_ok, total_failed = pipe.execute()
        if int(total_ok) + int(total_failed) == ok + failed:  # a new window starts with these reads
            self.client.expire(self._window_key, self.window_s)
        if int(total_ok) + int(total_failed) < self.min_reads:
            return self.held_for_s()
        self.client.delete(self._window_key)  # the next decision needs fresh outcomes
        if int(total_failed) * 2 < int(total_ok) + int(total_failed):
            self.client.delete(self._level_key, self._held_key)
            return 0.0
        level = int(cast(int, self.client.incr(self._level_key)))
        self.client.pexpire(self._level_key, self.cap_ms * 4)
        delay = backoff_ms(level, base_ms=self.base_ms, cap_ms=self.cap_ms, jitter=self.jitter())
        self.client.set(self._held_key, level, px=delay)
        return delay / 1000.0

    def held_for_s(self) -> float:
        """How much longer the provider is held (0.0: reads may go)."""
        remaining = int(cast(int, self.client.pttl(self._held_key)))
        return max(0.0, remaining / 1000.0)
