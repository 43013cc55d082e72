"""The figures bench/intake.py prints: a column per app, the checks of what the intake stored
and queued, and the targets."""

from __future__ import annotations

import argparse
import statistics
import textwrap
from collections.abc import Callable

from bench.harness import load_line, percentile
from bench.webhook_load import RunResult

TARGET_RATE = 1500.0  # stored-and-queued webhooks/s
TARGET_RATIO = 0.35  # of the bare endpoint's throughput
TARGET_HALF_P99_MS = 25.0
PARTS = ("server", "postgres", "redis", "loadgen", "irq", "other")
WIDTH = 30


def _ms(r: RunResult) -> str:
    return f"{r.ms(50):6.2f} / {r.ms(95):6.2f} / {r.ms(99):6.2f}"


def _slices(r: RunResult) -> str:
    rates = [x.ok_rate for x in r.slices] or [r.ok_rate]
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


def _tail(r: RunResult) -> str:
    t = r.tail_windows()
    return "-" if t is None else f"{t[0]} / {t[1]} / {t[2]}"


def _per_commit(r: RunResult) -> str:
    return "-" if r.rows_per_commit is None else f"{r.rows_per_commit:.2f}"


def _socket_errors(r: RunResult) -> int:
    return sum(v for k, v in r.errors.items() if k not in ("received_rows", "unnamed_rows"))


ROWS: list[tuple[str, Callable[[RunResult], str] | None]] = [
    ("  webhooks/s answered 200 (median)", lambda r: f"{r.ok_rate:,.0f}"),
    ("  slices min-max", _slices),
    ("  connections per worker, each slice", lambda r: " ".join("/".join(map(str, x.split)) or "?" for x in r.slices)),
    ("  latency p50 / p95 / p99 ms", _ms),
    ("  CPU cores: gunicorn/pg/redis/gen/irq/other", lambda r: "/".join(f"{r.cpu.get(k, 0):.2f}" for k in PARTS)),
    ("  CPU ms per webhook: gunicorn/pg/redis", lambda r: "/".join(f"{r.cpu_ms_per_answer(k):.2f}" for k in PARTS[:3])),
    ("  webhooks stored per commit", _per_commit),
    ("  non-200 answers, socket errors", lambda r: f"{r.other}, {_socket_errors(r)}"),
]
HALF_ROWS: list[tuple[str, Callable[[RunResult], str] | None]] = [
    ("  webhooks/s target / achieved", lambda r: f"{r.target_rate or 0:,.0f} / {r.answered_rate:,.0f}"),
    ("  latency p50 / p95 / p99 ms", _ms),
    ("  CPU cores: gunicorn/pg/redis/gen/irq/other", lambda r: "/".join(f"{r.cpu.get(k, 0):.2f}" for k in PARTS)),
    ("  slowest 1%: webhooks / 100-ms windows / most in one", _tail),
    ("  webhooks stored per commit", _per_commit),
    ("  non-200 answers, socket errors", lambda r: f"{r.other}, {_socket_errors(r)}"),
]


def paired_ratio(app: RunResult, baseline: RunResult) -> tuple[float, float, float]:
    """The app's rate over the baseline's, round by round (the slices of one round ran within
    a minute of each other, so they met the same machine), as (median, min, max). The ratio of
    the two medians pairs slices minutes apart: on a shared machine whose speed drifts it
    wanders more (it is printed beside it)."""
    pairs = [a.ok_rate / b.ok_rate for a, b in zip(app.slices, baseline.slices, strict=True) if b.ok_rate > 0]
    if not pairs:
        ratio = app.ok_rate / baseline.ok_rate
        return ratio, ratio, ratio
    return statistics.median(pairs), min(pairs), max(pairs)


