"""The sweep's selection serves urgent checks first: dirty customers, then customers whose
projected expiry or renewal passed (past the webhook's grace) since their last read, before the
staleness-driven checks, however overdue those are."""

from __future__ import annotations

from persistence.models import Subscriber
from persistence.subscribers import peek_due, select_due
from services.clock import wall_clock_ms

MINUTE = 60_000
HOUR = 60 * MINUTE


def add(runtime, **rows: dict) -> None:
    with runtime.session_factory() as session, session.begin():
        for customer_id, values in rows.items():
            session.add(Subscriber(customer_id=customer_id, **values))


def test_urgent_checks_come_first_then_the_most_overdue(runtime):
    now = wall_clock_ms()
    add(
        runtime,
        stale_long={"next_check_ms": now - 5 * HOUR},  # a day since its last read, 5 h ago
        stale={"next_check_ms": now - HOUR, "next_change_ms": now + 10 * 24 * HOUR},
        recent_purchase={"next_check_ms": now - 2 * HOUR, "next_change_ms": now + 24 * HOUR},
        dirty={"next_check_ms": now - 1000, "dirty": True},
        expiry={"next_check_ms": now - 2000, "next_change_ms": now - 2000 - 10 * MINUTE},  # checked at its expiry
        # overdue for staleness when its subscription ran out an hour ago: unread since
        stale_past_expiry={"next_check_ms": now - 3 * HOUR, "next_change_ms": now - HOUR},
        expiry_just_now={"next_check_ms": now - 30_000, "next_change_ms": now - MINUTE},  # the webhook may come yet
        renewal_later={"next_check_ms": now + MINUTE, "next_change_ms": now},  # not due yet
    )
    expected = ["dirty", "stale_past_expiry", "expiry", "stale_long", "recent_purchase", "stale", "expiry_just_now"]
    assert peek_due(runtime.session_factory, now_ms=now, limit=10) == expected
    assert select_due(runtime.session_factory, now_ms=now, limit=4, lease_ms=MINUTE) == expected[:4]
    assert select_due(runtime.session_factory, now_ms=now, limit=10, lease_ms=MINUTE) == expected[4:]
    assert select_due(runtime.session_factory, now_ms=now, limit=10, lease_ms=MINUTE) == []
    # Their leases run out with the renewal's grace: the urgent ones go first again.
    again = select_due(runtime.session_factory, now_ms=now + 11 * MINUTE, limit=10, lease_ms=MINUTE)
    urgent = {"dirty", "stale_past_expiry", "expiry", "expiry_just_now", "renewal_later"}
    assert set(again[:5]) == urgent and set(again[5:]) == {"stale_long", "recent_purchase", "stale"}


def test_a_batch_of_urgent_checks_alone_fills_the_limit(runtime):
    now = wall_clock_ms()
    add(
        runtime,
        **{f"stale{k}": {"next_check_ms": now - 10 * HOUR - k} for k in range(5)},
        **{f"dirty{k}": {"next_check_ms": now - k, "dirty": True} for k in range(3)},
    )
    assert select_due(runtime.session_factory, now_ms=now, limit=3, lease_ms=MINUTE) == ["dirty2", "dirty1", "dirty0"]
    assert select_due(runtime.session_factory, now_ms=now, limit=2, lease_ms=MINUTE) == ["stale4", "stale3"]
