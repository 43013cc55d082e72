"""Helpers shared by the sweep and beat tests: customers known to the engine, check times."""

from __future__ import annotations

from sqlalchemy import func, select, update

from persistence.models import Subscriber
from services.inbox import process_inbox_event
from tests.conftest import WEBHOOK_AUTH


def known_customer(client, runtime, simulator, user: str, product: str = "premium_monthly") -> dict:
    """A customer whose purchase webhook arrived and was processed."""
    body = (
        simulator.state.purchase_non_renewing(user, product)
        if product == "h01enb"
        else simulator.state.purchase_subscription(user, product)
    )
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    process_inbox_event(response.json["inbox_id"], runtime.event_processing)
    return body


def count(runtime, model) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def set_next_check(runtime, values: dict[str, int]) -> None:
    with runtime.session_factory() as session, session.begin():
        for customer_id, at in values.items():
            session.execute(update(Subscriber).where(Subscriber.customer_id == customer_id).values(next_check_ms=at))
