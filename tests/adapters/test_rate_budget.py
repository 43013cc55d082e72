"""The shared provider budget on the real Redis of the run: pacing, priorities and shares (driven
with a fake clock, so no assertion depends on this machine's speed), pauses, the provider's
headers, and atomic takes from several threads on Redis's own clock."""

import threading
import time

import pytest

from adapters.rate_budget import BudgetedProvider, BudgetExhausted, Priority, RateBudget
from engine.errors import TransientError
from simulators.revenuecat.rate_limit import TokenBucket
from tests.adapters.pacing import START_MS, FakeClock, Requester, drive, max_in_window

MINUTE = 60_000


def fake_budget(redis_client, per_minute=480, **kwargs):
    clock = FakeClock()
    return RateBudget(redis_client, per_minute, name="fake", clock=clock, **kwargs), clock


def test_a_burst_is_paced_evenly_instead_of_spent_at_once(redis_client):
    budget, clock = fake_budget(redis_client)
    first, _ = budget.try_take_up_to("event", 100)
    assert 1 <= first <= budget.burst  # a few back to back, never the minute's 480
    reader = Requester("event", arrivals=[START_MS] * (480 - first))
    drive(budget, clock, [reader], until_ms=START_MS + 2 * MINUTE)
    gaps = [b - a for a, b in zip(reader.grants, reader.grants[1:], strict=False)]
    assert len(reader.grants) == 480 - first  # all served, within two minutes
    assert max(gaps) <= budget.interval_ms + 1 and min(gaps) >= budget.interval_ms - 1  # evenly
    assert max_in_window([START_MS] * first + reader.grants, MINUTE) <= 480


def test_client_traffic_never_starves_event_processing(redis_client):
    # One user token sends validates as fast as it can; webhooks keep arriving, one a second.
    budget, clock = fake_budget(redis_client)
    flood = Requester("sync", saturating=True, batch=8)
    events = Requester("event", arrivals=[START_MS + 1000 * k + 317 for k in range(120)])
    drive(budget, clock, [flood, events], until_ms=START_MS + 2 * MINUTE)
    assert len(events.waits) == 120 and max(events.waits) <= budget.interval_ms + 1  # at most one slot's wait
    assert len(flood.grants) > 0.7 * 2 * budget.limit_for("sync")  # and the flood gets the rest


@pytest.mark.parametrize("ties", ["highest_first", "lowest_first"])
def test_every_priority_keeps_its_share_when_all_want_everything(redis_client, ties):
    budget, clock = fake_budget(redis_client)
    wanting = [Requester(p, saturating=True, batch=4) for p in ("event", "sync", "sweep", "discovery")]
    drive(budget, clock, wanting if ties == "highest_first" else wanting[::-1], until_ms=START_MS + 10 * MINUTE)
    total = sum(len(r.grants) for r in wanting)
    assert total >= 0.98 * 10 * budget.limit_for("event")  # nothing wasted
    got = {r.priority: len(r.grants) / total for r in wanting}
    for priority, share in budget.shares.items():
        assert got[priority] >= 0.95 * share.guaranteed, (priority, got)


def test_discovery_borrows_a_budget_nobody_else_uses_and_yields_it_to_the_sweep(redis_client):
    budget, clock = fake_budget(redis_client)
    discovery = Requester("discovery", saturating=True, batch=4)
    sweep = Requester("sweep", saturating=True, batch=8, start=START_MS + 5 * MINUTE)
    drive(budget, clock, [sweep, discovery], until_ms=START_MS + 10 * MINUTE)
    alone = [t for t in discovery.grants if t < START_MS + 5 * MINUTE]
    shared = [t for t in discovery.grants if t >= START_MS + 5 * MINUTE]
    assert len(alone) >= 0.98 * 5 * budget.limit_for("discovery")
    assert 0.09 * 5 * budget.limit_for("sweep") <= len(shared) <= 0.12 * 5 * budget.limit_for("sweep")
    assert len(sweep.grants) >= 0.87 * 5 * budget.limit_for("sweep")


def test_the_provider_headers_slow_the_budget_for_a_minute(redis_client):
    budget, clock = fake_budget(redis_client)
    reader = Requester("event", saturating=True)
    drive(budget, clock, [reader], until_ms=START_MS + MINUTE)
    ours = budget.used_in_window()
    # Another client of the same key sent 240 requests this minute: we take them out of ours.
    assert budget.note_provider_usage(ours + 240, 480) == 240
    later = Requester("event", saturating=True, start=clock.now_ms + 1)
    drive(budget, clock, [later], until_ms=clock.now_ms + MINUTE)
    assert len(later.grants) <= 240 + budget.burst
    # A limit lower than ours is adopted.
    budget.note_provider_usage(0, 120)
    lowered = Requester("event", saturating=True, start=clock.now_ms + 1)
    drive(budget, clock, [lowered], until_ms=clock.now_ms + MINUTE)
    assert len(lowered.grants) <= 120
    # And forgotten a minute after the last reading.
    freed = Requester("event", saturating=True, start=clock.now_ms + MINUTE)
    drive(budget, clock, [freed], until_ms=clock.now_ms + 2 * MINUTE)
    assert len(freed.grants) >= 0.98 * budget.limit_for("event")


