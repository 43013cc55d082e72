"""Per-user limits of the client calls that read the provider (validate, sync).

A moving one-minute window per user and call in Redis (python-limits), so every web process
shares it: one user (one token, one app in a retry loop) gets 429 with Retry-After past
``USER_CALLS_PER_MINUTE`` calls, and the shared provider budget stays for everyone else.
The budget's isolation of event processing from client traffic is adapters/rate_budget.py's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)


class ClientLimits:
    """``retry_after_s(call, app_user_id)``: None while the user is within the limit, else how
    long until a call is allowed again. Redis trouble lets calls through (the provider budget,
    also in Redis, then answers for itself)."""

    def __init__(self, redis_client: Callable[[], Any], *, per_minute: int):
        self._redis_client = redis_client  # the process's client, taken on the first call
        self._item = RateLimitItemPerMinute(max(1, per_minute))

    @cached_property
    def _limiter(self) -> MovingWindowRateLimiter:
        pool = self._redis_client().connection_pool
        return MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=pool, key_prefix="client-limits"))

    @staticmethod
    def _user_key(app_user_id: str) -> str:
        # App user ids may hold anything, the key separator included: the key holds a digest.
        return hashlib.sha256(app_user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def retry_after_s(self, call: str, app_user_id: str) -> float | None:
        key = self._user_key(app_user_id)
        try:
            if self._limiter.hit(self._item, call, key):
                return None
            reset_at = self._limiter.get_window_stats(self._item, call, key).reset_time
        except redis.RedisError as exc:
            log.warning("per-user limit not checked (Redis): %s", exc.__class__.__name__)
            return None
        return float(max(1, math.ceil(reset_at - time.time())))
