"""End to end through a real Celery worker process on real Redis, with the simulator as provider."""

from __future__ import annotations

import os
import signal

import psutil
import requests
from sqlalchemy import func, select

from adapters.task_publisher import TaskPublisher
from persistence.models import AuditEntry, Grant, InboxEvent
from tasks.celery_app import create_celery
from tasks.names import INBOX_PROCESS, INBOX_PROCESS_GROUP
from tests.conftest import API_TOKEN, WEBHOOK_AUTH
from tests.support import answer, celery_worker, wait_for
from web.app import create_app


def access(base_url: str, app_user_id: str) -> dict:
    response = requests.get(
        f"{base_url}/v1/users/{app_user_id}/access", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5
    )
    return {a["resource"]: a for a in response.json()["access"]}


def inbox_row(runtime, inbox_id: int) -> InboxEvent:
    with runtime.session_factory() as session:
        return session.get(InboxEvent, inbox_id)


def counts(runtime) -> tuple[int, int]:
    with runtime.session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Grant)),
            session.scalar(select(func.count()).select_from(AuditEntry)),
        )


def test_purchase_to_access_through_a_real_worker(settings, runtime, simulator, live_server):
    simulator.webhook_url = f"{live_server}/webhooks/revenuecat"
    with celery_worker(settings, concurrency=2):
        assert simulator.deliver(simulator.state.purchase_subscription("alice", "premium_monthly")) == 200
        assert simulator.deliver(simulator.state.purchase_non_renewing("bob", "h01enb")) == 200
        wait_for(lambda: "module:algebra" in access(live_server, "alice"), what="alice's access")
        wait_for(lambda: "course:H01ENB" in access(live_server, "bob"), what="bob's access")
        refund_tx = simulator.state.subscriber("bob")[1]["subscriber"]["non_subscriptions"]["h01enb"][0][
            "store_transaction_id"
        ]
        assert simulator.deliver(simulator.state.refund("bob", refund_tx)) == 200
        wait_for(lambda: access(live_server, "bob") == {}, what="bob's refund to revoke access")


def test_broker_down_at_intake_loses_nothing(settings, runtime, simulator):
    dead_broker = create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    client = create_app(settings, celery=dead_broker).test_client()
    body = simulator.state.purchase_subscription("alice", "premium_monthly")
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    assert response.status_code == 200
    inbox_id = answer(response)["inbox_id"]
    assert inbox_row(runtime, inbox_id).status == "received"
    # The broker is back: the beat redrive job re-enqueues the waiting row and a worker runs it.
    app = create_celery(settings.with_(redrive_after_s=0))
    with celery_worker(settings):
        assert app.tasks["inbox.redrive"].apply().get() == 1
        wait_for(lambda: inbox_row(runtime, inbox_id).status == "processed", what="the redriven event")
    assert counts(runtime)[0] == 1


def test_worker_child_killed_mid_task_processes_the_event_once(settings, runtime, simulator, client):
    body = simulator.state.purchase_subscription("alice", "premium_monthly")
    simulator.state.latency_ms = 1500  # the task is inside the provider call when it is killed
    with celery_worker(settings, concurrency=1) as worker:
        response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
        inbox_id = answer(response)["inbox_id"]
        wait_for(lambda: inbox_row(runtime, inbox_id).status == "processing", what="the task to start")
        children = psutil.Process(worker.pid).children()
        assert children, "prefork worker has no child process"
        for child in children:
            os.kill(child.pid, signal.SIGKILL)  # as the OOM killer would
        simulator.state.latency_ms = 0
        wait_for(lambda: inbox_row(runtime, inbox_id).status == "processed", timeout=30, what="the requeued task")
    row = inbox_row(runtime, inbox_id)
    assert row.attempts == 2  # killed once, then run to the end once
    assert counts(runtime) == (1, 1)  # one grant, one audit entry: no double grant


def test_a_group_message_from_the_intakes_publisher_is_processed_by_a_real_worker(settings, runtime, simulator, client):
    dead_broker = create_app(settings, celery=create_celery(settings.with_(redis_url="redis://127.0.0.1:1/0")))
    stored = [
        answer(
            dead_broker.test_client().post(
                "/webhooks/revenuecat",
                json=simulator.state.purchase_subscription(user, "premium_monthly"),
                headers={"Authorization": WEBHOOK_AUTH},
            )
        )["inbox_id"]
        for user in ("ann", "ben")
    ]  # stored, no message sent: only the group below names them
    TaskPublisher(create_celery(settings), INBOX_PROCESS, INBOX_PROCESS_GROUP).publish_group(stored)
    with celery_worker(settings):
        wait_for(lambda: all(inbox_row(runtime, i).status == "processed" for i in stored), what="the group's rows")
    assert counts(runtime)[0] == 2
