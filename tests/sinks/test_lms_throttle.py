"""A burst of grants under the LMS's throttle (staff JWT callers: 120 requests/min), through the
outbox against the fake LMS over HTTP: calls paced within the LMS's own budget, a 429 honoured
for every process, no row lost, the API key unthrottled."""

from __future__ import annotations

from sqlalchemy import select

from persistence.models import SinkOutboxRow
from services.clock import wall_clock_ms
from tests.sinks.conftest import COURSE, drain, map_course, sync

LEARNERS = [f"learner{i}" for i in range(8)]


def burst(rt, simulator, lms) -> None:
    map_course(rt)
    for user in LEARNERS:
        lms.state.add_user(user)
        simulator.state.purchase_non_renewing(user, "h01enb")
        sync(rt, user)


def rows(rt) -> list[SinkOutboxRow]:
    with rt.session_factory() as session:
        return list(session.scalars(select(SinkOutboxRow).order_by(SinkOutboxRow.id)))


def api_calls(lms, caller: str) -> list:
    return [c for c in lms.state.calls if c.path.startswith("/api/") and c.caller == caller]


def test_jwt_calls_stay_within_the_lms_budget_and_the_rest_wait_without_loss(lms_runtime_for, simulator, lms):
    rt = lms_runtime_for(jwt=True, openedx_jwt_rate_per_minute=6, openedx_budget_wait_s=0.2)
    burst(rt, simulator, lms)
    now = wall_clock_ms()
    result = drain(rt, clock=lambda: now)
    sent = api_calls(lms, "user:engine_worker")
    assert 1 <= len(sent) <= 6 and lms.state.statuses(429) == []  # paced: never over the budget
    assert result.throttled and result.failed == 0 and result.sent == len(lms.state.posts())
    waiting = [r for r in rows(rt) if r.status == "pending"]
    assert len(waiting) == len(LEARNERS) - result.sent  # no row lost
    [held] = [r for r in waiting if r.next_attempt_ms > now]  # the run stopped at the first that had to wait
    assert "budget" in str(held.last_error) and held.next_attempt_ms >= now + 1000
    assert [r.attempts for r in waiting] == [0] * len(waiting)  # waiting for the budget is no failed try
    # The LMS does not throttle its API key: with it configured, the rest go out at once.
    keyed = lms_runtime_for(jwt=True, api_key=True, openedx_jwt_rate_per_minute=6, openedx_budget_wait_s=0.2)
    assert drain(keyed, clock=lambda: now + 120_000).sent == len(waiting)
    assert all(lms.state.enrollment(u, COURSE) == ("professional", True) for u in LEARNERS)
    assert len(api_calls(lms, "user:engine_worker")) == len(sent)


def test_a_429_is_honoured_by_every_process_and_loses_nothing(lms_runtime_for, simulator, lms):
    offset = [0.0]
    lms.state.clock = lambda: 1_900_000_000.0 + offset[0]
    # Another client of the same service user has spent the minute: our first call meets the
    # throttle (whatever our own pacing: it cannot see the other client's calls).
    lms.state.use_throttle("engine_worker", 120)
    # Our own budget is generous here: the 429 comes from the LMS, which counts the other client.
    rt = lms_runtime_for(jwt=True, openedx_budget_wait_s=0.2, openedx_jwt_rate_per_minute=6000)
    burst(rt, simulator, lms)
    now = wall_clock_ms()
    result = drain(rt, clock=lambda: now)
    [throttled] = lms.state.statuses(429)
    assert throttled.caller == "user:engine_worker" and throttled.path.startswith("/api/enrollment/v1/enrollment/")
    assert result.throttled and result.sent == 0 and result.failed == 0
    retry_after_ms = 60_000  # the oldest of the 120 requests leaves the LMS's window in 60 s
    [waiting_head] = [r for r in rows(rt) if r.status == "pending" and r.last_error and "429" in str(r.last_error)]
    assert waiting_head.next_attempt_ms >= now + retry_after_ms
    assert rt.lms_budget.paused_for_s() > 55  # every process holds its JWT calls, not just this drain
    assert drain(rt, clock=lambda: now + retry_after_ms).sent == 0  # still paused: no second 429
    assert len(lms.state.statuses(429)) == 1
    offset[0] += 61  # a minute later for the LMS ...
    rt.lms_budget.resume()  # ... and for the budget, whose pause is on Redis's clock
    # That drain found the budget paused and put the row back for the rest of the pause.
    result = drain(rt, clock=lambda: now + 2 * retry_after_ms)
    assert result.sent == len(LEARNERS) and not result.throttled
    assert all(lms.state.enrollment(u, COURSE) == ("professional", True) for u in LEARNERS)
    assert len(lms.state.statuses(429)) == 1 and {r.status for r in rows(rt)} == {"done"}
