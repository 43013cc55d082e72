"""Per-user cost of ``project_access`` + ``diff_access`` (run: ``python -m bench.projection``).

For a user with 1, 10 and 100 ledger transactions (a realistic mix: consecutive periods of two
subscription products where only the last is active, stacking credit packs, a lifetime course,
one refunded, one sandbox and one unknown-product transaction), measures the pure CPU cost of

    projection = project_access(transactions, catalog, now_ms)
    diff_access(projection.accesses, granted)

with ``granted`` (a) equal to the desired access (no-op diff, the common case) and (b) slightly
different (one access missing, one with a wrong expiry). A same-run baseline -- a trivial Python
loop building the same number of ``Access`` objects per user -- lets numbers taken on noisy
shared machines be compared as ratios.

Timing: ``time.perf_counter_ns``, a warm-up, then ROUNDS rounds of N calls each (N calibrated
so a round lasts about ROUND_TARGET_S; the three measurements of one size alternate round by
round); the median round is reported in microseconds per user.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from engine.access import Access
from engine.catalog import DAY_MS, Catalog, load_catalog
from engine.facts import Transaction, TxKind
from engine.plan import diff_access
from engine.projection import project_access

CATALOG_PATH = Path(__file__).resolve().parent.parent / "config" / "catalog.toml"
SIZES = (1, 10, 100)
ROUNDS = 7
ROUND_TARGET_S = 0.08
WARMUP_S = 0.05

NOW_MS = 1_750_000_000_000  # 2025-06-15
HOUR_MS = 3_600_000
CUSTOMER = "cust_bench"
MONTH_MS = 30 * DAY_MS
YEAR_MS = 365 * DAY_MS


def _tx(tx_id: int, product_id: str, kind: TxKind, purchased_ms: int, **extra: Any) -> Transaction:
    return Transaction(
        transaction_id=str(tx_id),
        product_id=product_id,
        kind=kind,
        original_transaction_id=str(extra.pop("original", tx_id)),
        store=str(extra.pop("store", "app_store")),
        is_sandbox=bool(extra.pop("is_sandbox", False)),
        purchased_ms=purchased_ms,
        period_type="normal",
        ownership="PURCHASED",
        owner=CUSTOMER,
        **extra,
    )


def _subscription_chain(first_id: int, product_id: str, count: int, period_ms: int) -> list[Transaction]:
    """``count`` consecutive renewals; only the last one is still running at NOW_MS."""
    # The last period started 10 days ago, so it ends period_ms - 10 days from now.
    last_start = NOW_MS - 10 * DAY_MS
    txs = []
    for i in range(count):
        start = last_start - (count - 1 - i) * period_ms
        txs.append(
            _tx(first_id + i, product_id, "subscription", start, original=first_id, expires_ms=start + period_ms)
        )
    return txs


def build_transactions(n: int) -> list[Transaction]:
    """A realistic ledger of exactly ``n`` transactions for one user."""
    if n == 1:
        return _subscription_chain(1_000_000_000, "me.example.app.premium_monthly", 1, MONTH_MS)
    fixed = [
        # Lifetime course.
        _tx(3_000_000_000, "me.hypnoelp.app.h01enb", "non_subscription", NOW_MS - 200 * DAY_MS),
        # One refunded credit pack.
        _tx(
            3_000_000_001,
            "geometry_pack_30",
            "non_subscription",
            NOW_MS - 40 * DAY_MS,
            refunded_ms=NOW_MS - 39 * DAY_MS,
        ),
        # One sandbox (test) subscription: grants nothing by default.
        _tx(
            3_000_000_002,
            "premium_yearly",
            "subscription",
            NOW_MS - 3 * DAY_MS,
            is_sandbox=True,
            expires_ms=NOW_MS + HOUR_MS,
        ),
        # One product the catalog does not know.
        _tx(3_000_000_003, "me.example.app.legacy_bundle", "non_subscription", NOW_MS - 500 * DAY_MS),
    ]
    packs_count = max(2, n // 10)
    # Credit packs that stack: bought in a burst recently, so the chain runs into the future.
    packs = [
        _tx(
            4_000_000_000 + i,
            "me.example.app.geometry_pack_30",
            "non_subscription",
            NOW_MS - (packs_count - i) * 2 * DAY_MS,
        )
        for i in range(packs_count)
    ]
    periods = n - len(fixed) - packs_count
    yearly_count = max(1, periods // 6)
    monthly_count = periods - yearly_count
    txs = (
        _subscription_chain(1_000_000_000, "me.example.app.premium_monthly", monthly_count, MONTH_MS)
        + _subscription_chain(2_000_000_000, "premium_yearly", yearly_count, YEAR_MS)
        + fixed
        + packs
    )
    assert len(txs) == n, (n, len(txs))
    return txs


def granted_variants(desired: tuple[Access, ...]) -> tuple[tuple[Access, ...], tuple[Access, ...]]:
    """(a) equal to ``desired`` (fresh objects); (b) one access missing, one with a wrong expiry."""
    same = tuple(Access(a.resource, a.mode, a.expires_ms, a.sources) for a in desired)
    assert len(desired) >= 2, "need at least two accesses to perturb"
    _missing, wrong, *rest = desired
    wrong_expiry = (wrong.expires_ms or NOW_MS + YEAR_MS) - 5 * DAY_MS
    changed = (Access(wrong.resource, wrong.mode, wrong_expiry, wrong.sources), *rest)
    return same, tuple(sorted(changed, key=lambda a: a.resource))


def _calibrate(fn, target_s: float) -> int:
    """Calls per round so that a round takes about ``target_s`` seconds (also warms up)."""
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        fn(n)
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= WARMUP_S * 1e9 or n >= 1 << 24:
            return max(1, int(n * target_s * 1e9 / max(elapsed, 1)))
        n *= 2


def _median_us_per_call(*fns) -> list[float]:
    """Median-round microseconds per call of each ``fn``; rounds interleave the fns so that
    machine noise (other tenants, frequency changes) hits all of them alike."""
    counts = [_calibrate(fn, ROUND_TARGET_S) for fn in fns]
    rounds: list[list[float]] = [[] for _ in fns]
    for _ in range(ROUNDS):
        for fn, n, out in zip(fns, counts, rounds, strict=False):
            t0 = time.perf_counter_ns()
            fn(n)
            out.append((time.perf_counter_ns() - t0) / n)
    return [statistics.median(r) / 1000.0 for r in rounds]


def _project_and_diff_loop(txs: list[Transaction], catalog: Catalog, granted: tuple[Access, ...]):
    def run(n: int) -> None:
        project, diff, now = project_access, diff_access, NOW_MS
        for _ in range(n):
            projection = project(txs, catalog, now)
            diff(projection.accesses, granted)

    return run


def _baseline_loop(k: int):
    """Trivial loop: build ``k`` Access objects per user (the projection's output size)."""
    sources = ("1",)

    def run(n: int) -> None:
        make, now = Access, NOW_MS
        for _ in range(n):
            out = []
            for i in range(k):
                out.append(make("module:algebra", "full", now + i, sources))

    return run


def main() -> int:
    catalog = load_catalog(CATALOG_PATH)
    rows = []
    started = time.perf_counter()
    for size in SIZES:
        txs = build_transactions(size)
        projection = project_access(txs, catalog, NOW_MS)
        same, changed = granted_variants(projection.accesses)
        assert diff_access(projection.accesses, same) == []
        actions = diff_access(projection.accesses, changed)
        assert sorted(a.kind for a in actions) in (["extend", "grant"], ["grant", "shorten"]), actions
        noop_us, change_us, base_us = _median_us_per_call(
            _project_and_diff_loop(txs, catalog, same),
            _project_and_diff_loop(txs, catalog, changed),
            _baseline_loop(len(projection.accesses)),
        )
        rows.append((size, len(projection.accesses), noop_us, change_us, base_us, projection.unknown_products))

    print(f"project_access + diff_access, per user (median of {ROUNDS} rounds; Python {sys.version.split()[0]})")
    header = (
        f"{'transactions':>12}  {'accesses':>8}  {'us/user (no-op diff)':>20}  "
        f"{'us/user (with changes)':>22}  {'baseline us':>11}  {'no-op/base':>10}  {'changes/base':>12}"
    )
    print(header)
    print("-" * len(header))
    for size, n_access, noop_us, change_us, base_us, _unknown in rows:
        print(
            f"{size:>12}  {n_access:>8}  {noop_us:>20.2f}  {change_us:>22.2f}  {base_us:>11.3f}  "
            f"{noop_us / base_us:>9.1f}x  {change_us / base_us:>11.1f}x"
        )
    print(
        "baseline: a plain loop building the same number of Access objects per user "
        f"(total run {time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
