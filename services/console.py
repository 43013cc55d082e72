"""What the operator console shows and does, for the web views (web/console/) and the CLI.

Reads are the queries of persistence/console_queries.py put together for one page; changes go
through the services every other path uses (dead letters replayed as the CLI does, a learner
synced through the client flows, outbox rows retried) and each lands in the operator audit log
with the operator's name.
"""

from __future__ import annotations

import csv
import io
import json
import random
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import redis

from engine.course_mapping_csv import format_instant
from engine.ports import Cause
from persistence.console_queries import (
    drift_series,
    event_grant_latencies_ms,
    inbox_hourly_counts,
    inbox_window_counts,
    iter_drift_rows,
    unknown_products,
)
from persistence.inbox_rows import RowFilter, statuses
from persistence.models import UnknownProduct
from persistence.operator_log import log_action
from persistence.outbox_rows import OutboxFilter, Retried, retry_failed
from services.client import sync_user
from services.clock import wall_clock_ms
from services.dead_letters import replay_dead_letters
from services.pipeline_state import PipelineState, pipeline_state
from services.wiring import Wiring, discovery_tick_s

HOUR_MS = 3_600_000
# Window -> (length, chart bucket): about 12 to 28 bars whatever the window.
WINDOWS: dict[str, tuple[int, int]] = {
    "1h": (HOUR_MS, 5 * 60_000),
    "24h": (24 * HOUR_MS, HOUR_MS),
    "7d": (7 * 24 * HOUR_MS, 6 * HOUR_MS),
}
SUCCESS_TARGET = 0.999
LATENCY_TARGET_MS = 30_000
LATENCY_SAMPLE = 500  # enough for p95 within about a percentile; one lookup of their webhooks
REPLAY_WATCH_TTL_S = 24 * 3600


def window_bounds(window: str, now_ms: int) -> tuple[int, int, int]:
    """(since, until, chart bucket) of a named window ending now; KeyError for another name."""
    length, bucket = WINDOWS[window]
    return now_ms - length, now_ms, bucket


def percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile of values sorted ascending (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(p * 1000) * len(sorted_values) // 100_000))  # ceil(p% of n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class JobRun:
    job: str
    every_s: int  # how often beat runs it
    last_ms: int | None

    def late(self, now_ms: int) -> bool:
        return self.last_ms is None or now_ms - self.last_ms > 3 * self.every_s * 1000


@dataclass(frozen=True)
class Overview:
    window: str
    since_ms: int
    until_ms: int
    bucket_ms: int
    by_status: dict[str, int]
    latencies_ms: list[int]
    drift: list[tuple[int, str, int]]  # (bucket start, kind, repairs)
    state: PipelineState
    unknown: list[UnknownProduct]
    jobs: list[JobRun]

    @property
    def received(self) -> int:
        return sum(self.by_status.values())

    @property
    def processed(self) -> int:
        return self.by_status.get("processed", 0)

    @property
    def failed(self) -> int:
        """Attempts that failed short of a dead letter: retrying, degraded, malformed."""
        return sum(self.by_status.get(s, 0) for s in ("retrying", "degraded", "malformed"))

    @property
    def dead(self) -> int:
        return self.by_status.get("dead", 0)

    @property
    def success_rate(self) -> float | None:
        """Processed among the webhooks meant to be processed that ended (processed, degraded,
        dead); ignored, malformed and unfinished ones are left out. None: none ended."""
        ended = self.processed + self.by_status.get("degraded", 0) + self.dead
        return self.processed / ended if ended else None

    @property
    def p50_ms(self) -> int | None:
        return percentile(self.latencies_ms, 50)

    @property
    def p95_ms(self) -> int | None:
        return percentile(self.latencies_ms, 95)

    @property
    def drift_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for _, kind, n in self.drift:
            totals[kind] = totals.get(kind, 0) + n
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def beat_jobs(wiring: Wiring) -> dict[str, int]:
    """The beat jobs and how often each runs (tasks/celery_app.py beat_schedule)."""
    s = wiring.settings
    jobs = {"sweep": s.sweep_interval_s, "inbox-redrive": max(15, s.redrive_after_s // 2), "grants-expire": 60}
    if s.openedx_enabled:
        jobs["lms-drain"] = s.sink_drain_interval_s
    if s.revenuecat_v2_enabled:
        jobs["discovery"] = discovery_tick_s(s)
    return jobs


def _hour_ttl_s(hour_ms: int, now_ms: int) -> int:
    """How long the counts of a whole past hour are kept: its rows still change while they are
    processed (a minute), then only when replayed (5 minutes, an hour after the first day)."""
    ended_ago_ms = now_ms - (hour_ms + HOUR_MS)
    if ended_ago_ms < HOUR_MS:
        return 60
    if ended_ago_ms < 24 * HOUR_MS:
        return 300
    return 3600 + random.randint(-600, 600)  # spread out: not every old hour expires at once


def window_counts(wiring: Wiring, *, since_ms: int, until_ms: int, now_ms: int) -> dict[str, int]:
    """Webhooks received in the window by status. Its whole hours are counted once and kept in
    Redis for a while (``_hour_ttl_s``); the partial hours at its ends are counted each time.
    A week of a million webhooks costs one pass over them a minute, not one per page."""
    factory = wiring.session_factory
    first = -(-since_ms // HOUR_MS) * HOUR_MS
    last = until_ms // HOUR_MS * HOUR_MS
    if last <= first:
        return inbox_window_counts(factory, since_ms=since_ms, until_ms=until_ms)
    totals = inbox_window_counts(factory, since_ms=since_ms, until_ms=first)
    for status, n in inbox_window_counts(factory, since_ms=last, until_ms=until_ms).items():
        totals[status] = totals.get(status, 0) + n
    hours = list(range(first, last, HOUR_MS))
    keys = [f"console:inbox-hour:{h}" for h in hours]
    try:
        stored = cast("list[bytes | None]", wiring.redis.mget(keys))
    except redis.RedisError:
        stored = [None] * len(hours)
    by_hour = {h: json.loads(raw) for h, raw in zip(hours, stored, strict=True) if raw is not None}
    missing = [h for h in hours if h not in by_hour]
    for run in _contiguous(missing):
        fresh = inbox_hourly_counts(factory, since_ms=run[0], until_ms=run[-1] + HOUR_MS)
        try:
            pipe = wiring.redis.pipeline(transaction=False)
            for h in run:
                by_hour[h] = fresh.get(h, {})
                pipe.set(f"console:inbox-hour:{h}", json.dumps(by_hour[h]), ex=_hour_ttl_s(h, now_ms))
            pipe.execute()
        except redis.RedisError:
            by_hour.update({h: fresh.get(h, {}) for h in run})
    for counts in by_hour.values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    return totals


def _contiguous(hours: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for h in hours:
        if runs and runs[-1][-1] + HOUR_MS == h:
            runs[-1].append(h)
        else:
            runs.append([h])
    return runs


def overview(wiring: Wiring, window: str, *, now_ms: int | None = None) -> Overview:
    now = wall_clock_ms() if now_ms is None else now_ms
    since, until, bucket = window_bounds(window, now)
    factory = wiring.session_factory
    runs = wiring.metrics.job_runs()
    return Overview(
        window=window,
        since_ms=since,
        until_ms=until,
        bucket_ms=bucket,
        by_status=window_counts(wiring, since_ms=since, until_ms=until, now_ms=now),
        latencies_ms=event_grant_latencies_ms(factory, since_ms=since, until_ms=until, sample=LATENCY_SAMPLE),
        drift=drift_series(factory, since_ms=since, until_ms=until, bucket_ms=bucket),
        state=pipeline_state(wiring, now_ms=now),
        unknown=unknown_products(factory),
        jobs=[JobRun(job, every, runs.get(job)) for job, every in beat_jobs(wiring).items()],
    )


# --- changes ---------------------------------------------------------------------------------


def replay(wiring: Wiring, f: RowFilter, *, actor: str, enqueue: Callable[[int], None]) -> list[int]:
    """Replay the dead letters matching ``f`` (logged with ``actor`` by the dead-letter service);
    ``enqueue(inbox_id)`` sends each to the workers (the app's Celery)."""
    return replay_dead_letters(
        wiring.session_factory,
        RowFilter(**{**f.__dict__, "status": "dead"}),
        actor=actor,
        enqueue=enqueue,
        now_ms=wall_clock_ms(),
    )


def remember_replay(wiring: Wiring, ids: list[int]) -> str:
    """Keep the ids of a replay for a day under a random token: the page watching them."""
    token = secrets.token_urlsafe(12)
    wiring.redis.set(f"console:replay:{token}", json.dumps(ids), ex=REPLAY_WATCH_TTL_S)
    return token


@dataclass(frozen=True)
class ReplayProgress:
    ids: list[int]
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return sum(n for s, n in self.by_status.items() if s in {"received", "processing", "retrying"})


def replay_progress(wiring: Wiring, token: str) -> ReplayProgress | None:
    raw = wiring.redis.get(f"console:replay:{token}")
    if raw is None:
        return None
    ids = [int(i) for i in json.loads(cast(bytes, raw))]
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        for status in statuses(wiring.session_factory, ids[start : start + 1000]).values():
            counts[status] = counts.get(status, 0) + 1
    return ReplayProgress(ids, counts)


def sync_learner(wiring: Wiring, app_user_id: str, *, actor: str) -> list[str]:
    """Re-read a learner from the provider now and converge (as a client's sync does); the
    changes made, each as "action resource". Transient/terminal errors are raised to the view."""
    result = sync_user(wiring.client_flows, app_user_id)
    changes = [f"{a.kind} {a.resource}" for a in result.actions]
    log_action(
        wiring.session_factory,
        actor=actor,
        action="learner.sync",
        target=app_user_id,
        detail={"customer_id": result.customer_id, "changes": changes, "cause": Cause("request", "sync").kind},
        now_ms=wall_clock_ms(),
    )
    return changes


def retry_outbox(wiring: Wiring, f: OutboxFilter, *, actor: str, drain: Callable[[str], object]) -> Retried:
    """Put failed LMS changes back in line, log it, and have each learner's rows drained
    (``drain(customer_id)``: the app's Celery)."""
    result = retry_failed(wiring.session_factory, f, now_ms=wall_clock_ms())
    log_action(
        wiring.session_factory,
        actor=actor,
        action="outbox.retry",
        target=",".join(map(str, result.retried[:20])) + ("..." if len(result.retried) > 20 else ""),
        detail={
            "filter": {k: v for k, v in f.__dict__.items() if v is not None},
            "retried": len(result.retried),
            "superseded": len(result.superseded),
        },
        now_ms=wall_clock_ms(),
    )
    if wiring.course_sink is not None:
        for customer_id in result.customers:
            drain(customer_id)
    return result


# --- CSV ---------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (= + - @, tab, CR)
    is prefixed with an apostrophe (OWASP's CSV injection advice)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def drift_csv(wiring: Wiring, window: str, kind: str | None, *, now_ms: int | None = None) -> Iterator[str]:
    """The drift repairs of a window as CSV, a page of rows at a time (streamed)."""
    since, until, _ = window_bounds(window, wall_clock_ms() if now_ms is None else now_ms)
    yield from _csv_lines(
        ["at", "customer_id", "resource", "action", "drift_kind", "cause", "cause_ref", "before", "after"],
        (
            [
                format_instant(r.at_ms),
                *(r.customer_id, r.resource, r.action, r.drift_kind, r.cause_kind, r.cause_ref),
                *(r.before or "", r.after or ""),
            ]
            for r in iter_drift_rows(wiring.session_factory, since_ms=since, until_ms=until, kind=kind)
        ),
    )


def _csv_lines(header: list[str], rows: Iterable[list[object]]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
        if out.tell() > 64 * 1024:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()
