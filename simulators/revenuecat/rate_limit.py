"""The simulated provider's rate limits (reference/revenuecat.md §5).

REST v2 limits requests per domain: Customer Information 480/min, Project Configuration
60/min. Every successful answer carries ``RevenueCat-Rate-Limit-Current-Usage`` (requests of the
current one-minute period, this one included) and ``-Current-Limit`` (the domain's limit); a
refused one is a 429 with ``Retry-After`` (seconds) and ``backoff_ms``.

How RevenueCat enforces the limit is not documented. Here it is a token bucket at the nominal
rate holding ``burst`` requests (one second's worth by default): the strictest reading that is
still fair, so a client that bursts is refused and a client that paces never is. Enforcement is
off unless configured; the headers are always sent.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CUSTOMER_INFORMATION = "customer_information"
PROJECT_CONFIGURATION = "project_configuration"
NOMINAL_PER_MINUTE = {CUSTOMER_INFORMATION: 480, PROJECT_CONFIGURATION: 60}


def default_burst(per_minute: int) -> int:
    """One second of the rate, at least 8 requests."""
    return max(8, per_minute // 60)


class TokenBucket:
    """``per_minute`` requests a minute, ``burst`` at most back to back. ``clock`` is in seconds."""

    def __init__(self, per_minute: int, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.burst = default_burst(per_minute) if burst is None else max(1, int(burst))
        self.clock = clock
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Spend one token: 0.0 when there was one, else the seconds until there will be."""
        with self._lock:
            now = self.clock()
            rate = self.per_minute / 60.0
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / rate


@dataclass(frozen=True)
class Admission:
    """What the limiter decided for one request: refused when ``retry_after_s`` is set."""

    usage: int
    limit: int
    retry_after_s: float | None = None


class DomainLimits:
    """Usage counting (fixed one-minute periods, as the headers describe) for every domain, and
    a token bucket for the domains whose limit is enforced. Thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._limits: dict[str, int] = dict(NOMINAL_PER_MINUTE)
        self._buckets: dict[str, TokenBucket] = {}
        self._periods: dict[str, tuple[int, int]] = {}  # domain -> (minute, requests counted)
        self.refused: dict[str, int] = {}

    def enforce(self, domain: str, per_minute: int | None, burst: int | None = None) -> None:
        """Refuse requests past ``per_minute`` (a token bucket of ``burst``); None: count only."""
        with self._lock:
            if per_minute is None:
                self._buckets.pop(domain, None)
                self._limits[domain] = NOMINAL_PER_MINUTE.get(domain, 480)
                return
            self._limits[domain] = per_minute
            self._buckets[domain] = TokenBucket(per_minute, burst, clock=self.clock)

    def admit(self, domain: str) -> Admission:
        """Count one request of ``domain``; refused (429) when its bucket is empty."""
        with self._lock:
            bucket = self._buckets.get(domain)
            limit = self._limits.get(domain, 480)
            minute = math.floor(self.clock() / 60.0)
            period, used = self._periods.get(domain, (minute, 0))
            if period != minute:
                used = 0
            wait = bucket.take() if bucket is not None else 0.0
            if wait > 0:
                self.refused[domain] = self.refused.get(domain, 0) + 1
                return Admission(used, limit, retry_after_s=wait)
            self._periods[domain] = (minute, used + 1)
            return Admission(used + 1, limit)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "enforced": {d: [b.per_minute, b.burst] for d, b in self._buckets.items()},
                "refused": dict(self.refused),
            }
