"""When a v1 read must be followed by the customer's v2 history (engine.history), table-driven,
and the facts a history adds that v1 cannot give: a refund reversed after a renewal (the period
runs past the refund again), every period of a credit subscription credited once, and a history
read without purchases that says nothing of them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.catalog import DAY_MS, parse_catalog
from engine.facts import Transaction, TransactionObservation, merge_observation, observe_snapshot
from engine.history import HistoryMark, history_check_due, history_need, history_products
from engine.projection import project_access
from engine.revenuecat import parse_subscriber
from engine.revenuecat_v2 import V2CustomerRead, parse_customer_history
from tests.engine.reconcile_support import lessons_history

T0 = 1_800_000_000_000
PERIOD = 7 * DAY_MS  # a weekly subscription, each paid week a 30-day package
PACKAGE = 30 * DAY_MS
CATALOG = parse_catalog(
    {
        "products": {
            "lessons": {
                "store_ids": ["lessons_monthly"],
                "kind": "subscription",
                "grants": [{"resource": "module:lessons", "mode": "basic", "policy": "credit", "days": 30}],
            },
            "premium": {
                "store_ids": ["premium_monthly"],
                "kind": "subscription",
                "grants": [{"resource": "module:algebra", "mode": "full", "policy": "period"}],
            },
            "course": {
                "store_ids": ["h01enb"],
                "kind": "consumable",
                "grants": [{"resource": "course:H01ENB", "mode": "paid", "policy": "lifetime"}],
            },
        }
    }
)


def v1(*subscriptions: tuple[str, str, int, int], refunded: dict[str, int] | None = None, request_ms: int = 0):
    """A v1 snapshot of ana listing (product, tx id, purchase, chain start), read a day into the
    latest period unless ``request_ms`` says when."""
    body = {
        "request_date_ms": request_ms or max(start for _, _, start, _ in subscriptions) + DAY_MS,
        "subscriber": {
            "original_app_user_id": "ana",
            "subscriptions": {
                product: {
                    "store_transaction_id": tx_id,
                    "purchase_date": start,
                    "original_purchase_date": began,
                    "expires_date": start + PERIOD,
                    "refunded_at": (refunded or {}).get(tx_id),
                    "store": "app_store",
                    "period_type": "normal",
                }
                for product, tx_id, start, began in subscriptions
            },
            "non_subscriptions": {"h01enb": [{"id": "c1", "store_transaction_id": "c1", "purchase_date": T0}]},
        },
    }
    return parse_subscriber(body)


def period(tx_id: str, k: int, *, product="lessons_monthly", refunded=None, owner="ana", expires=None) -> Transaction:
    start = T0 + k * PERIOD
    return Transaction(
        tx_id,
        product_id=product,
        kind="subscription",
        store="app_store",
        purchased_ms=start,
        period_type="normal",
        ownership="PURCHASED",
        expires_ms=expires if expires is not None else start + PERIOD,
        refunded_ms=refunded,
        owner=owner,
    )


def at(k: int) -> int:
    return T0 + k * PERIOD


@pytest.mark.parametrize(
    ("ledger", "snapshot", "expected"),
    [
        # A period product: the latest period is all its access depends on.
        ([], v1(("premium_monthly", "p4", at(3), at(0))), None),
        # A first period: nothing before it.
        ([], v1(("lessons_monthly", "t0", at(0), at(0))), None),
        # Renewed on time, every period seen: v1 is enough.
        ([period("t0", 0), period("t1", 1)], v1(("lessons_monthly", "t2", at(2), at(0))), None),
        ([period("t0", 0), period("t1", 1), period("t2", 2)], v1(("lessons_monthly", "t2", at(2), at(0))), None),
        # Every webhook lost: the ledger first sees the fourth period of a chain begun at 0.
        ([], v1(("lessons_monthly", "t3", at(3), at(0))), ("chain_start", {"lessons_monthly"}, False)),
        # An older subscription transferred in: its latest period, none before it, begun earlier.
        ([period("t3", 3)], v1(("lessons_monthly", "t3", at(3), at(0))), ("chain_start", {"lessons_monthly"}, False)),
        # Two renewals missed between the ledger's latest and v1's.
        (
            [period("t0", 0)],
            v1(("lessons_monthly", "t3", at(3), at(0))),
            ("missed_periods", {"lessons_monthly"}, False),
        ),
        # Merged already (the need is decided after the v1 reconcile): the gap stays visible.
        (
            [period("t0", 0), period("t3", 3)],
            v1(("lessons_monthly", "t3", at(3), at(0))),
            ("missed_periods", {"lessons_monthly"}, False),
        ),
        # An older period refunded while it ran (its expiry cut): only v2 would show a reversal.
        (
            [period("t0", 0, refunded=at(0) + DAY_MS, expires=at(0) + DAY_MS), period("t1", 1)],
            v1(("lessons_monthly", "t1", at(1), at(0))),
            ("older_refund", {"lessons_monthly"}, True),
        ),
        # Refunded after its period ended: v2 shows the same expiry either way, nothing to read.
        (
            [period("t0", 0, refunded=at(3)), period("t1", 1)],
            v1(("lessons_monthly", "t1", at(1), at(0))),
            None,
        ),
        # The latest period's refund is v1's to state.
        ([period("t0", 0, refunded=at(0) + DAY_MS)], v1(("lessons_monthly", "t0", at(0), at(0))), None),
        # Several reasons: the first is reported, every product concerned is read; it recurs.
        (
            [period("t0", 0, refunded=at(0) + DAY_MS, expires=at(0) + DAY_MS), period("t1", 1)],
            v1(("lessons_monthly", "t4", at(4), at(0))),
            ("missed_periods", {"lessons_monthly"}, True),
        ),
        # Periods another customer owns are not this one's.
        ([period("t0", 0, owner="ben")], v1(("lessons_monthly", "t0", at(0), at(0))), None),
    ],
)
def test_when_the_latest_period_is_not_enough(ledger, snapshot, expected):
    owned = [t for t in ledger if t.owner == snapshot.customer_id]
    need = history_need(owned, snapshot, CATALOG)
    if expected is None:
        assert need is None
    else:
        reason, products, recurring = expected
        assert need is not None and (need.reason, set(need.products), need.recurring) == (reason, products, recurring)


def test_a_customer_seen_before_a_new_chain_began_has_its_history_read_once():
    # A new chain (v1: begun with its latest period), nothing earlier in the ledger, but the
    # customer was seen a week before: an earlier subscription may have ended unseen.
    snapshot = replace(v1(("lessons_monthly", "t1", at(1), at(1))), first_seen_ms=at(0))
    need = history_need([period("t1", 1)], snapshot, CATALOG)
    assert need is not None and (need.reason, set(need.products), need.recurring) == (
        "seen_before",
        {"lessons_monthly"},
        False,
    )
    # Read since the chain began (or seen only as it began): nothing can have been missed.
    assert history_need([period("t1", 1)], snapshot, CATALOG, history_read_ms=at(1) + DAY_MS) is None
    assert history_need([], replace(snapshot, first_seen_ms=at(1)), CATALOG) is None
    # A read before the new chain began does not cover it.
    assert history_need([], snapshot, CATALOG, history_read_ms=at(0) + DAY_MS) is not None


def test_only_products_granting_per_transaction_can_need_a_history():
    snapshot = v1(("premium_monthly", "p1", at(1), at(0)), ("lessons_monthly", "t1", at(1), at(1)))
    assert history_products(snapshot, CATALOG) == {"lessons_monthly"}
    assert history_products(v1(("premium_monthly", "p1", at(1), at(0))), CATALOG) == frozenset()


@pytest.mark.parametrize(
    ("mark", "digest", "now", "due"),
    [
        (None, "d1", at(5), True),  # never decided
        (HistoryMark("d1", at(5), None), "d1", at(9), False),  # v1 answers the same: decided
        (HistoryMark("d1", at(5), "chain_start", read_ms=at(5)), "d1", at(9), False),  # read, nothing new
        (HistoryMark("d1", at(5), "chain_start", read_ms=at(5)), "d2", at(5), True),  # v1 changed
        # A recurring need waits for its interval since the last read.
        (HistoryMark("d1", at(5), "older_refund", True, at(5)), "d1", at(5) + DAY_MS - 1, False),
        (HistoryMark("d1", at(5), "older_refund", True, at(5)), "d1", at(5) + DAY_MS, True),
    ],
)
def test_a_history_is_decided_again_only_when_v1_changed_or_a_recurring_need_is_due(mark, digest, now, due):
    assert history_check_due(mark, digest, now, reread_ms=DAY_MS) is due


def history(request_ms: int, periods: list[tuple[str, int, int]], *, purchases=None) -> V2CustomerRead:
    """ana's v2 history of one App Store lessons subscription: (tx id, start, expiry as v2 reports)."""
    return lessons_history(request_ms, periods, product="lessons_monthly", purchases=purchases)


