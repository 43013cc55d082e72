"""The sweep: selection by index, healing drift, counting and reporting it, cheap no-ops,
expiry without provider calls, beat check-ins, a single beat, and the operator commands."""

from __future__ import annotations

import re
from dataclasses import replace

from sqlalchemy import event, select, update

from engine.ports import Cause
from persistence.models import AuditEntry, Grant, ProviderSnapshot, Subscriber
from persistence.subscribers import select_due
from services.clock import wall_clock_ms
from services.sweep import reconcile_customers
from tests.support import reconcile_now
from tests.tasks.sweep_support import count, known_customer, set_next_check


def test_selection_takes_the_most_overdue_first_and_leases_them(client, runtime, simulator):
    for user in ["a", "b", "c", "d"]:
        known_customer(client, runtime, simulator, user)
    now = wall_clock_ms()
    set_next_check(runtime, {"a": now - 10, "b": now - 1000, "c": now + 60_000, "d": now - 500})
    assert select_due(runtime.session_factory, now_ms=now, limit=2, lease_ms=60_000) == ["b", "d"]
    assert select_due(runtime.session_factory, now_ms=now, limit=10, lease_ms=60_000) == ["a"]
    assert select_due(runtime.session_factory, now_ms=now, limit=10, lease_ms=60_000) == []


def test_sweep_heals_lost_webhooks_and_counts_reports_and_audits_the_drift(client, runtime, simulator, sentry_events):
    course = known_customer(client, runtime, simulator, "alice", "h01enb")
    known_customer(client, runtime, simulator, "bob")
    # Lost webhooks: alice's course is refunded, bob buys a second product; nobody tells us.
    simulator.state.refund("alice", course["event"]["transaction_id"])
    simulator.state.purchase_non_renewing("bob", "geometry_pack_30")
    result = reconcile_customers(["alice", "bob"], runtime.sweep_reads)
    assert (result.reconciled, result.changed) == (2, 2)
    assert result.drift == {"missed_revocation": 1, "missed_grant": 1}
    with runtime.session_factory() as session:
        audit = session.execute(
            select(AuditEntry.customer_id, AuditEntry.action, AuditEntry.drift_kind, AuditEntry.cause_kind)
            .where(AuditEntry.drift_kind.is_not(None))
            .order_by(AuditEntry.customer_id)
        ).all()
    assert audit == [("alice", "revoke", "missed_revocation", "sweep"), ("bob", "grant", "missed_grant", "sweep")]
    counters = runtime.metrics.counters()
    assert counters['engine_drift_repaired_total{kind="missed_revocation"}'] == 1
    assert counters['engine_drift_repaired_total{kind="missed_grant"}'] == 1
    # One event per kind for the batch, grouped by kind, with its count and examples.
    events = {e["tags"]["drift_kind"]: e for e in sentry_events.items("event") if "drift_kind" in e["tags"]}
    assert events["missed_revocation"]["fingerprint"] == ["entitlement-drift", "missed_revocation"]
    assert events["missed_grant"]["fingerprint"] == ["entitlement-drift", "missed_grant"]
    assert [x["customer_id"] for x in events["missed_revocation"]["contexts"]["drift"]["examples"]] == ["alice"]
    assert [x["customer_id"] for x in events["missed_grant"]["contexts"]["drift"]["examples"]] == ["bob"]
    # A second sweep finds nothing left to repair.
    again = reconcile_customers(["alice", "bob"], runtime.sweep_reads)
    assert (again.changed, again.drift) == (0, {})


