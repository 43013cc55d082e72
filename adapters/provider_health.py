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

import redis

from engine.backoff import backoff_ms


@dataclass
class ProviderHealth:
    client: redis.Redis
    name: str = "revenuecat"
    min_reads: int = 4  # a group smaller than this says too little to hold everyone
    base_ms: int = 5_000
    cap_ms: int = 600_000
    jitter: Callable[[], float] = field(default=random.random)

    def __post_init__(self) -> None:
        self._level_key = f"provider-health:{self.name}:failing-groups"
        self._held_key = f"provider-health:{self.name}:held"

    def record(self, *, ok: int, failed: int) -> float:
        """Report a group of reads (``failed``: 5xx or unreachable). When at least half failed,
        the provider is held for a backoff that grows with each such group in a row; a good
        group lifts it. The seconds now held (0.0: not held)."""
        if ok + failed < self.min_reads:
            return self.held_for_s()
        if failed * 2 < ok + failed:
            self.client.delete(self._level_key, self._held_key)
            return 0.0
        level = int(self.client.incr(self._level_key))
        self.client.pexpire(self._level_key, self.cap_ms * 4)
        delay = backoff_ms(level, base_ms=self.base_ms, cap_ms=self.cap_ms, jitter=self.jitter())
        self.client.set(self._held_key, level, px=delay)
        return delay / 1000.0

    def held_for_s(self) -> float:
        """How much longer the provider is held (0.0: reads may go)."""
        remaining = int(self.client.pttl(self._held_key))
        return max(0.0, remaining / 1000.0)