def merge_in(ledger: dict[str, Transaction], snapshot) -> dict[str, Transaction]:
    named = {o.transaction_id for o in snapshot.observations}
    known = {k: t for k, t in ledger.items() if t.owner == snapshot.customer_id or k in named}
    return {**ledger, **{t.transaction_id: t for t in observe_snapshot(known, snapshot)}}


def test_a_refund_reversed_after_a_renewal_reaches_the_ledger_through_the_history():
    refund_at = at(0) + 5 * DAY_MS
    # v1 saw the refund while t0 was the latest period (its expiry cut at the refund).
    ledger = merge_in(
        {}, v1(("lessons_monthly", "t0", at(0), at(0)), refunded={"t0": refund_at}, request_ms=at(0) + 6 * DAY_MS)
    )
    assert ledger["t0"].refunded_ms == refund_at
    ledger = merge_in(ledger, parse_subscriber_at(at(1) + DAY_MS, "t1", at(1)))  # renewed: v1 shows t1 only
    assert ledger["t0"].refunded_ms == refund_at
    # Not reversed yet: v2 reports t0 ending at the refund, which stands.
    still = history(at(1) + 2 * DAY_MS, [("t0", at(0), refund_at), ("t1", at(1), at(2))])
    ledger = merge_in(ledger, parse_customer_history(still).snapshot)
    assert ledger["t0"].refunded_ms == refund_at
    # Reversed: t0 runs to its end again.
    reversed_ = history(at(1) + 3 * DAY_MS, [("t0", at(0), at(1)), ("t1", at(1), at(2))])
    ledger = merge_in(ledger, parse_customer_history(reversed_).snapshot)
    assert ledger["t0"].refunded_ms is None
    accesses = project_access([t for t in ledger.values() if t.owner == "ana"], CATALOG, at(1) + 4 * DAY_MS).accesses
    assert [(a.resource, a.expires_ms) for a in accesses if a.resource == "module:lessons"] == [
        ("module:lessons", at(0) + 2 * PACKAGE)  # two packages: t0 (restored) and t1, stacked
    ]


