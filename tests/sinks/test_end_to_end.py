"""End to end: a RevenueCat webhook (the simulator) → intake → a real Celery worker process →
a paid enrollment in the fake Open edX LMS over HTTP; a refund → the downgrade to audit."""

from __future__ import annotations

import pytest

from simulators.serving import ServedApp
from tests.sinks.conftest import COURSE, map_course
from tests.support import celery_worker, wait_for


@pytest.fixture
def lms_live_server(lms_settings, lms_runtime):
    from web.app import create_app

    with ServedApp(create_app(lms_settings), name="engine-under-test") as server:
        yield server.url


def test_purchase_webhook_to_paid_enrollment_and_refund_to_audit(
    lms_settings, lms_runtime, simulator, lms, lms_live_server
):
    map_course(lms_runtime, mode="no-id-professional")
    lms.state.set_enrollment("carol", COURSE, "audit")  # carol audits, then upgrades by buying
    simulator.webhook_url = f"{lms_live_server}/webhooks/revenuecat"
    with celery_worker(lms_settings, concurrency=2):
        assert simulator.deliver(simulator.state.purchase_non_renewing("bob", "h01enb")) == 200
        assert simulator.deliver(simulator.state.purchase_non_renewing("carol", "h01enb")) == 200
        wait_for(
            lambda: lms.state.enrollment("bob", COURSE) == ("no-id-professional", True), what="bob's paid enrollment"
        )
        wait_for(lambda: lms.state.enrollment("carol", COURSE) == ("no-id-professional", True), what="carol's upgrade")
        purchase = simulator.state.subscriber("bob")[1]["subscriber"]["non_subscriptions"]["h01enb"][0]
        assert simulator.deliver(simulator.state.refund("bob", purchase["store_transaction_id"])) == 200
        wait_for(lambda: lms.state.enrollment("bob", COURSE) == ("audit", True), what="bob's downgrade to audit")
    assert [(b["mode"], b["is_active"]) for b in lms.state.posts("bob")] == [
        ("no-id-professional", True),
        ("audit", True),  # the run offers audit and the mapping asks for it: one mode change
    ]
    assert {c.caller for c in lms.state.calls} == {"user:engine_worker"}
