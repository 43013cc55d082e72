"""Never over budget (a property over generated request patterns, with a fake clock).

Whatever mix of priorities, batch sizes and arrival times asks, the slots the budget's decision
grants (its Lua script on the real Redis of the run, fed fake instants) never put more than
``per_minute`` requests in any 60 s window, even when each request reaches the provider up to
the guard late; and a provider enforcing the same nominal rate as a token bucket (the
simulator's own) never has to refuse one.
"""

from __future__ import annotations

import uuid

import redis as redis_lib
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters.embedded_redis import redis_url
from adapters.rate_budget import PRIORITIES, RateBudget
from simulators.revenuecat.rate_limit import TokenBucket
from tests.adapters.pacing import START_MS, FakeClock, Requester, drive, max_in_window

RUN_MS = 3 * 60_000

requesters = st.lists(
    st.builds(
        Requester,
        priority=st.sampled_from(PRIORITIES),
        arrivals=st.lists(st.integers(START_MS, START_MS + RUN_MS), max_size=400),
        batch=st.integers(1, 12),
        saturating=st.booleans(),
        start=st.integers(START_MS, START_MS + RUN_MS),
    ),
    min_size=1,
    max_size=4,
)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    per_minute=st.sampled_from([1, 7, 59, 60, 61, 100, 479, 480, 500, 600, 1200]),
    asking=requesters,
    jitter=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50),
)
def test_no_window_ever_exceeds_the_rate_and_a_token_bucket_never_refuses(base_settings, per_minute, asking, jitter):
    client = redis_lib.Redis.from_url(redis_url(base_settings))
    clock = FakeClock()
    budget = RateBudget(client, per_minute, name=f"prop-{uuid.uuid4().hex}", clock=clock)
    try:
        drive(budget, clock, asking, until_ms=START_MS + RUN_MS)
    finally:
        client.delete(*budget._keys)
        client.close()
    grants = sorted(t for r in asking for t in r.grants)
    # Any provider minute, with arrivals up to the guard after the grant.
    assert max_in_window(grants, 60_000 + budget.guard_ms) <= per_minute
    # A token bucket at the nominal rate (one second's worth, as the simulator holds by
    # default), with each request arriving up to the guard late.
    arrivals = sorted(t + jitter[i % len(jitter)] * budget.guard_ms for i, t in enumerate(grants))
    provider_now = [START_MS / 1000]
    bucket = TokenBucket(per_minute, clock=lambda: provider_now[0])
    for arrival in arrivals:
        provider_now[0] = arrival / 1000
        assert bucket.take() == 0.0, f"refused at {arrival - START_MS:.0f} ms"
