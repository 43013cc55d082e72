"""How the console writes numbers, durations and times (Jinja filters), and its drift chart
(an SVG drawn on the server: readable without JavaScript)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request, url_for

from persistence.console_queries import to_ms
from services.clock import wall_clock_ms

# One colour per drift kind (LMS kinds in cooler tones); others cycle through the spare ones.
KIND_COLOURS = {
    "missed_grant": "#d9480f",
    "missed_revocation": "#7048e8",
    "wrong_expiry": "#f08c00",
    "wrong_mode": "#c2255c",
    "undiscovered_customer": "#e03131",
    "lms_missing": "#1971c2",
    "lms_inactive": "#0c8599",
    "lms_wrong_mode": "#2f9e44",
    "lms_not_deactivated": "#5c7cfa",
}
SPARE_COLOURS = ("#868e96", "#e64980", "#94d82d", "#15aabf")


def colour_of(kind: str) -> str:
    return KIND_COLOURS.get(kind) or SPARE_COLOURS[sum(map(ord, kind)) % len(SPARE_COLOURS)]


def as_ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_ms(value)
    return int(value)


def utc(value: Any, seconds: bool = True) -> str:
    """``2026-12-03 14:05:12 UTC`` from ms since the epoch or a datetime."""
    ms = as_ms(value)
    if ms is None:
        return "—"
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def iso(value: Any) -> str:
    ms = as_ms(value)
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    """850 ms, 4.2 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours, minutes = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ago(value: Any, now_ms: int | None = None) -> str:
    """``3 min ago`` / ``in 5 min`` relative to now."""
    ms = as_ms(value)
    if ms is None:
        return "never"
    delta = ((wall_clock_ms() if now_ms is None else now_ms) - ms) / 1000
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def number(value: Any) -> str:
    return "—" if value is None else f"{value:,}"


def percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def pretty_json(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value)
        except ValueError:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def access_summary(value: str | None) -> str:
    """An audit row's before/after JSON as ``full until 2026-12-03 14:05 UTC``."""
    if not value:
        return "—"
    try:
        state = json.loads(value)
    except ValueError:
        return value
    if "is_active" in state:  # an LMS enrollment
        return f"{state.get('mode')} ({'active' if state.get('is_active') else 'inactive'})"
    expires = state.get("expires_ms")
    return f"{state.get('mode')} {'until ' + utc(expires, seconds=False) if expires else 'forever'}"


def page_url(key: str, value: object) -> str:
    """This page's URL with one query parameter changed (removed when empty): pagers."""
    args: dict[str, Any] = request.args.to_dict()
    args.pop(key, None)
    if value not in (None, ""):
        args[key] = str(value)
    return url_for(request.endpoint or "console.overview", **(request.view_args or {}), **args)


def register_filters(app: Flask) -> None:
    app.jinja_env.globals["page_url"] = page_url
    app.jinja_env.filters.update(
        utc=utc,
        iso=iso,
        ago=ago,
        duration=duration,
        number=number,
        percent=percent,
        pretty_json=pretty_json,
        access=access_summary,
        colour=colour_of,
    )


# --- the drift chart -------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    kind: str
    count: int
    y: float
    height: float
    colour: str


@dataclass(frozen=True)
class Bar:
    start_ms: int
    x: float
    width: float
    total: int
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int  # the y axis' maximum (a round number)
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # x, label
    levels: list[tuple[float, int]]  # y, repairs: the horizontal grid lines
    kinds: list[tuple[str, str]]  # legend: kind, colour
    plot_left: int = 44


def _round_up(n: int) -> int:
    for step in (1, 2, 5):
        for scale in (1, 10, 100, 1000, 10_000, 100_000, 1_000_000):
            if step * scale >= n:
                return step * scale
    return n


def drift_chart(
    series: list[tuple[int, str, int]],
    *,
    since_ms: int,
    until_ms: int,
    bucket_ms: int,
    width: int = 960,
    height: int = 220,
) -> Chart:
    """Stacked bars of repairs per bucket and kind over the window."""
    buckets = max(1, -(-(until_ms - since_ms) // bucket_ms))
    per_bucket: dict[int, dict[str, int]] = {}
    for start, kind, n in series:
        per_bucket.setdefault(start, {})[kind] = n
    kinds = sorted({k for _, k, _ in series})
    top = _round_up(max((sum(v.values()) for v in per_bucket.values()), default=0) or 1)
    left, bottom = 44, 24
    plot_w, plot_h = width - left - 8, height - bottom - 8
    slot = plot_w / buckets
    bars = []
    for i in range(buckets):
        start = since_ms + i * bucket_ms
        counts = per_bucket.get(start, {})
        y: float = 8 + plot_h
        segments = []
        for kind in kinds:
            n = counts.get(kind, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            segments.append(Segment(kind, n, y, h, colour_of(kind)))
        bars.append(Bar(start, left + i * slot + slot * 0.12, slot * 0.76, sum(counts.values()), segments))
    every = max(1, buckets // 6)
    day_long = until_ms - since_ms > 2 * 86_400_000
    ticks = [
        (bars[i].x + bars[i].width / 2, utc(bars[i].start_ms)[5 if day_long else 11 : 16])
        for i in range(0, buckets, every)
    ]
    values = sorted({0, top // 2, top} if top % 2 == 0 else {0, top})
    levels = [(8 + plot_h * (1 - v / top), v) for v in values]
    return Chart(width, height, top, bars, ticks, levels, [(k, colour_of(k)) for k in kinds])
