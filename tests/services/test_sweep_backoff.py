"""A provider answering 5xx: each customer whose read failed backs off (exponential, jittered,
capped) instead of being due again at once, and when most reads fail the provider itself is held
so that sweeps stop asking; 429 handling stays with the rate budget."""

from __future__ import annotations

from sqlalchemy import select, update

from persistence.models import Subscriber
from services.clock import wall_clock_ms
from services.sweep import CUSTOMER_BACKOFF_BASE_MS, reconcile_customers
from tests.support import reconcile_now

USERS = ["ann", "ben", "cid", "dot"]


def known(runtime, simulator) -> None:
    for user in USERS:
        simulator.state.purchase_subscription(user, "premium_monthly")
        reconcile_now(runtime, user)


def subscribers(runtime) -> dict[str, Subscriber]:
    with runtime.session_factory() as session:
        return {s.customer_id: s for s in session.scalars(select(Subscriber))}


def test_failed_reads_back_each_customer_off_and_hold_the_provider(runtime, simulator):
    known(runtime, simulator)
    runtime.provider_health.client.delete(*runtime.redis.keys("provider-health:*") or ["none"])
    simulator.state.fail_next(100, status=500)
    t0 = wall_clock_ms()
    first = reconcile_customers(USERS, runtime.sweep_reads)
    assert first.failed == 4
    rows = subscribers(runtime)
    for user in USERS:
        assert rows[user].dirty and rows[user].read_failures == 1
        # due after half to all of the base delay: never at once
        assert (
            t0 + CUSTOMER_BACKOFF_BASE_MS // 2 <= rows[user].next_check_ms <= wall_clock_ms() + CUSTOMER_BACKOFF_BASE_MS
        )
    assert runtime.provider_health.held_for_s() > 0
    # While the provider is held a sweep batch defers its customers without asking at all.
    before = simulator.state.request_count
    held = reconcile_customers(USERS, runtime.sweep_reads)
    assert (held.reconciled, held.failed, sorted(held.deferred)) == (0, 0, sorted(USERS))
    assert simulator.state.request_count == before


def test_the_backoff_grows_with_each_failure_in_a_row_and_a_good_read_resets_it(runtime, simulator):
    known(runtime, simulator)
    delays = []
    for _ in range(3):
        runtime.redis.delete(*runtime.redis.keys("provider-health:*") or ["none"])
        simulator.state.fail_next(1, status=502)
        t0 = wall_clock_ms()
        assert reconcile_customers(["ann"], runtime.sweep_reads).failed == 1
        delays.append(subscribers(runtime)["ann"].next_check_ms - t0)
    assert subscribers(runtime)["ann"].read_failures == 3
    assert delays[0] < delays[1] < delays[2]
    simulator.state.clear_faults()
    with runtime.session_factory() as session, session.begin():
        session.execute(update(Subscriber).values(next_check_ms=0))
    assert reconcile_customers(["ann"], runtime.sweep_reads).reconciled == 1
    after = subscribers(runtime)["ann"]
    assert (after.read_failures, after.dirty) == (0, False)


def test_a_good_group_lifts_the_hold_and_429s_do_not_count(runtime, simulator):
    known(runtime, simulator)
    runtime.redis.delete(*runtime.redis.keys("provider-health:*") or ["none"])
    simulator.state.fail_next(4, status=429, retry_after_s=1)
    reconcile_customers(USERS, runtime.sweep_reads)
    assert runtime.provider_health.held_for_s() == 0  # the budget pauses for 429s, not this
    runtime.budget.resume()
    assert runtime.provider_health.record(ok=0, failed=4) > 0
    assert runtime.provider_health.record(ok=4, failed=0) == 0
    assert runtime.provider_health.held_for_s() == 0