def test_acquire_waits_then_gives_up_with_a_retry_hint(redis_client):
    budget = RateBudget(redis_client, per_minute=1, name="t3")
    budget.acquire("event", max_wait_s=0.1)
    with pytest.raises(BudgetExhausted) as raised:
        budget.acquire("event", max_wait_s=0.1)
    assert (
        raised.value.retry_after_s is not None and 50 < raised.value.retry_after_s <= 60.5
    )  # one paced interval: the minute plus its guard


class TooMany:
    def get_subscriber(self, app_user_id):
        raise TransientError("429", status=429, retry_after_s=3)


def test_a_429_pauses_the_whole_budget_for_every_process(redis_client):
    one = RateBudget(redis_client, per_minute=100, name="t4")
    other_process = RateBudget(redis_client, per_minute=100, name="t4")
    with pytest.raises(TransientError):
        BudgetedProvider(TooMany(), one, "event", max_wait_s=0).get_subscriber("u")
    wait = other_process.try_take("discovery")
    assert 2 < wait <= 3
    other_process.resume()
    assert other_process.try_take("event") <= other_process.interval_ms / 1000  # only the pace again


def test_reserved_reads_spend_no_further_budget_and_a_429_still_pauses_it(redis_client):
    budget, _clock = fake_budget(redis_client, per_minute=480)
    provider = BudgetedProvider(TooMany(), budget, "sweep", max_wait_s=0)
    taken = provider.reserve(10)  # a sweep batch: what the pace allows now, at least one
    assert 1 <= taken < 10 and budget.used_in_window() == taken
    with pytest.raises(TransientError):
        provider.get_subscriber_reserved("u")
    assert budget.used_in_window() == taken
    assert budget.paused_for_s() > 2
    with pytest.raises(BudgetExhausted):
        provider.reserve(1)


def test_takers_in_many_threads_stay_within_the_pace_on_redis_clock(redis_client):
    budget = RateBudget(redis_client, per_minute=6000, name="t6")  # 100 a second
    stop = time.monotonic() + 2.5

    def taker(priority):
        while time.monotonic() < stop:
            granted, wait = budget.try_take_up_to(priority, 7)
            if not granted:
                time.sleep(min(wait, 0.01))

    threads = [threading.Thread(target=taker, args=(p,)) for p in ("event", "sync", "sweep", "discovery")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Redis's own record of the slots it granted, second by second.
    per_second = {int(s): int(n) for s, n in redis_client.hgetall(budget._keys[3]).items() if s != b"pruned"}
    most = 1000 / budget.interval_ms + budget.burst
    assert max(per_second.values()) <= most
    assert sum(per_second.values()) >= 100  # and used, not wasted


@pytest.mark.parametrize("per_minute", [60, 120, 480, 1200])
def test_a_token_bucket_of_the_same_rate_no_deeper_than_the_burst_never_refuses(redis_client, per_minute):
    # Every priority asking in bursts, rested in between (where a bucket refills and a budget
    # could let a burst out): a provider bucket at the nominal rate holding only the budget's
    # own burst never refuses a request that arrives when its slot was granted.
    budget, clock = fake_budget(redis_client, per_minute)
    lanes: tuple[tuple[Priority, int], ...] = (("event", 1), ("sync", 8), ("sweep", 8), ("discovery", 4))
    asking = [
        Requester(p, arrivals=[START_MS + round(k * 21_000 + j * 7_000) for k in range(6) for _ in range(20)], batch=b)
        for j, (p, b) in enumerate(lanes)
    ]
    drive(budget, clock, asking, until_ms=START_MS + 20 * MINUTE)
    grants = sorted(t for r in asking for t in r.grants)
    assert len(grants) == 6 * 20 * 4  # all served
    provider_now = [START_MS / 1000]
    bucket = TokenBucket(per_minute, budget.burst, clock=lambda: provider_now[0])
    for at in grants:
        provider_now[0] = at / 1000
        assert bucket.take() == 0.0, f"refused at {at - START_MS} ms"


def test_slots_are_counted_by_the_priority_that_took_them(redis_client):
    budget, clock = fake_budget(redis_client)
    event, sweep = Requester("event", arrivals=[START_MS] * 5), Requester("sweep", arrivals=[START_MS] * 7, batch=3)
    drive(budget, clock, [event, sweep], until_ms=START_MS + MINUTE)
    assert budget.taken_by_priority() == {"event": 5, "sweep": 7}
