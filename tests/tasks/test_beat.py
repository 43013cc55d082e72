"""Beat jobs: expiry without a provider call, cron check-ins, the sweep's fan-out within the
budget, and one beat scheduling at a time."""

from __future__ import annotations

import subprocess
import sys

import redis as redis_lib
from sqlalchemy import select, update

from adapters.embedded_redis import redis_url
from config.settings import PROJECT_ROOT
from persistence.models import AuditEntry, Grant, LedgerTransaction
from services.clock import wall_clock_ms
from tasks.celery_app import create_celery
from tests.support import queued_messages, settings_env, wait_for
from tests.tasks.sweep_support import count, known_customer, set_next_check


def test_expired_grants_are_revoked_at_expiry_without_a_provider_call(client, runtime, simulator, settings):
    known_customer(client, runtime, simulator, "alice")
    with runtime.session_factory() as session, session.begin():
        session.execute(update(Grant).values(expires_ms=wall_clock_ms() - 1))
        session.execute(update(LedgerTransaction).values(expires_ms=wall_clock_ms() - 1))
    before = simulator.state.request_count
    app = create_celery(settings)
    assert app.tasks["grants.expire"].apply().get() == 1
    assert count(runtime, Grant) == 0 and simulator.state.request_count == before
    with runtime.session_factory() as session:
        assert session.scalar(select(AuditEntry.cause_kind).where(AuditEntry.action == "revoke")) == "expiry"


def test_beat_jobs_send_cron_check_ins(settings, runtime, sentry_events):
    app = create_celery(settings)
    for name in ["sweep.run", "inbox.redrive", "grants.expire"]:
        app.tasks[name].apply().get()
    check_ins = [(c["monitor_slug"], c["status"]) for c in sentry_events.items("check_in")]
    for slug in ["sweep", "inbox-redrive", "grants-expire"]:
        assert (slug, "in_progress") in check_ins and (slug, "ok") in check_ins


def test_sweep_task_fans_out_due_customers_within_the_budget(client, runtime, simulator, settings):
    for user in ["a", "b", "c"]:
        known_customer(client, runtime, simulator, user)
    set_next_check(runtime, {"a": 0, "b": 0, "c": 0})
    small = settings.with_(provider_rate_per_minute=3, sweep_interval_s=60)  # sweep share: 2 per minute
    app = create_celery(small)
    assert app.tasks["sweep.run"].apply().get() == 2
    assert [m["headers"]["task"] for m in queued_messages(settings, "sweep")] == ["sweep.reconcile_batch"]


def test_the_sweep_selects_less_while_its_batches_wait_in_the_queue(client, runtime, simulator, settings):
    for user in ["a", "b", "c", "d"]:
        known_customer(client, runtime, simulator, user)
    set_next_check(runtime, {"a": 0, "b": 0, "c": 0, "d": 0})
    # 60/min for 60 s: 60 customers a run; two batches of SWEEP_CHUNK still queued read more.
    paced = settings.with_(provider_rate_per_minute=60, sweep_interval_s=60)
    app = create_celery(paced)
    broker = redis_lib.Redis.from_url(redis_url(settings))
    broker.delete("sweep")
    for _ in range(2):
        app.send_task("sweep.reconcile_batch", args=([],), queue="sweep")
    assert app.tasks["sweep.run"].apply().get() == 0
    assert broker.llen("sweep") == 2
    broker.delete("sweep")  # a worker took them: the budget until the next run is free again
    assert app.tasks["sweep.run"].apply().get() == 4
    assert broker.llen("sweep") == 1


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
        return sum(1 for m in queued_messages(settings) if m["headers"]["task"] == "sweep.run")

    first, second = beat(1), beat(2)
    try:
        wait_for(lambda: sweeps() >= 3, timeout=20, what="scheduled sweeps")

        def sending(n: int) -> bool:  # celery beat logs each task it sends
            return "Sending due task" in (tmp_path / f"beat{n}.log").read_text()

        owners = [n for n in (1, 2) if "acquired" in (tmp_path / f"beat{n}.log").read_text()]
        assert len(owners) == 1
        assert [n for n in (1, 2) if sending(n)] == owners  # the standby beat sent nothing
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
