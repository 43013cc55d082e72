"""The sweep: selection by index, healing drift, counting and reporting it, cheap no-ops,
expiry without provider calls, beat check-ins, a single beat, and the operator commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import redis as redis_lib
from sqlalchemy import event, func, select, update

from adapters.embedded_redis import redis_url
from config.settings import PROJECT_ROOT
from engine.ports import Cause
from engine.reconcile import reconcile_user
from persistence.models import AuditEntry, Grant, LedgerTransaction, ProviderSnapshot, Subscriber
from persistence.subscribers import select_due
from persistence.unit_of_work import unit_of_work
from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from services.wiring import wall_clock_ms
from tasks.celery_app import create_celery
from tests.conftest import WEBHOOK_AUTH
from tests.support import settings_env, wait_for


def known_customer(client, runtime, simulator, user: str, product: str = "premium_monthly") -> dict:
    """A customer whose purchase webhook arrived and was processed."""
    body = (
        simulator.state.purchase_non_renewing(user, product)
        if product == "h01enb"
        else simulator.state.purchase_subscription(user, product)
    )
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    process_inbox_event(response.json["inbox_id"], runtime.event_processing(), final_attempt=False)
    return body


def count(runtime, model) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def set_next_check(runtime, values: dict[str, int]) -> None:
    with runtime.session_factory() as session, session.begin():
        for customer_id, at in values.items():
            session.execute(update(Subscriber).where(Subscriber.customer_id == customer_id).values(next_check_ms=at))


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
    result = reconcile_customers(["alice", "bob"], runtime=runtime)
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
    again = reconcile_customers(["alice", "bob"], runtime=runtime)
    assert (again.changed, again.drift) == (0, {})


def test_an_unchanged_snapshot_costs_no_writes_beyond_the_check_time(client, runtime, simulator):
    known_customer(client, runtime, simulator, "alice")
    writes: list[str] = []

    def record(conn, cursor, statement, *args):
        if re.match(r"\s*(INSERT|UPDATE|DELETE)", statement, re.I):
            writes.append(
                statement.split()[0].upper()
                + " "
                + re.search(r"(?:INTO|UPDATE|FROM)\s+(\w+)", statement, re.I).group(1)
            )

    event.listen(runtime.db, "before_cursor_execute", record)
    try:
        reconcile_user(
            "alice",
            provider=runtime.provider,
            unit_of_work=unit_of_work(runtime.session_factory),
            catalog=runtime.catalog,
            now_ms=wall_clock_ms(),
            cause=Cause("sweep"),
            policy=runtime.policy,
        )
    finally:
        event.remove(runtime.db, "before_cursor_execute", record)
    assert writes == ["UPDATE subscribers"]
    assert count(runtime, ProviderSnapshot) == 1 and count(runtime, AuditEntry) == 1


def test_expired_grants_are_revoked_at_expiry_without_a_provider_call(client, runtime, simulator, settings):
    known_customer(client, runtime, simulator, "alice")
    with runtime.session_factory() as session, session.begin():
        session.execute(update(Grant).values(expires_ms=wall_clock_ms() - 1))
        session.execute(update(LedgerTransaction).values(expires_ms=wall_clock_ms() - 1))
    before = simulator.state.request_count
    app = create_celery(settings)
    assert app.tasks["engine.expire_grants"].apply().get() == 1
    assert count(runtime, Grant) == 0 and simulator.state.request_count == before
    with runtime.session_factory() as session:
        assert session.scalar(select(AuditEntry.cause_kind).where(AuditEntry.action == "revoke")) == "expiry"


def test_beat_jobs_send_cron_check_ins(settings, runtime, sentry_events):
    app = create_celery(settings)
    for name in ["engine.sweep", "engine.redrive_inbox", "engine.expire_grants"]:
        app.tasks[name].apply().get()
    check_ins = [(c["monitor_slug"], c["status"]) for c in sentry_events.items("check_in")]
    for slug in ["engine-sweep", "engine-redrive-inbox", "engine-expire-grants"]:
        assert (slug, "in_progress") in check_ins and (slug, "ok") in check_ins


def test_sweep_task_fans_out_due_customers_within_the_budget(client, runtime, simulator, settings):
    for user in ["a", "b", "c"]:
        known_customer(client, runtime, simulator, user)
    set_next_check(runtime, {"a": 0, "b": 0, "c": 0})
    small = settings.with_(provider_rate_per_minute=3)  # sweep share: 2 per minute
    app = create_celery(small)
    assert app.tasks["engine.sweep"].apply().get() == 2
    queued = redis_lib.Redis.from_url(redis_url(settings)).lrange("sweep", 0, -1)
    assert [json.loads(m)["headers"]["task"] for m in queued] == ["engine.reconcile_batch"]


def test_only_one_of_two_beats_schedules(settings, runtime, tmp_path):
    fast = settings.with_(sweep_interval_s=1, beat_lock_ttl_s=3)
    env = settings_env(fast)
    env.update({"SWEEP_INTERVAL_S": "1", "BEAT_LOCK_TTL_S": "3"})
    client = redis_lib.Redis.from_url(redis_url(settings))
    client.delete("sweep", "celery")

    logs = []

    def beat(n: int) -> subprocess.Popen:
        logs.append(open(tmp_path / f"beat{n}.log", "wb"))  # noqa: SIM115 - closed at the end of the test
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks.worker",
                "beat",
                "--loglevel=INFO",
                f"--schedule={tmp_path / f'beat{n}'}",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
        )

    def sweeps() -> int:
        return sum(1 for m in client.lrange("celery", 0, -1) if json.loads(m)["headers"]["task"] == "engine.sweep")

    first, second = beat(1), beat(2)
    try:
        wait_for(lambda: sweeps() >= 1, timeout=20, what="a first scheduled sweep")
        start, t0 = sweeps(), time.monotonic()
        time.sleep(4)
        rate = (sweeps() - start) / (time.monotonic() - t0)
        assert rate < 1.6, f"{rate:.2f} sweeps/s: both beats are scheduling"
        owners = [n for n in (1, 2) if "acquired" in (tmp_path / f"beat{n}.log").read_text()]
        assert len(owners) == 1
        # The owner dies: the other takes over within the lock's time to live.
        (first if owners == [1] else second).kill()
        before = sweeps()
        wait_for(lambda: sweeps() > before + 1, timeout=15, what="the standby beat to take over")
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()


def run_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: PLW1510 - the tests read the exit status
        [sys.executable, "-m", "flask", "--app", "web.app:create_app", *args],
        cwd=PROJECT_ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_operator_commands_dry_run_reconcile_all_and_drift_report(client, runtime, simulator, settings):
    course = known_customer(client, runtime, simulator, "alice", "h01enb")
    known_customer(client, runtime, simulator, "bob")
    simulator.state.refund("alice", course["event"]["transaction_id"])
    set_next_check(runtime, {"alice": 0, "bob": 0})

    dry = run_cli(settings, "sweep", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "alice: revoke" in dry.stdout and "course:H01ENB" in dry.stdout and "1 changes would be made" in dry.stdout
    assert count(runtime, Grant) == 2  # nothing changed

    full = run_cli(settings, "reconcile-all")
    assert full.returncode == 0, full.stderr
    assert "2 reconciled, 1 changed, 0 failed; drift repaired: missed_revocation=1" in full.stdout
    assert count(runtime, Grant) == 1

    report = run_cli(settings, "drift-report", "--since", "1h", "--json")
    assert json.loads(report.stdout)["kinds"] == [{"drift_kind": "missed_revocation", "repairs": 1, "customers": 1}]
    one = run_cli(settings, "reconcile-user", "bob")
    assert json.loads(one.stdout)["changes"] == []


def test_metrics_expose_drift_counters_and_gauges(client, runtime, simulator):
    course = known_customer(client, runtime, simulator, "alice", "h01enb")
    simulator.state.refund("alice", course["event"]["transaction_id"])
    reconcile_customers(["alice"], runtime=runtime)
    text = client.get("/metrics").data.decode()
    assert 'engine_drift_repaired_total{kind="missed_revocation"} 1' in text
    assert 'engine_inbox_events{status="processed"} 1' in text
    assert "# TYPE engine_subscribers_due gauge" in text


def test_fast_path_recomputes_once_an_expiry_falls_due_or_the_catalog_changes(client, runtime, simulator):
    from dataclasses import replace

    from engine.catalog import GrantRule

    known_customer(client, runtime, simulator, "alice")  # a monthly subscription, converged
    with runtime.session_factory() as session:
        [grant] = session.scalars(select(Grant)).all()

    def reconcile(now_ms, catalog=runtime.catalog):
        return reconcile_user(
            "alice",
            provider=runtime.provider,
            unit_of_work=unit_of_work(runtime.session_factory),
            catalog=catalog,
            now_ms=now_ms,
            cause=Cause("sweep"),
            policy=runtime.policy,
        )

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
    try:
        result = reconcile_customers(["alice", "bob", "carol", "dave"], runtime=runtime)
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
    result = reconcile_customers(["alice", "bob", "carol"], runtime=runtime)
    assert (result.reconciled, result.failed) == (2, 1)
    with runtime.session_factory() as session:
        dirty = session.execute(select(Subscriber.customer_id, Subscriber.next_check_ms).where(Subscriber.dirty)).all()
    assert len(dirty) == 1 and dirty[0].next_check_ms <= wall_clock_ms() and dirty[0].next_check_ms >= now
    assert runtime.metrics.counters()['engine_reconcile_failures_total{kind="transient"}'] == 1


def test_a_batch_larger_than_the_budget_is_deferred_not_failed(client, runtime, simulator, settings):
    from services.wiring import Runtime

    for user in ["alice", "bob", "carol"]:
        known_customer(client, runtime, simulator, user)
    small = Runtime(settings.with_(provider_rate_per_minute=3))  # the sweep may use 2 of 3
    small.budget.client.delete(*small.budget._keys)
    try:
        result = reconcile_customers(["alice", "bob", "carol"], runtime=small, max_wait_s=0)
    finally:
        small.close()
    assert (result.reconciled, result.failed, result.deferred) == (2, 0, ["carol"])
    with runtime.session_factory() as session:
        carol = session.scalar(select(Subscriber).where(Subscriber.customer_id == "carol"))
    assert carol.next_check_ms > wall_clock_ms() + 50_000 and not carol.dirty  # when the window frees a slot


def test_an_unexpected_error_in_one_reconcile_costs_the_others_nothing(client, runtime, simulator, monkeypatch):
    from sqlalchemy import text

    import services.sweep as sweep
    from persistence.models import Grant as GrantRow

    for user in ["alice", "bob", "carol", "dave"]:
        known_customer(client, runtime, simulator, user)
        simulator.state.purchase_non_renewing(user, "geometry_pack_30")  # all four changed: full reconciles
    real = sweep.reconcile_user

    def broken_for_bob(customer_id, **kwargs):
        if customer_id == "bob":  # fails inside its transaction, leaving that connection aborted
            with kwargs["unit_of_work"]() as store:
                store.session.execute(text("SELECT * FROM no_such_table"))
        return real(customer_id, **kwargs)

    monkeypatch.setattr(sweep, "reconcile_user", broken_for_bob)
    result = reconcile_customers(["alice", "bob", "carol", "dave"], runtime=runtime)
    assert (result.reconciled, result.changed, result.failed) == (3, 3, 1)
    assert runtime.metrics.counters()['engine_reconcile_failures_total{kind="error"}'] == 1
    with runtime.session_factory() as session:
        dirty = session.scalars(select(Subscriber.customer_id).where(Subscriber.dirty)).all()
        granted = set(session.scalars(select(GrantRow.customer_id).where(GrantRow.resource == "module:geometry")))
    assert dirty == ["bob"] and granted >= {"alice", "carol", "dave"}
    monkeypatch.setattr(sweep, "reconcile_user", real)
    again = reconcile_customers(["bob"], runtime=runtime)  # the pool holds no broken connection
    assert (again.reconciled, again.failed) == (1, 0)


def test_two_customers_with_the_same_new_unknown_product_in_one_batch(client, runtime, simulator):
    from persistence.models import UnknownProduct

    for user in ["alice", "bob", "carol", "dave"]:
        known_customer(client, runtime, simulator, user)
        simulator.state.purchase_non_renewing(user, "not.in.the.catalog")
    result = reconcile_customers(["alice", "bob", "carol", "dave"], runtime=runtime)
    assert (result.reconciled, result.failed) == (4, 0)
    with runtime.session_factory() as session:
        row = session.get(UnknownProduct, "not.in.the.catalog")
    assert row.sightings == 4 and row.last_customer_id in {"alice", "bob", "carol", "dave"}