def test_an_unchanged_snapshot_costs_no_writes_beyond_the_check_time(client, runtime, simulator):
    known_customer(client, runtime, simulator, "alice")
    writes: list[str] = []

    def record(conn, cursor, statement, *args):
        if re.match(r"\s*(INSERT|UPDATE|DELETE)", statement, re.I):
            table = re.search(r"(?:INTO|UPDATE|FROM)\s+(\w+)", statement, re.I)
            assert table is not None, statement
            writes.append(statement.split()[0].upper() + " " + table.group(1))

    event.listen(runtime.db, "before_cursor_execute", record)
    try:
        reconcile_now(runtime, "alice", cause=Cause("sweep"))
    finally:
        event.remove(runtime.db, "before_cursor_execute", record)
    assert writes == ["UPDATE subscribers"]
    assert count(runtime, ProviderSnapshot) == 1 and count(runtime, AuditEntry) == 1


def test_fast_path_recomputes_once_an_expiry_falls_due_or_the_catalog_changes(client, runtime, simulator):

    from engine.catalog import GrantRule

    known_customer(client, runtime, simulator, "alice")  # a monthly subscription, converged
    with runtime.session_factory() as session:
        [grant] = session.scalars(select(Grant)).all()

    def reconcile(now_ms, catalog=runtime.catalog):
        return reconcile_now(runtime, "alice", cause=Cause("sweep"), now_ms=now_ms, catalog=catalog)

    assert reconcile(wall_clock_ms()).actions == ()  # fast path: nothing moved
    product = runtime.catalog.products["premium_monthly"]
    changed = replace(
        runtime.catalog,
        digest="edited",
        products={
            **runtime.catalog.products,
            "premium_monthly": replace(product, grants=(GrantRule("module:algebra", "basic", "period"),)),
        },
    )
    assert [a.kind for a in reconcile(wall_clock_ms(), changed).actions] == ["change_mode"]
    assert [a.kind for a in reconcile(grant.expires_ms + 1, changed).actions] == ["revoke"]  # the expiry came due


