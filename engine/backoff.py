"""How long to wait before trying again: the one backoff rule (inbox retries, provider reads
that failed, LMS outbox rows)."""

from __future__ import annotations


def backoff_ms(attempts: int, *, base_ms: int, cap_ms: int, jitter: float, floor_ms: int = 0) -> int:
    """The delay before the next try after ``attempts`` failed ones (1 for the first failure).

    Exponential from ``base_ms``, capped at ``cap_ms``, with "equal jitter" (half of it fixed,
    half random; ``jitter`` in [0, 1)): failures of one outage do not all come back in the same
    instant, and a retry never comes at once. Never below ``floor_ms`` (a provider's own
    Retry-After), even past the cap: the provider knows better.
    """
    ceiling = min(cap_ms, base_ms * (1 << max(0, min(attempts - 1, 40))))
    half = ceiling // 2
    return max(floor_ms, half + int(jitter * (ceiling - half)))
