"""next_check_ms: when a customer is read from the provider again."""

from dataclasses import replace

from engine.catalog import DAY_MS
from engine.facts import SubscriberSnapshot, Transaction
from engine.ports import CustomerState
from engine.projection import Projection
from engine.reconcile import (
    RECHECK_AFTER_EXPIRY_MS,
    RECHECK_AFTER_PURCHASE_MS,
    ReconcilePolicy,
    next_check_ms,
    unchanged_check_ms,
)
from tests.engine.test_projection import CATALOG

NOW = 1_800_000_000_000
POLICY = ReconcilePolicy(max_staleness_ms=DAY_MS)


def projection(next_change_ms=None):
    return Projection((), (), next_change_ms)


def old_purchase():
    return [Transaction("t", purchased_ms=NOW - 30 * DAY_MS)]


def test_dirty_means_at_once():
    assert next_check_ms(projection(NOW + 5 * DAY_MS), old_purchase(), NOW, POLICY, dirty=True) == NOW


def test_soon_after_the_expiry_the_access_depends_on():
    expiry = NOW + 3600_000
    assert (
        next_check_ms(projection(expiry), old_purchase(), NOW, POLICY, dirty=False) == expiry + RECHECK_AFTER_EXPIRY_MS
    )


def test_soon_after_a_purchase():
    fresh = [Transaction("t", purchased_ms=NOW - 60_000)]
    assert (
        next_check_ms(projection(NOW + 30 * DAY_MS), fresh, NOW, POLICY, dirty=False) == NOW + RECHECK_AFTER_PURCHASE_MS
    )


def test_otherwise_no_later_than_the_maximum_staleness():
    assert next_check_ms(projection(None), old_purchase(), NOW, POLICY, dirty=False) == NOW + DAY_MS
    assert next_check_ms(projection(NOW + 30 * DAY_MS), [], NOW, POLICY, dirty=False) == NOW + DAY_MS


# unchanged_check_ms: the fast path shared by reconcile_user and the sweep's batches

KEY = POLICY.projection_key(CATALOG)


def snapshot(digest="d1"):
    return SubscriberSnapshot("alice", NOW, (), frozenset(), digest)


def state(**changes) -> CustomerState:
    unchanged = CustomerState(
        customer_id="alice",
        last_snapshot_ms=NOW - DAY_MS,
        snapshot_digest="d1",
        dirty=False,
        next_change_ms=NOW + 5 * DAY_MS,
        projection_key=KEY,
    )
    return replace(unchanged, **changes)


def test_nothing_to_do_when_the_snapshot_catalog_and_policy_are_unchanged_and_no_expiry_came_due():
    assert unchanged_check_ms(state(), snapshot(), NOW, POLICY, CATALOG) == NOW + DAY_MS
    assert unchanged_check_ms(state(next_change_ms=NOW + 3600_000), snapshot(), NOW, POLICY, CATALOG) == (
        NOW + 3600_000 + RECHECK_AFTER_EXPIRY_MS
    )


def test_work_to_do_otherwise():
    assert unchanged_check_ms(state(), snapshot("d2"), NOW, POLICY, CATALOG) is None  # purchases changed
    assert unchanged_check_ms(state(dirty=True), snapshot(), NOW, POLICY, CATALOG) is None  # a degraded event
    assert unchanged_check_ms(state(projection_key="old"), snapshot(), NOW, POLICY, CATALOG) is None  # new catalog
    assert unchanged_check_ms(state(next_change_ms=NOW), snapshot(), NOW, POLICY, CATALOG) is None  # an expiry is due
    assert (
        unchanged_check_ms(state(snapshot_digest=None, last_snapshot_ms=None), snapshot(), NOW, POLICY, CATALOG) is None
    )
    sandbox = ReconcilePolicy(grant_sandbox=True, max_staleness_ms=DAY_MS)
    assert unchanged_check_ms(state(), snapshot(), NOW, sandbox, CATALOG) is None  # policy changed
