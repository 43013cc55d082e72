"""reconcile, the one way into convergence, on the in-memory store (no database): every kind of
reading, the fast path, and the explicit outbox and change-notice steps."""

from __future__ import annotations

import pytest

from engine.catalog import DAY_MS
from engine.facts import TransactionObservation
from engine.ports import Cause
from engine.reconcile import Reading, reconcile, settle_unchanged
from engine.revenuecat import parse_subscriber
from engine.revenuecat_v2 import V2CustomerRead
from tests.engine.reconcile_support import CATALOG, EVENT, ISO, NOW, POLICY, granted, iso, run, subscriber
from tests.memory_store import MemoryDatabase, MemoryUnitOfWork


def test_a_provider_read_grants_writes_the_outbox_and_announces_the_change_after_commit():
    db = MemoryDatabase()
    outcome = run(db, Reading.from_provider("alice", subscriber("alice")))
    assert [a.kind for a in outcome.actions] == ["grant"] and granted(db, "alice") == {"course:H01ENB": "paid"}
    assert [(c, a.kind) for c, a, _ in db.data.outbox] == [("alice", "grant")]
    assert db.data.changed == ["alice"]
    state = db.data.customers["alice"]
    assert not state.state.dirty and state.state.snapshot_digest and state.next_check_ms > NOW


def test_the_same_snapshot_again_takes_the_fast_path():
    db = MemoryDatabase()
    body = subscriber("alice")
    run(db, Reading.from_provider("alice", body))
    snapshots = len(db.data.snapshots)
    again = run(db, Reading.from_provider("alice", body), now_ms=NOW + 1000)
    assert again.actions == () and not again.snapshot_changed and len(db.data.snapshots) == snapshots
    assert db.data.customers["alice"].last_checked_ms == NOW + 1000


def test_a_refund_revokes_and_a_stale_snapshot_changes_nothing():
    db = MemoryDatabase()
    run(db, Reading.from_provider("alice", subscriber("alice", request_ms=NOW)))
    refunded = run(
        db,
        Reading.from_provider("alice", subscriber("alice", request_ms=NOW + 10, refunded=True)),
        cause=Cause("sweep"),
    )
    assert [a.kind for a in refunded.actions] == ["revoke"] and granted(db, "alice") == {}
    stale = run(db, Reading.from_provider("alice", subscriber("alice", request_ms=NOW + 5)))
    assert stale.actions == () and granted(db, "alice") == {}


def test_an_events_own_facts_grant_in_degraded_mode_and_leave_the_customer_dirty():
    db = MemoryDatabase()
    fact = TransactionObservation(
        "bob-t1", observed_ms=NOW, product_id="h01enb", kind="non_subscription", purchased_ms=NOW, owner="bob"
    )
    outcome = run(
        db,
        Reading.from_event("bob", observations=[fact], identities={"bob": "bob"}, observed_ms=NOW),
        cause=Cause("degraded"),
    )
    assert [a.kind for a in outcome.actions] == ["grant"] and outcome.next_check_ms == NOW
    assert db.data.customers["bob"].state.dirty
    run(db, Reading.from_provider("bob", subscriber("bob")), now_ms=NOW + 1)  # the provider is back
    assert not db.data.customers["bob"].state.dirty and granted(db, "bob") == {"course:H01ENB": "paid"}


def test_a_degraded_transfer_moves_purchases_and_the_previous_owner_is_revoked_after():
    db = MemoryDatabase()
    run(db, Reading.from_provider("first", subscriber("first")))
    target = run(
        db,
        Reading.from_event("second", claims_from=["first"], observed_ms=NOW + 10),
        now_ms=NOW + 10,
        cause=Cause("degraded"),
    )
    assert [a.kind for a in target.actions] == ["grant"]
    source = run(db, Reading.from_event("first", observed_ms=NOW + 10), now_ms=NOW + 10, cause=Cause("degraded"))
    assert [a.kind for a in source.actions] == ["revoke"]
    assert granted(db, "first") == {} and granted(db, "second") == {"course:H01ENB": "paid"}