def check(r: RunResult) -> tuple[bool, str]:
    """Every 200 answer left one stored row named by one queued message. Proven when the rows match the
    200s one for one; a webhook whose answer was never seen (its connection closed) may have
    been stored, and then a 200 without a row can no longer be ruled out."""
    rows = sum(x.stored[0] for x in r.slices if x.stored)
    queued = sum(x.stored[2] for x in r.slices if x.stored)
    unanswered = r.errors.get("unanswered", 0)
    consistent = (
        queued == rows
        and r.errors.get("unnamed_rows", 0) == 0
        and r.errors.get("received_rows", 0) == 0
        and r.ok <= rows <= r.sent
    )
    proven = consistent and rows == r.ok
    verdict = "OK (every 200 is stored and queued)" if proven else ("NOT PROVEN" if consistent else "MISMATCH")
    notes = f"; {unanswered} connections closed without an answer" if unanswered else ""
    return (
        proven,
        f"{r.sent} sent, {r.ok} answered 200, {rows} rows stored, {queued} named by queued tasks -> {verdict}{notes}",
    )


def report(
    results: dict[str, tuple[RunResult, RunResult]],
    args: argparse.Namespace,
    loadgen: str,
    body_bytes: int,
    probe_us: list[float],
    sentry_envelopes: int,
) -> int:
    """Print the figures; 1 when a check of the stored rows failed (a figure to look at, not an
    assertion: the benchmark stops nothing)."""
    apps = list(results)
    print(
        f"\nWebhook intake benchmark ({load_line()} now): gunicorn -c web/gunicorn_conf.py -k gevent -w {args.workers} "
        f"for every app; {body_bytes} B bodies, unique event ids; per app {args.duration:g} s at max rate and "
        f"{args.half_duration:g} s at half rate, each in {args.rounds} interleaved slices"
    )
    print(textwrap.fill(f"load: {loadgen}", width=110, subsequent_indent="  "))
    print("\n" + " " * 42 + "".join(f"{a:>{WIDTH}}" for a in apps))
    for title, table, phase in (("MAX RATE", ROWS, 0), ("HALF RATE (open loop)", HALF_ROWS, 1)):
        print(title)
        for label, fn in table:
            print(f"{label:<42}" + "".join(f"{fn(results[a][phase]) if fn else '':>{WIDTH}}" for a in apps))
    if probe_us:
        figure = f"{percentile(probe_us, 50) / 1000:.2f} / {percentile(probe_us, 99) / 1000:.2f} / {max(probe_us) / 1000:.0f} ms"
        print(f"{'  PostgreSQL commit alone, p50 / p99 / max':<42}{figure:>{WIDTH * len(apps)}}")
        print("    (one INSERT + commit at a time on an idle connection while the bare app ran: the fsync latency")
        print("     every webhook commit waits for; the intake's half-rate tail cannot be shorter than its stalls)")
    if any(a.endswith("+sentry") for a in results):
        print(f"  Sentry envelopes received by the local receiver: {sentry_envelopes}")
    print()
    all_ok = True
    others = [r.cpu.get("other", 0.0) for pair in results.values() for r in pair if r.cpu]
    if others and max(others) > 0.2:
        print(f"NOTE: up to {max(others):.2f} cores went to other work on this machine: the figures are lower.")
    baselines = {a: results[a][0] for a in apps if a.startswith("bare") and results[a][0].ok_rate > 0}
    print("targets:")
    for app in (a for a in apps if not a.startswith("bare")):
        at_max, at_half = results[app]
        for rate_name, r in (("max", at_max), ("half", at_half)):
            ok, line = check(r)
            all_ok = all_ok and ok
            print(f"  check, {app} at {rate_name} rate: {line}")
        rate = at_max.ok_rate
        print(
            f"  {app}: >= {TARGET_RATE:,.0f} stored-and-queued webhooks/s  {rate:>8,.0f}     {_met(rate >= TARGET_RATE)}"
        )
        for baseline, bare in baselines.items():
            ratio, low, high = paired_ratio(at_max, bare)
            label = f">= {TARGET_RATIO:.0%} of {baseline}"
            spread = f"(rounds {low:.1%}-{high:.1%}; medians {rate / bare.ok_rate:.1%})"
            print(f"  {app}: {label:<38} {ratio:>8.1%}     {_met(ratio >= TARGET_RATIO)}  {spread}")
        p99 = at_half.ms(99)
        print(
            f"  {app}: p99 < {TARGET_HALF_P99_MS:g} ms at half the max rate  {p99:>5.2f} ms     {_met(p99 < TARGET_HALF_P99_MS)}"
        )
    return 0 if all_ok else 1


def _met(ok: bool) -> str:
    return "MET" if ok else "MISSED"
