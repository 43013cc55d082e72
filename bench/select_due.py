"""Benchmark of the sweep's selection, ``select_due(limit=500)``, at 10,000 and 1,000,000
subscribers on PostgreSQL.

The rows are bulk-inserted (INSERT ... SELECT generate_series) with next_check_ms spread over
[now - 2 h, now + 22 h), so about 8 % are due, 1 % of them checks at an expiry (urgent: selected
first, through their partial index), and ANALYZEd after each insert. Prints the median
of ``--runs`` timed runs (each run's lease is undone untimed, so every run sees the same due
set) and EXPLAIN (ANALYZE, BUFFERS) of the SELECT and the UPDATE it issues. Target: the same
order of magnitude at both sizes (the next_check_ms index used).

Uses its own database (emptied at the start). Loopback only.

    python -m bench.select_due
    python -m bench.select_due --sizes 10000,1000000 --runs 9
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Figures, say
from bench.stack import prepare_stores
from bench.sweep import DEFAULT_DB, DEFAULT_REDIS, make_settings

LIMIT = 500
DUE_SPAN_MS = 2 * 3600 * 1000  # generated rows: next check in [now - 2 h, now + 22 h)
CHECK_SPAN_MS = 24 * 3600 * 1000


def wall_ms() -> int:
    return int(time.time() * 1000)


def grow_to(admin, size: int) -> None:
    """Add generated subscribers until there are ``size``, then ANALYZE."""
    from sqlalchemy import text

    with admin.begin() as conn:
        have = int(conn.execute(text("SELECT count(*) FROM subscribers")).scalar_one())
    if have >= size:
        return
    t = time.perf_counter()
    with admin.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (customer_id, dirty, next_check_ms, last_checked_ms, last_snapshot_ms, "
                "snapshot_digest, next_change_ms) SELECT 'sel-' || lpad(g::text, 8, '0'), false, "
                "c, CAST(:now AS bigint) - (random() * :span)::bigint, NULL, NULL, "
                "CASE WHEN g % 100 = 0 THEN c - 600000 END "  # 1 %: a check at an expiry (urgent)
                "FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) AS g, "
                "LATERAL (SELECT CAST(:now AS bigint) - :due + (random() * :span)::bigint + g * 0 AS c) AS t"
            ),
            {"now": wall_ms(), "due": DUE_SPAN_MS, "span": CHECK_SPAN_MS, "a": have + 1, "b": size},
        )
    inserted = time.perf_counter() - t
    with admin.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE subscribers"))
    say(f"{size:>9,} rows: inserted {size - have:,} in {inserted:.1f} s, analyzed")


def measure(admin, engine, runs: int) -> dict[str, Any]:
    """Time ``select_due`` ``runs`` times (after one untimed warm run), undoing each lease."""
    from sqlalchemy import event, text

    from persistence.database import make_session_factory
    from persistence.subscribers import select_due
    from tasks.sweep import SWEEP_LEASE_MS

    factory = make_session_factory(engine)
    captured: list[tuple[str, Any]] = []
    capturing = [False]

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if capturing[0]:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    times, got = [], []
    for k in range(runs + 1):
        now_ms = wall_ms()
        capturing[0] = k == 1
        t = time.perf_counter()
        ids = select_due(factory, now_ms=now_ms, limit=LIMIT, lease_ms=SWEEP_LEASE_MS)
        elapsed = time.perf_counter() - t
        capturing[0] = False
        with admin.begin() as conn:  # the lease undone: the next run sees the same due set
            conn.execute(
                text(
                    "UPDATE subscribers SET next_check_ms = CAST(:now AS bigint) - 1 - (random() * :due)::bigint "
                    "WHERE customer_id = ANY(:ids)"
                ),
                {"now": now_ms, "due": DUE_SPAN_MS, "ids": ids},
            )
        if k:
            times.append(elapsed * 1000)
            got.append(len(ids))
    event.remove(engine, "before_cursor_execute", capture)
    plan: list[str] = []
    with engine.connect() as conn:
        trans = conn.begin()
        for statement, params in captured:
            if statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
                lines = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).scalars().all()
                plan += [f"-- {statement.split()[0]} ({len(lines)} plan lines)", *lines]
        trans.rollback()
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "selected": got,
        "plan": plan,
    }


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy import create_engine, text

    from persistence.database import make_engine

    parser = argparse.ArgumentParser(prog="python -m bench.select_due", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help="a PostgreSQL database of its own (emptied)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per size")
    args = parser.parse_args(argv)
    prepare_stores(args.database_url, None)
    admin = create_engine(args.database_url, connect_args={"application_name": "bench-admin"})
    engine = make_engine(make_settings(args.database_url, DEFAULT_REDIS, Path(tempfile.gettempdir())))
    figures = Figures(f"select_due(limit={LIMIT})")
    medians: dict[int, float] = {}
    for size in sorted(args.sizes):
        grow_to(admin, size)
        with admin.connect() as conn:
            due = int(
                conn.execute(
                    text("SELECT count(*) FROM subscribers WHERE next_check_ms <= :n"), {"n": wall_ms()}
                ).scalar_one()
            )
        r = measure(admin, engine, args.runs)
        # every walk on an index of the check time (the urgent checks' partial one, or all)
        uses_index = any("ix_subscribers_" in line for line in r["plan"]) and not any(
            "Seq Scan" in line for line in r["plan"]
        )
        say(
            f"{size:>9,} rows ({due:,} due): median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f}, "
            f"{args.runs} runs, {r['selected'][0]} selected each), check-time indexes used: {'yes' if uses_index else 'NO'}"
        )
        for line in r["plan"]:
            say("     " + (line if len(line) <= 150 else line[:120] + f" ... ({len(line)} chars)"))
        medians[size] = r["median_ms"]
        figures.add(
            f"select_due({LIMIT}) at {size:,} rows, median", f"{r['median_ms']:.2f} ms", "same order", uses_index
        )
    if len(medians) > 1:
        small, large = min(medians), max(medians)
        ratio = medians[large] / medians[small]
        figures.add(f"select_due ratio {large:,} / {small:,}", f"x{ratio:.2f}", "< x10", ratio < 10)
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text("TRUNCATE subscribers"))
    admin.dispose()
    figures.print(f"python -m bench.select_due --sizes {','.join(map(str, args.sizes))} --runs {args.runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
