"""A sweep batch sends its reads as budget slots come: writing what was read never holds back the
next reads, and at most ``fetch_concurrency`` reads are in flight at once."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

import services.sweep
from services.sweep import reconcile_customers
from services.wiring import Wiring
from tests.support import reconcile_now

USERS = ["ann", "ben", "cid", "dot", "eve", "fay"]


@pytest.fixture
def roomy(settings):
    """A wiring whose budget always has a slot free (the provider's pace is not what is tested)."""
    wiring = Wiring(settings.with_(provider_rate_per_minute=60_000))
    wiring.budget.client.delete(*wiring.budget._keys)
    yield wiring
    wiring.close()


def test_reads_go_on_while_the_first_reads_are_written(runtime, simulator, roomy, monkeypatch):
    for user in USERS:
        simulator.state.purchase_subscription(user, "premium_monthly")
        reconcile_now(runtime, user)
    settle = services.sweep._settle_group
    seen_while_writing: list[int] = []
    before = simulator.state.request_count

    def slow_first_write(bodies, *args, **kwargs):
        if not seen_while_writing:
            # The first group's writes wait (at most 10 s) until the sender has read everyone.
            deadline = time.monotonic() + 10
            while simulator.state.request_count - before < len(USERS) and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_while_writing.append(simulator.state.request_count - before)
        return settle(bodies, *args, **kwargs)

    monkeypatch.setattr(services.sweep, "_settle_group", slow_first_write)
    two_at_a_time = replace(roomy.sweep_reads, fetch_concurrency=2)
    result = reconcile_customers(USERS, two_at_a_time)
    assert (result.reconciled, result.failed, result.deferred) == (len(USERS), 0, [])
    # Two reads at a time, yet all six were sent before the first two were written.
    assert seen_while_writing == [len(USERS)]
    assert simulator.state.request_count - before == len(USERS)


def test_no_more_reads_in_flight_than_the_fetch_concurrency(runtime, simulator, roomy):
    for user in USERS:
        simulator.state.purchase_subscription(user, "premium_monthly")
        reconcile_now(runtime, user)
    simulator.state.latency_ms = 50  # reads overlap
    in_flight, most, lock = 0, 0, threading.Lock()
    read = roomy.sweep_reads.provider.get_subscriber_reserved

    def counted(app_user_id):
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return read(app_user_id)
        finally:
            with lock:
                in_flight -= 1

    provider = roomy.sweep_reads.provider
    monkey = replace(roomy.sweep_reads, fetch_concurrency=3)
    try:
        provider.get_subscriber_reserved = counted
        result = reconcile_customers(USERS, monkey)
    finally:
        del provider.get_subscriber_reserved
        simulator.state.latency_ms = 0
    assert result.reconciled == len(USERS)
    assert 1 <= most <= 3
