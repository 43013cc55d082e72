"""The discovery beat job: scheduled only with REST API v2, thin over services/discovery.py; and
end to end with a real worker and a real beat process, where some customers' every webhook is
lost and discovery alone (no client call, no operator) heals them: drift reaches zero."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from demo.truth import drifting
from persistence.audit import drift_report
from persistence.models import AuditEntry, DiscoveryPass, InboxEvent
from services.clock import wall_clock_ms
from services.wiring import discovery_tick_s, wiring_for
from simulators.serving import ServedApp
from tasks.celery_app import beat_schedule, create_celery
from tests.support import celery_beat, celery_worker, wait_for


def test_discovery_is_scheduled_only_with_rest_api_v2(settings, v2_settings):
    assert "discovery" not in beat_schedule(settings)
    entry = beat_schedule(v2_settings)["discovery"]
    every = float(discovery_tick_s(v2_settings))
    assert entry == {"task": "discovery.run", "schedule": every, "options": {"expires": every}}
    assert every == min(v2_settings.sweep_interval_s, 30)


def test_the_task_does_nothing_without_v2(settings, runtime, simulator):
    assert create_celery(settings).tasks["discovery.run"].apply().get() == {"skipped": "REST API v2 is not configured"}
    assert simulator.state.request_count == 0


def test_the_task_runs_discovery_and_checks_in(v2_settings, v2_runtime, simulator, sentry_events):
    simulator.state.purchase_non_renewing("lost", "h01enb")
    summary = create_celery(v2_settings).tasks["discovery.run"].apply().get()
    assert (summary["new"], summary["repaired"], summary["finished"]) == (1, 1, True)
    assert summary["drift"] == {"undiscovered_customer": 1}
    check_ins = [(c["monitor_slug"], c["status"]) for c in sentry_events.items("check_in")]
    assert ("discovery", "in_progress") in check_ins and ("discovery", "ok") in check_ins
    assert "discovery" in v2_runtime.metrics.job_runs()


class LosingEveryWebhookOf:
    """The network between the provider and the engine: every webhook about ``lost`` users is
    dropped; the others are delivered as the provider sends them."""

    def __init__(self, simulator, lost: set[str]):
        self.simulator, self.lost, self.dropped = simulator, lost, 0

    def __call__(self, body: dict[str, Any]) -> None:
        if body["event"].get("app_user_id") in self.lost:
            self.dropped += 1
            return
        self.simulator.deliver(body)


@pytest.mark.slow
def test_with_only_web_worker_and_beat_discovery_heals_customers_whose_every_webhook_was_lost(
    v2_settings, simulator, tmp_path
):
    from web.app import create_app

    fast = v2_settings.with_(sweep_interval_s=2, discovery_interval_s=1)
    rt = wiring_for(fast)
    web = ServedApp(create_app(fast), name="engine-web").start()
    heard = ["heard-course", "heard-sub", "heard-pack"]
    lost = ["lost-course", "lost-sub", "lost-pack", "lost-both"]
    network = LosingEveryWebhookOf(simulator, set(lost))
    simulator.webhook_url = f"{web.url}/webhooks/revenuecat"
    simulator.state.add_listener(network)
    try:
        state = simulator.state
        for prefix in ("heard", "lost"):
            state.purchase_non_renewing(f"{prefix}-course", "h01enb")
            state.purchase_subscription(f"{prefix}-sub", "premium_monthly", store="app_store")
            state.purchase_non_renewing(f"{prefix}-pack", "geometry_pack_30")
        state.purchase_non_renewing("lost-both", "h01enb")
        state.purchase_subscription("lost-both", "premium_monthly", store="play_store")
        assert network.dropped == 5
        with rt.session_factory() as session:
            assert len(session.scalars(select(InboxEvent)).all()) == 3  # only the heard ones arrived

        with (
            celery_worker(fast, concurrency=2, log_path=tmp_path / "worker.log"),
            celery_beat(fast, log_path=tmp_path / "beat.log"),
        ):
            everyone = heard + lost
            logs = (tmp_path / "worker.log", tmp_path / "beat.log")
            wait_for(
                lambda: drifting(state, rt, everyone, wall_clock_ms()) == [],
                timeout=120,
                interval=0.5,
                what=f"no drift (logs in {logs})",
            )
        report = {r.drift_kind: r for r in drift_report(rt.session_factory, since_ms=0, until_ms=wall_clock_ms() + 1)}
        assert report["undiscovered_customer"].customers == len(lost)
        assert report["undiscovered_customer"].repairs == 5  # one per resource granted: lost-both has two
        with rt.session_factory() as session:
            passes = session.scalars(select(DiscoveryPass)).all()
            healed_by = session.execute(
                select(AuditEntry.customer_id, AuditEntry.cause_kind).where(AuditEntry.customer_id.in_(lost))
            ).all()
        assert passes and sum(p.new_customers for p in passes) >= len(lost)
        # Nobody called the engine for them (this test makes no client call): discovery found them.
        assert {c for c, _ in healed_by} == set(lost) and {k for _, k in healed_by} == {"discovery"}
    finally:
        simulator.state.remove_listener(network)
        web.stop()
        rt.close()
