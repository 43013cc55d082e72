"""Fixtures of the adapter tests: the run's Redis, emptied, without the rest of the runtime."""

from __future__ import annotations

import pytest
import redis as redis_lib

from adapters.embedded_redis import redis_url


@pytest.fixture
def redis_client(base_settings, clean_state):
    client = redis_lib.Redis.from_url(redis_url(base_settings))
    yield client
    client.close()
