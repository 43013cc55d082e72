"""next_check_ms: when a customer is read from the provider again."""

from engine.catalog import DAY_MS
from engine.facts import Transaction
from engine.projection import Projection
from engine.reconcile import RECHECK_AFTER_EXPIRY_MS, RECHECK_AFTER_PURCHASE_MS, ReconcilePolicy, next_check_ms

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
    assert next_check_ms(projection(expiry), old_purchase(), NOW, POLICY, dirty=False) == expiry + RECHECK_AFTER_EXPIRY_MS


def test_soon_after_a_purchase():
    fresh = [Transaction("t", purchased_ms=NOW - 60_000)]
    assert next_check_ms(projection(NOW + 30 * DAY_MS), fresh, NOW, POLICY, dirty=False) == NOW + RECHECK_AFTER_PURCHASE_MS


def test_otherwise_no_later_than_the_maximum_staleness():
    assert next_check_ms(projection(None), old_purchase(), NOW, POLICY, dirty=False) == NOW + DAY_MS
    assert next_check_ms(projection(NOW + 30 * DAY_MS), [], NOW, POLICY, dirty=False) == NOW + DAY_MS