def parse_subscriber_at(request_ms: int, tx_id: str, start: int):
    return parse_subscriber(
        {
            "request_date_ms": request_ms,
            "subscriber": {
                "original_app_user_id": "ana",
                "subscriptions": {
                    "lessons_monthly": {
                        "store_transaction_id": tx_id,
                        "purchase_date": start,
                        "original_purchase_date": at(0),
                        "expires_date": start + PERIOD,
                        "store": "app_store",
                    }
                },
                "non_subscriptions": {"h01enb": [{"id": "c1", "store_transaction_id": "c1", "purchase_date": T0}]},
            },
        }
    )


@pytest.mark.parametrize("order", ["refund first", "history first"])
def test_a_reversal_seen_by_a_later_history_wins_in_either_order(order):
    """The same two statements merged in either order give the same fact."""
    refund = TransactionObservation("t0", observed_ms=at(0) + 6 * DAY_MS, refunded_ms=at(0) + 5 * DAY_MS)
    runs_on = TransactionObservation("t0", observed_ms=at(1) + DAY_MS, unrefunded_until_ms=at(1))
    first, second = (refund, runs_on) if order == "refund first" else (runs_on, refund)
    merged = merge_observation(merge_observation(None, first), second)
    assert merged is not None and merged.refunded_ms is None
    # A refund stated after that history holds.
    again = TransactionObservation("t0", observed_ms=at(1) + 2 * DAY_MS, refunded_ms=at(1) + 2 * DAY_MS)
    refunded = merge_observation(merged, again)
    assert refunded is not None and refunded.refunded_ms == at(1) + 2 * DAY_MS


@pytest.mark.parametrize("order", ["refund first", "history first"])
def test_statements_of_the_same_millisecond_go_to_the_later_processed(order):
    """A history read then a refund read in the same second: the refund stands (and the reverse)."""
    now = at(0) + DAY_MS
    refund = TransactionObservation("t0", observed_ms=now, refunded_ms=now, expires_ms=now)
    runs_on = TransactionObservation("t0", observed_ms=now, unrefunded_until_ms=at(1))
    first, second = (refund, runs_on) if order == "refund first" else (runs_on, refund)
    merged = merge_observation(merge_observation(None, first), second)
    assert merged is not None and merged.refunded_ms == (None if order == "refund first" else now)
    # A later statement of neither changes nothing.
    owner = merge_observation(merged, TransactionObservation("t0", observed_ms=now, owner="ana"))
    assert owner is not None and owner.refunded_ms == merged.refunded_ms


def test_every_period_of_a_credit_subscription_is_one_package_whatever_reads_saw_it():
    three = history(at(3) + 2 * DAY_MS, [(f"t{k}", at(k), at(k + 1)) for k in range(4)])
    ledger = merge_in({}, v1(("lessons_monthly", "t3", at(3), at(0))))
    later = v1(("lessons_monthly", "t3", at(3), at(0)), request_ms=at(3) + 3 * DAY_MS)
    for snapshot in (parse_customer_history(three).snapshot, later) * 2:  # read again, by both APIs
        ledger = merge_in(ledger, snapshot)
    owned = [t for t in ledger.values() if t.owner == "ana"]
    credit = project_access(owned, CATALOG, at(3) + DAY_MS).accesses
    lessons = next(a for a in credit if a.resource == "module:lessons")
    assert lessons.expires_ms == at(0) + 4 * PACKAGE and set(lessons.sources) == {"t0", "t1", "t2", "t3"}


def test_a_history_read_without_purchases_says_nothing_of_them():
    ledger = merge_in({}, v1(("lessons_monthly", "t0", at(0), at(0)), request_ms=at(0)))
    assert ledger["c1"].owner == "ana"
    snapshot = parse_customer_history(history(at(0) + DAY_MS, [("t0", at(0), at(1))])).snapshot
    assert not snapshot.lists_purchases
    assert merge_in(ledger, snapshot)["c1"].owner == "ana"  # not released: not read
    with_purchases = parse_customer_history(history(at(0) + DAY_MS, [("t0", at(0), at(1))], purchases=[])).snapshot
    assert merge_in(ledger, with_purchases)["c1"].owner is None  # read, and not there: released