def test_a_sweep_batch_settles_unchanged_customers_together_and_reconciles_the_rest(client, runtime, simulator):
    for user in ["alice", "bob", "carol", "dave"]:
        known_customer(client, runtime, simulator, user)
    simulator.state.purchase_non_renewing("bob", "geometry_pack_30")  # lost webhook: bob changed
    with runtime.session_factory() as session, session.begin():  # carol: a degraded event left her dirty
        session.execute(update(Subscriber).where(Subscriber.customer_id == "carol").values(dirty=True))
    snapshots_before, requests_before, t0 = (
        count(runtime, ProviderSnapshot),
        simulator.state.request_count,
        wall_clock_ms(),
    )
    statements: list[tuple[str, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((" ".join(statement.split()[:2]).upper(), executemany))

    event.listen(runtime.db, "before_cursor_execute", record)
    runtime.budget.client.delete(*runtime.budget._keys)  # a rested budget: the first group is 2 reads
    try:
        # alice and dave first: the paced budget lets a sweep send two reads at once, so they
        # are read (and settled) as one group
        result = reconcile_customers(["alice", "dave", "bob", "carol"], runtime.sweep_reads)
    finally:
        event.remove(runtime.db, "before_cursor_execute", record)
    assert (result.reconciled, result.changed, result.failed, result.drift) == (4, 1, 0, {"missed_grant": 1})
    assert simulator.state.request_count - requests_before == 4  # one read each, none repeated
    # alice and dave: one UPDATE for both, nothing else written; bob and carol: a full reconcile
    assert statements.count(("UPDATE SUBSCRIBERS", True)) == 1
    assert count(runtime, ProviderSnapshot) - snapshots_before == 2
    with runtime.session_factory() as session:
        rows = {r.customer_id: r for r in session.scalars(select(Subscriber))}
    for user in ["alice", "bob", "carol", "dave"]:
        assert rows[user].last_checked_ms >= t0 and rows[user].next_check_ms > t0 and not rows[user].dirty


def test_a_failed_read_in_a_batch_defers_only_that_customer(client, runtime, simulator):
    for user in ["alice", "bob", "carol"]:
        known_customer(client, runtime, simulator, user)
    simulator.state.fail_next(1, 503)
    now = wall_clock_ms()
    result = reconcile_customers(["alice", "bob", "carol"], runtime.sweep_reads)
    assert (result.reconciled, result.failed) == (2, 1)
    with runtime.session_factory() as session:
        dirty = session.execute(select(Subscriber.customer_id, Subscriber.next_check_ms).where(Subscriber.dirty)).all()
    # Backed off, not due at once: every sweep would ask an unwell provider again.
    assert len(dirty) == 1 and now + 15_000 <= dirty[0].next_check_ms <= wall_clock_ms() + 30_000
    assert runtime.metrics.counters()['engine_reconcile_failures_total{kind="transient"}'] == 1


def test_a_batch_larger_than_the_budget_is_deferred_not_failed(client, runtime, simulator, settings):
    from services.wiring import Wiring

    for user in ["alice", "bob", "carol"]:
        known_customer(client, runtime, simulator, user)
    small = Wiring(settings.with_(provider_rate_per_minute=3))  # one read now, the next 20 s later
    small.budget.client.delete(*small.budget._keys)
    try:
        impatient = replace(small.sweep_reads, provider=small.budgeted_provider("sweep", max_wait_s=0))
        result = reconcile_customers(["alice", "bob", "carol"], impatient)
    finally:
        small.close()
    assert (result.reconciled, result.failed, result.deferred) == (1, 0, ["bob", "carol"])
    with runtime.session_factory() as session:
        carol = session.scalar(select(Subscriber).where(Subscriber.customer_id == "carol"))
    assert carol.next_check_ms > wall_clock_ms() + 15_000 and not carol.dirty  # when the pace frees a slot


def test_an_unexpected_error_in_one_reconcile_costs_the_others_nothing(client, runtime, simulator, monkeypatch):
    from sqlalchemy import text

    from persistence.models import Grant as GrantRow
    from services.convergence import Convergence

    for user in ["alice", "bob", "carol", "dave"]:
        known_customer(client, runtime, simulator, user)
        simulator.state.purchase_non_renewing(user, "geometry_pack_30")  # all four changed: full reconciles
    real = Convergence.reconcile

    def broken_for_bob(self, reading, cause):
        if reading.app_user_id == "bob":  # fails inside its transaction, leaving that connection aborted
            with self.unit_of_work() as uow:
                uow.session.execute(text("SELECT * FROM no_such_table"))
        return real(self, reading, cause)

    monkeypatch.setattr(Convergence, "reconcile", broken_for_bob)
    result = reconcile_customers(["alice", "bob", "carol", "dave"], runtime.sweep_reads)
    assert (result.reconciled, result.changed, result.failed) == (3, 3, 1)
    assert runtime.metrics.counters()['engine_reconcile_failures_total{kind="error"}'] == 1
    with runtime.session_factory() as session:
        dirty = session.scalars(select(Subscriber.customer_id).where(Subscriber.dirty)).all()
        granted = set(session.scalars(select(GrantRow.customer_id).where(GrantRow.resource == "module:geometry")))
    assert dirty == ["bob"] and granted >= {"alice", "carol", "dave"}
    monkeypatch.setattr(Convergence, "reconcile", real)
    again = reconcile_customers(["bob"], runtime.sweep_reads)  # the pool holds no broken connection
    assert (again.reconciled, again.failed) == (1, 0)


def test_two_customers_with_the_same_new_unknown_product_in_one_batch(client, runtime, simulator):
    from persistence.models import UnknownProduct

    for user in ["alice", "bob", "carol", "dave"]:
        known_customer(client, runtime, simulator, user)
        simulator.state.purchase_non_renewing(user, "not.in.the.catalog")
    result = reconcile_customers(["alice", "bob", "carol", "dave"], runtime.sweep_reads)
    assert (result.reconciled, result.failed) == (4, 0)
    with runtime.session_factory() as session:
        row = session.get(UnknownProduct, "not.in.the.catalog")
    assert row.sightings == 4 and row.last_customer_id in {"alice", "bob", "carol", "dave"}
