"""Shared by the inbox tests: a webhook through the real intake, a row read back."""

from __future__ import annotations

from persistence.models import InboxEvent
from tests.conftest import WEBHOOK_AUTH

URL = "/webhooks/revenuecat"


def intake(client, body: dict) -> int:
    response = client.post(URL, json=body, headers={"Authorization": WEBHOOK_AUTH})
    assert response.status_code == 200, response.json
    return response.json["inbox_id"]


def row(wiring, inbox_id: int) -> InboxEvent:
    with wiring.session_factory() as session:
        return session.get(InboxEvent, inbox_id)


def set_row(wiring, inbox_id: int, **values: object) -> None:
    with wiring.session_factory() as session, session.begin():
        stored = session.get(InboxEvent, inbox_id)
        for name, value in values.items():
            setattr(stored, name, value)