def test_the_ledger_alone_converges_an_expiry_and_leaves_the_check_time():
    db = MemoryDatabase()
    body = subscriber("carol", course=False)
    body["subscriber"]["subscriptions"] = {
        "premium_monthly": {
            "purchase_date": iso(NOW - 20 * DAY_MS),
            "expires_date": iso(NOW + DAY_MS),
            "store": "app_store",
            "store_transaction_id": "carol-s1",
            "period_type": "normal",
            "is_sandbox": False,
        }
    }
    run(db, Reading.from_provider("carol", body))
    due = db.data.customers["carol"].next_check_ms
    expired = run(db, Reading.from_ledger("carol"), now_ms=NOW + DAY_MS + 1, cause=Cause("expiry"))
    assert [a.kind for a in expired.actions] == ["revoke"] and expired.next_check_ms is None
    assert db.data.customers["carol"].next_check_ms == due


def test_settling_unchanged_customers_is_the_fast_path_in_bulk():
    db = MemoryDatabase()
    bodies = {user: subscriber(user) for user in ["ann", "ben"]}
    for user, body in bodies.items():
        run(db, Reading.from_provider(user, body))
    changed = subscriber("ben", refunded=True)
    snapshots = {"ann": parse_subscriber(bodies["ann"]), "ben": parse_subscriber(changed)}
    settled = settle_unchanged(snapshots, unit_of_work=db.unit_of_work, catalog=CATALOG, now_ms=NOW + 1, policy=POLICY)
    assert settled == {"ann"}  # ben's purchases changed: he goes through reconcile


def test_a_failed_unit_of_work_announces_nothing():
    db = MemoryDatabase()

    class Failing(MemoryUnitOfWork):
        def __enter__(self) -> MemoryUnitOfWork:
            uow = super().__enter__()

            def fail(*args: object) -> None:
                raise ZeroDivisionError("the unit of work fails after the grant was applied")

            # the store's method replaced on this instance, to fail on purpose
            uow.ledger.record_unknown_products = fail  # type: ignore[method-assign,assignment]
            return uow

    body = subscriber("alice")
    body["subscriber"]["non_subscriptions"]["mystery"] = [{"id": "m1", "purchase_date": ISO}]
    with pytest.raises(ZeroDivisionError):
        reconcile(
            Reading.from_provider("alice", body),
            unit_of_work=lambda: Failing(db),
            catalog=CATALOG,
            now_ms=NOW,
            cause=EVENT,
            policy=POLICY,
        )
    assert db.data.grants == {} and db.data.changed == [] and db.data.outbox == []


def test_a_v2_history_read_converges_like_any_provider_reading_and_keeps_its_bodies():
    purchase = {
        "object": "purchase",
        "id": "rcp1",
        "product_id": "prodCourse",
        "purchased_at": NOW - DAY_MS,
        "status": "owned",
        "store": "app_store",
        "environment": "production",
        "store_purchase_identifier": "ana-t1",
        "ownership": "purchased",
    }
    read = V2CustomerRead(
        customer_id="ana",
        request_ms=NOW,
        subscriptions=[],
        purchases=[purchase],
        aliases=[{"object": "customer.alias", "id": "$RCAnonymousID:ana"}],
        product_store_ids={"prodCourse": "h01enb"},
    )
    db = MemoryDatabase()
    reading = Reading.from_history("$RCAnonymousID:ana", read)
    outcome = run(db, reading, cause=Cause("sweep"))
    assert outcome.customer_id == "ana"
    assert [(a.kind, a.before) for a in outcome.actions] == [("grant", None)]
    assert reading.body is not None and reading.body["v2"]["purchases"] == [purchase]
    # The alias names the customer from now on; the same read again changes nothing.
    assert run(db, Reading.from_history("ana", read), cause=Cause("sweep")).actions == ()


# ----- an older period's refund, stated only by its webhook ------------------------------------
