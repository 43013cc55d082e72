"""Driving the rate budget's decision (its Lua script, on the real Redis of the run) with a fake
clock: a discrete-event loop of requesters, each asking again when the budget said it may."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters.rate_budget import Priority, RateBudget

START_MS = 1_700_000_000_000


class FakeClock:
    def __init__(self, now_ms: int = START_MS):
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Requester:
    """Asks for ``batch`` slots at a time at ``priority``, for each of its ``arrivals`` (ms), or
    without end from ``start`` while ``saturating``."""

    priority: Priority
    arrivals: list[int] = field(default_factory=list)
    batch: int = 1
    saturating: bool = False
    start: int = START_MS
    next_try: int = 0
    grants: list[int] = field(default_factory=list)  # the instant of every slot granted
    waits: list[int] = field(default_factory=list)  # arrival -> grant, per request (ms)

    def pending(self, now: int) -> int:
        if self.saturating:
            return self.batch if now >= self.start else 0
        return sum(1 for a in self.arrivals if a <= now)


def drive(budget: RateBudget, clock: FakeClock, requesters: Sequence[Requester], *, until_ms: int) -> None:
    """Run every requester until ``until_ms``: at each step the earliest one due asks (ties in
    the order given), takes what it is granted, and is told when to ask again."""
    for r in requesters:
        r.arrivals.sort()
        r.next_try = r.start if r.saturating else (r.arrivals[0] if r.arrivals else until_ms + 1)
    while True:
        due = [r for r in requesters if r.next_try <= until_ms]
        if not due:
            return
        r = min(due, key=lambda q: q.next_try)
        clock.now_ms = max(clock.now_ms, r.next_try)
        wanted = min(r.batch, r.pending(clock.now_ms))
        if wanted == 0:
            r.next_try = r.arrivals[0] if r.arrivals else until_ms + 1
            continue
        granted, wait_s = budget.try_take_up_to(r.priority, wanted)
        r.grants.extend([clock.now_ms] * granted)
        if not r.saturating:
            for _ in range(granted):
                r.waits.append(clock.now_ms - r.arrivals.pop(0))
        if granted:
            r.next_try = clock.now_ms if r.pending(clock.now_ms) else (r.arrivals[0] if r.arrivals else until_ms + 1)
            if r.saturating:
                r.next_try = clock.now_ms + 1  # a request takes a moment to send
        else:
            r.next_try = clock.now_ms + max(1, round(wait_s * 1000))


def max_in_window(times: Iterable[int], window_ms: int) -> int:
    """The most instants in any half-open window [t, t + window_ms)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_ms:
            start += 1
        best = max(best, end - start + 1)
    return best
