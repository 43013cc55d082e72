"""The overview's counts of a window: whole hours counted once and kept in Redis for a while,
partial hours at the ends counted each time; the same answer as counting every row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from persistence.console_queries import inbox_window_counts
from services.console import HOUR_MS, window_counts
from tests.services.inbox_support import intake, set_row


def test_cached_hours_and_live_edges_add_up_to_a_direct_count(client, runtime, simulator):
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)  # the last 30 min counted live
    ages_h = (0.1, 0.5, 2.5, 2.6, 5.0, 30.0, 100.0)
    ids = []
    for i, age in enumerate(ages_h):
        inbox_id = intake(client, simulator.state.purchase_subscription(f"u{i}", "premium_monthly"))
        set_row(runtime, inbox_id, received_at=now - timedelta(hours=age), status="dead" if i % 2 else "processed")
        ids.append(inbox_id)
    now_ms = int(now.timestamp() * 1000)
    since, until = now_ms - 7 * 24 * HOUR_MS, now_ms
    expected = inbox_window_counts(runtime.session_factory, since_ms=since, until_ms=until)
    got = window_counts(runtime, since_ms=since, until_ms=until, now_ms=now_ms)
    assert (
        {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v} == {"processed": 4, "dead": 3}
    )
    assert runtime.redis.keys("console:inbox-hour:*")  # whole hours kept
    # A replay in an old hour shows once its hour's counts lapse; the current hour shows at once.
    set_row(runtime, ids[5], status="processed")  # 30 h old: a replayed dead letter
    set_row(runtime, ids[0], status="dead")  # 6 min old
    again = window_counts(runtime, since_ms=since, until_ms=until, now_ms=now_ms)
    assert again["processed"] == 3 and again["dead"] == 4  # the old hour as kept, the current one live
    runtime.redis.delete(*runtime.redis.keys("console:inbox-hour:*"))
    fresh = window_counts(runtime, since_ms=since, until_ms=until, now_ms=now_ms)
    assert fresh["processed"] == 4 and fresh["dead"] == 3


def test_a_window_within_one_hour_is_counted_directly(client, runtime, simulator):
    inbox_id = intake(client, simulator.state.purchase_subscription("u", "premium_monthly"))
    set_row(runtime, inbox_id, status="processed")
    now_ms = int(datetime.now(UTC).timestamp() * 1000) + 1000
    counts = window_counts(runtime, since_ms=now_ms - 10 * 60_000, until_ms=now_ms, now_ms=now_ms)
    assert counts["processed"] == 1
