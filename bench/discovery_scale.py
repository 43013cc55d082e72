"""Benchmark at scale, by simulation with a fake clock: a discovery pass, staleness, and how late
expiry-driven checks run, for ``--subscribers`` customers, ``--renewals`` a day and a
``--budget`` requests/min provider budget. No real time passes and nothing is called: it is a
discrete-event model of the engine built from the engine's own pieces.

* The budget: one slot per ``interval`` (adapters/rate_budget.py: the paced minute of
  ``per_minute`` less the burst, plus the guard) shared by priorities with the lanes and
  borrowing levels of ``default_shares`` (event 0.5, sync 0.2, sweep 0.2, discovery 0.1): the
  same decision as the budget's Lua script, written again in Python over the fake clock.
* Events: a renewal's webhook arrives a second after it (``--lose`` of them never do) and asks
  for one read at event priority.
* The sweep: every SWEEP_INTERVAL_S (config/settings.py) it selects as many due customers as
  the budget allows until the next run, less the batches still queued (tasks/sweep.py), in
  the order of ``--policy``: ``urgent`` (persistence.subscribers.select_due: dirty customers and
  checks put at or after an expiry first, then the most overdue) or ``overdue`` (most overdue
  first, the selection before it). Each read sets the customer's next check with
  ``engine.reconcile.next_check_ms`` (MAX_STALENESS_S a day; ten minutes after an expiry).
* Discovery: a pass through the customer list every ``--discovery-interval`` hours (at once if
  the last one took longer), one request per page of ``--page-size`` customers (the v2
  maximum limit by default), at discovery priority.

Customers: ``--renewals`` x 30 of them hold a monthly subscription (renewing on a uniform
spread of days), the rest one-time purchases; at the start each was read at a uniform time in
the last day. Printed, over the days after ``--warmup`` days: the discovery pass's duration,
the staleness of every customer (time since its last read, sampled hourly), how late the
expiry-driven checks ran (read time - (expiry + 10 min), for renewals whose webhook was lost),
and how long events waited for a slot. Targets: a pass within 24 h, no expiry-driven check
later than 15 minutes, events never starved (each served within two slots of its arrival).

    python -m bench.discovery_scale
    python -m bench.discovery_scale --policy overdue
    python -m bench.discovery_scale --subscribers 100000 --days 3
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from adapters.rate_budget import PRIORITIES, Priority, default_burst, default_shares
from bench.harness import Figures, percentile, say
from config.settings import Settings
from engine.projection import Projection
from engine.reconcile import RECHECK_AFTER_EXPIRY_MS, ReconcilePolicy, next_check_ms
from services.discovery import PAGE_SIZE

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
PERIOD_MS = 30 * DAY_MS
GUARD_MS = 500  # RateBudget.guard_ms
SWEEP_CHUNK = 50  # tasks.sweep.SWEEP_CHUNK
SWEEP_LEASE_MS = 15 * MINUTE_MS  # tasks.sweep.SWEEP_LEASE_MS
WEBHOOK_DELAY_MS = 1000
NEVER = 1 << 62
TARGET_PASS_H = 24.0
TARGET_LATE_MIN = 15.0


class Budget:
    """The rate budget's decision (adapters/rate_budget.py ``_TAKE``) on the fake clock: one slot
    at a time, granted within the priority's lane at the global pace, or borrowed while the pace
    keeps the headroom its level leaves to the priorities above."""

    def __init__(self, per_minute: int, discovery_share: float) -> None:
        burst = min(default_burst(per_minute), per_minute)
        self.interval = (MINUTE_MS + GUARD_MS) / (per_minute - burst + 1)
        self.tolerance = (burst - 1) * self.interval
        self.shares = default_shares(discovery_share)
        self.pace = 0.0
        self.lanes: dict[Priority, float] = dict.fromkeys(PRIORITIES, 0.0)
        self.granted: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)

    def limit_per_minute(self) -> int:
        return max(1, int(MINUTE_MS / self.interval))  # RateBudget.limit_for

    def take(self, priority: Priority, now: float) -> float:
        """0 when a slot was granted at ``now``, else the ms to wait before asking again."""
        share = self.shares[priority]
        ahead = max(self.pace, now) - now
        lane_interval = self.interval / share.guaranteed if share.guaranteed > 0 else 0.0
        borrow_at = max(0.0, self.tolerance - self.interval) * (1 - share.level)
        lane_at = math.inf  # no lane: borrows only
        if lane_interval > 0:
            lane_at = max(ahead - self.tolerance, max(self.lanes[priority], now) - now - lane_interval)
        if lane_at <= 0:
            self.lanes[priority] = max(self.lanes[priority], now) + lane_interval
        elif ahead > borrow_at:
            return max(1.0, math.ceil(min(lane_at, ahead - borrow_at)))
        self.pace = max(self.pace, now) + self.interval
        self.granted[priority] += 1
        return 0.0


@dataclass
class Checks:
    """Every customer's check time and projected change, selected by ``policy`` as
    persistence.subscribers.select_due does (lazy heaps: an entry counts while it still holds
    the customer's current value)."""

    policy: str
    next_check: list[int]
    next_change: list[int]  # NEVER: no projected change
    by_check: list[tuple[int, int]] = field(default_factory=list)
    by_change: list[tuple[int, int]] = field(default_factory=list)

    def schedule(self, customer: int, at: int) -> None:
        self.next_check[customer] = at
        heapq.heappush(self.by_check, (at, customer))
        if len(self.by_check) > 3 * len(self.next_check):  # every read leaves an entry behind
            self.by_check = [(at, c) for c, at in enumerate(self.next_check)]
            heapq.heapify(self.by_check)

    def change_at(self, customer: int, at: int) -> None:
        self.next_change[customer] = at
        if at != NEVER:
            heapq.heappush(self.by_change, (at, customer))

    def select(self, now: int, limit: int) -> list[int]:
        chosen: list[int] = []
        if self.policy == "urgent":
            # An expiry passed (past the webhook's grace) since the last read: nobody is dirty
            # here, as no read fails.
            kept: list[tuple[int, int]] = []
            while self.by_change and len(chosen) < limit and self.by_change[0][0] <= now - RECHECK_AFTER_EXPIRY_MS:
                at, customer = heapq.heappop(self.by_change)
                if self.next_change[customer] != at:
                    continue
                if self.next_check[customer] <= now:
                    chosen.append(customer)
                else:
                    kept.append((at, customer))  # leased: still urgent when the lease runs out
            for entry in kept:
                heapq.heappush(self.by_change, entry)
        taken = set(chosen)
        while self.by_check and len(chosen) < limit and self.by_check[0][0] <= now:
            at, customer = heapq.heappop(self.by_check)
            if self.next_check[customer] == at and customer not in taken:
                chosen.append(customer)
        for customer in chosen:
            self.schedule(customer, now + SWEEP_LEASE_MS)  # leased
        return chosen


@dataclass
class Run:
    pass_hours: list[float] = field(default_factory=list)
    staleness_h: list[float] = field(default_factory=list)
    staleness_max_h: float = 0.0
    late_min: list[float] = field(default_factory=list)
    event_wait_ms: list[float] = field(default_factory=list)
    slot_ms: float = 0.0
    slots: dict[str, int] = field(default_factory=dict)


def simulate(args: argparse.Namespace, policy: str) -> Run:
    rng = random.Random(args.seed)
    settings = Settings.from_env({})  # the engine's defaults
    staleness = ReconcilePolicy(max_staleness_ms=settings.max_staleness_s * 1000)
    budget = Budget(args.budget, args.discovery_share)
    n = args.subscribers
    subscribed = min(n, args.renewals * PERIOD_MS // DAY_MS)
    horizon = args.days * DAY_MS
    measure_from = args.warmup * DAY_MS

    def check_after_read(customer: int, now: int) -> int:
        change = checks.next_change[customer]
        projection = Projection((), (), None if change == NEVER else change)
        return next_check_ms(projection, (), now, staleness, dirty=False)

    checks = Checks(policy, [0] * n, [NEVER] * n)
    last_read = [0] * n
    exo: list[tuple[int, int, str, int]] = []  # (at, order, kind, customer)
    order = 0

    def at(when: int, kind: str, customer: int = -1) -> None:
        nonlocal order
        order += 1
        heapq.heappush(exo, (when, order, kind, customer))

    for customer in range(n):
        if customer < subscribed:
            renews = rng.randrange(PERIOD_MS)
            checks.change_at(customer, renews)
            if renews < horizon:
                at(renews, "renew", customer)
        last_read[customer] = -rng.randrange(DAY_MS)
    for customer in range(n):
        checks.schedule(customer, check_after_read(customer, last_read[customer]))
    renewed_at: dict[int, int] = {}  # customer -> the renewal the engine has not read yet
    sweep_every = settings.sweep_interval_s * 1000
    allowance = math.ceil(budget.limit_per_minute() * settings.sweep_interval_s / 60)
    for t in range(0, horizon, sweep_every):
        at(t, "sweep_run")
    for t in range(measure_from, horizon + 1, HOUR_MS):
        at(t, "sample")
    discovery_every = int(args.discovery_interval * HOUR_MS)
    pages_per_pass = math.ceil(n / args.page_size)
    at(0, "discovery_pass")

    run = Run()
    events: deque[tuple[int, int]] = deque()  # (arrival, customer)
    sweep_queue: deque[int] = deque()
    pages_left, pass_started = 0, 0
    tries: dict[Priority, int] = {"event": NEVER, "sweep": NEVER, "discovery": NEVER}

    def read(customer: int, now: int) -> None:
        last_read[customer] = now
        renewal = renewed_at.pop(customer, None)
        if renewal is not None:
            checks.change_at(customer, renewal + PERIOD_MS)
        checks.schedule(customer, check_after_read(customer, now))
        if renewal is not None and renewal >= measure_from and lost.get(customer, False):
            late = now - (renewal + RECHECK_AFTER_EXPIRY_MS)
            run.late_min.append(max(0, late) / MINUTE_MS)

    lost: dict[int, bool] = {}
    clock = 0
    while True:
        next_exo = exo[0][0] if exo else NEVER
        priority = min(tries, key=lambda p: (tries[p], PRIORITIES.index(p)))
        next_try = tries[priority]
        if min(next_exo, next_try) > horizon:
            break
        if next_exo <= next_try:
            clock, _, kind, customer = heapq.heappop(exo)
            if kind == "renew":
                renewed_at[customer] = clock
                lost[customer] = rng.random() < args.lose
                if not lost[customer]:
                    at(clock + WEBHOOK_DELAY_MS, "webhook", customer)
            elif kind == "webhook":
                events.append((clock, customer))
                tries["event"] = min(tries["event"], clock)
            elif kind == "sweep_run":
                queued = len(sweep_queue) // SWEEP_CHUNK
                sweep_queue.extend(checks.select(clock, allowance - queued * SWEEP_CHUNK))
                if sweep_queue:
                    tries["sweep"] = min(tries["sweep"], clock)
            elif kind == "discovery_pass":  # (the next is scheduled when this one ends)
                pages_left, pass_started = pages_per_pass, clock
                tries["discovery"] = clock
            elif kind == "sample":
                sample = rng.sample(range(n), min(n, args.sample))
                run.staleness_h += [(clock - last_read[c]) / HOUR_MS for c in sample]
                run.staleness_max_h = max(run.staleness_max_h, (clock - min(last_read)) / HOUR_MS)
            continue
        clock = max(clock, next_try)
        wait = budget.take(priority, clock)
        if wait:
            tries[priority] = clock + int(wait)
            continue
        if priority == "event":
            arrival, customer = events.popleft()
            if clock >= measure_from:
                run.event_wait_ms.append(clock - arrival)
            read(customer, clock)
            tries["event"] = events[0][0] if events else NEVER
        elif priority == "sweep":
            read(sweep_queue.popleft(), clock)
            tries["sweep"] = clock + 1 if sweep_queue else NEVER
        else:
            pages_left -= 1
            if pages_left == 0:
                if pass_started >= measure_from or not run.pass_hours:
                    run.pass_hours.append((clock - pass_started) / HOUR_MS)
                tries["discovery"] = NEVER
                next_pass = pass_started + discovery_every
                at(max(clock, next_pass), "discovery_pass")
            else:
                tries["discovery"] = clock + 1
    run.slots = {p: budget.granted[p] for p in PRIORITIES}
    run.slot_ms = budget.interval
    return run


def report(args: argparse.Namespace, policy: str, run: Run, figures: Figures, elapsed_s: float) -> None:
    label = "urgent first" if policy == "urgent" else "most overdue first"
    say(
        f"policy {label}: simulated {args.days} days in {elapsed_s:.0f} s; slots by priority {run.slots}; "
        f"{len(run.late_min)} expiry-driven checks measured, {len(run.event_wait_ms)} events"
    )
    pass_h = max(run.pass_hours) if run.pass_hours else float("inf")
    figures.add(
        f"[{label}] discovery pass ({args.page_size}/page)",
        f"{pass_h:.1f} h",
        f"<= {TARGET_PASS_H:.0f} h",
        pass_h <= TARGET_PASS_H,
    )
    st = run.staleness_h
    figures.add(
        f"[{label}] staleness p50/p95/max",
        f"{percentile(st, 50):.1f}/{percentile(st, 95):.1f}/{run.staleness_max_h:.1f} h",
    )
    late = run.late_min
    worst = max(late) if late else 0.0
    figures.add(
        f"[{label}] expiry-driven check late p50/p95/max",
        f"{percentile(late, 50):.1f}/{percentile(late, 95):.1f}/{worst:.1f} min",
        f"max <= {TARGET_LATE_MIN:.0f} min",
        worst <= TARGET_LATE_MIN,
    )
    waits = run.event_wait_ms
    worst_wait = max(waits) if waits else 0.0
    # Never starved: an event is served at the next slot or the one after, whatever else asks.
    figures.add(
        f"[{label}] event wait for a slot p50/p95/max",
        f"{percentile(waits, 50):.0f}/{percentile(waits, 95):.0f}/{worst_wait:.0f} ms",
        f"max <= 2 slots ({2 * run.slot_ms:.0f} ms)",
        worst_wait <= 2 * run.slot_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--renewals", type=int, default=10_000, help="renewals a day")
    parser.add_argument("--budget", type=int, default=480, help="provider requests per minute")
    parser.add_argument("--discovery-share", type=float, default=Settings.from_env({}).discovery_budget_share)
    parser.add_argument("--discovery-interval", type=float, default=24.0, help="hours between discovery passes")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE, help="customers per list page (the engine's)")
    parser.add_argument("--lose", type=float, default=0.1, help="share of renewal webhooks lost")
    parser.add_argument("--days", type=int, default=4, help="simulated days")
    parser.add_argument("--warmup", type=int, default=2, help="days before measuring (the backlog settles)")
    parser.add_argument("--sample", type=int, default=20_000, help="customers sampled each hour for staleness")
    parser.add_argument("--policy", choices=["urgent", "overdue", "both"], default="both")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    policies = ["urgent", "overdue"] if args.policy == "both" else [args.policy]
    figures = Figures(
        f"Discovery and sweep at scale (simulated): {args.subscribers:,} subscribers, {args.renewals:,} renewals/day, "
        f"{args.budget}/min, discovery share {args.discovery_share}, {args.lose:.0%} of renewal webhooks lost"
    )
    for policy in policies:
        started = time.monotonic()
        run = simulate(args, policy)
        report(args, policy, run, figures, time.monotonic() - started)
    command = "python -m bench.discovery_scale " + " ".join(argv if argv is not None else sys.argv[1:])
    command = command.rstrip()
    figures.print(command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
