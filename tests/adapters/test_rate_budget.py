"""The shared provider budget, on the real Redis of the run."""

import threading
import time

import pytest

from adapters.rate_budget import BudgetedProvider, BudgetExhausted, RateBudget
from engine.errors import TransientError


@pytest.fixture
def redis_client(runtime):
    return runtime.redis


def test_never_more_than_the_limit_in_any_window_even_with_many_takers(redis_client):
    budget = RateBudget(redis_client, per_minute=20, window_ms=1000, name="t1", guard_ms=50)
    granted: list[float] = []
    lock = threading.Lock()

    def taker():
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            if budget.try_take("event") == 0.0:
                with lock:
                    granted.append(time.monotonic())

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    granted.sort()
    # Sliding check: no 1 s window holds more than 20 (the guard absorbs clock skew between Redis and us).
    worst = max(sum(1 for g in granted if start <= g < start + 1.0) for start in granted)
    assert worst <= 20
    assert len(granted) >= 40  # and the budget is used, not wasted (2.5 windows)


def test_sweep_leaves_a_reserve_to_events(redis_client):
    budget = RateBudget(redis_client, per_minute=10, window_ms=60_000, name="t2")
    sweep_taken = sum(1 for _ in range(20) if budget.try_take("sweep") == 0.0)
    event_taken = sum(1 for _ in range(20) if budget.try_take("event") == 0.0)
    assert (sweep_taken, event_taken) == (9, 1)


def test_acquire_waits_then_gives_up_with_a_retry_hint(redis_client):
    budget = RateBudget(redis_client, per_minute=1, window_ms=60_000, name="t3")
    budget.acquire("event", max_wait_s=0.1)
    with pytest.raises(BudgetExhausted) as raised:
        budget.acquire("event", max_wait_s=0.1)
    assert 50 < raised.value.retry_after_s <= 60.5  # the window plus its guard


class TooMany:
    def get_subscriber(self, app_user_id):
        raise TransientError("429", status=429, retry_after_s=3)


def test_a_429_pauses_the_whole_budget_for_every_process(redis_client):
    one = RateBudget(redis_client, per_minute=100, name="t4")
    other_process = RateBudget(redis_client, per_minute=100, name="t4")
    with pytest.raises(TransientError):
        BudgetedProvider(TooMany(), one, "event", max_wait_s=0).get_subscriber("u")
    wait = other_process.try_take("event")
    assert 2 < wait <= 3
    other_process.resume()
    assert other_process.try_take("event") == 0.0


def test_a_batch_takes_what_the_window_has_free_and_never_more(redis_client):
    budget = RateBudget(redis_client, per_minute=10, window_ms=60_000, name="t5")
    assert budget.try_take_up_to("event", 4) == (4, 0.0)
    assert budget.try_take_up_to("event", 8) == (6, 0.0)  # only 6 left in the window
    granted, wait = budget.try_take_up_to("event", 3)
    assert granted == 0 and 59 < wait <= 60.5
    assert budget.used_in_window() == 10


def test_a_sweep_batch_leaves_the_reserve_and_many_batch_takers_stay_within_the_limit(redis_client):
    budget = RateBudget(redis_client, per_minute=40, window_ms=1000, name="t6", guard_ms=50)
    assert budget.try_take_up_to("sweep", 100)[0] == 39  # 40 less the sweep's reserve of 1
    time.sleep(1.1)
    redis_client.delete(budget._keys[0])
    granted: dict[bytes, float] = {}  # every slot, with the time Redis recorded for it
    lock = threading.Lock()

    def taker():
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            budget.try_take_up_to("event", 7)
            slots = redis_client.zrange(budget._keys[0], 0, -1, withscores=True)  # read before trimmed
            with lock:
                granted.update(slots)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = sorted(granted.values())
    worst = max(sum(1 for t in times if start <= t < start + 1000) for start in times)
    assert worst <= 40 and len(times) >= 80


def test_reserved_reads_spend_no_further_budget_and_a_429_still_pauses_it(redis_client):
    budget = RateBudget(redis_client, per_minute=5, window_ms=60_000, name="t7")
    provider = BudgetedProvider(TooMany(), budget, "sweep", max_wait_s=0)
    assert provider.reserve(10) == 4  # a sweep batch: what the window has free, less the reserve
    assert budget.used_in_window() == 4
    with pytest.raises(TransientError):
        provider.get_subscriber_reserved("u")
    assert budget.used_in_window() == 4
    assert budget.paused_for_s() > 2
    with pytest.raises(BudgetExhausted):
        provider.reserve(1)
