"""Every failure of an inbox row is classified: transient ones are retried with backoff up to a
cap, terminal ones and bugs make the row a dead letter (kept, counted, alerted once, never
retried on its own). Poison webhooks never loop."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from sqlalchemy.exc import DataError, OperationalError

from persistence.inbox_rows import rows_to_redrive
from services.clock import wall_clock_ms
from services.convergence import Convergence
from services.inbox import process_inbox_event
from tests.services.inbox_support import intake, row

FINAL = {"processed", "ignored", "dead"}


def purchase(simulator) -> dict:
    return simulator.state.purchase_subscription("alice", "premium_monthly")


def poisoned(body: dict, **event_fields: object) -> dict:
    body = copy.deepcopy(body)
    body["event"].update(event_fields)
    return body


POISON: list[dict[str, object]] = [
    {"event_timestamp_ms": float("inf")},
    {"event_timestamp_ms": 1e300},
    {"store": 5},
    {"aliases": 5},
    {"aliases": [5, None, {"x": 1}]},
    {"purchased_at_ms": {}},
    {"expiration_at_ms": []},
    {"transaction_id": {"nested": True}},
    {"product_id": ["a"]},
    {"app_user_id": 5},
    {"original_app_user_id": []},
    {"period_type": 7},
    {"cancel_reason": {"x": 1}},
    {"environment": 3},
    {"grace_period_expiration_at_ms": "soon"},
]


@pytest.mark.parametrize(
    "fields", POISON, ids=[f"{name}:{type(value).__name__}" for f in POISON for name, value in f.items()]
)
def test_a_poison_webhook_ends_final_and_is_never_redriven(client, runtime, simulator, sentry_events, fields):
    inbox_id = intake(client, poisoned(purchase(simulator), **fields))
    result = process_inbox_event(inbox_id, runtime.event_processing)
    stored = row(runtime, inbox_id)
    assert result.status in FINAL and stored.status == result.status
    if stored.status == "dead":
        assert stored.last_error and stored.error_kind in {"terminal", "bug"}
        [alert] = sentry_events.items("event")  # one alert, nothing else
        assert alert["fingerprint"][0] == "inbox-dead-letter"
        assert alert["tags"]["inbox_id"] == str(inbox_id)
    # Final: neither processing it again nor any redrive takes it up.
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "skipped"
    assert inbox_id not in rows_to_redrive(runtime.session_factory, now_ms=wall_clock_ms() + 10**9, older_than_s=0)


def test_an_unexpected_error_makes_a_dead_letter_kept_with_its_error(
    client, runtime, simulator, sentry_events, monkeypatch
):
    def broken(self, reading, cause):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'dict'")

    monkeypatch.setattr(Convergence, "reconcile", broken)
    inbox_id = intake(client, purchase(simulator))
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "dead"
    dead = row(runtime, inbox_id)
    assert (dead.status, dead.error_kind, dead.attempts) == ("dead", "bug", 1)
    assert (dead.last_error or "").startswith("TypeError: unsupported operand")
    [alert] = sentry_events.items("event")
    assert alert["fingerprint"][:2] == ["inbox-dead-letter", "bug"]


def test_data_the_database_refuses_is_terminal(client, runtime, simulator, monkeypatch):
    def refused(self, reading, cause):
        raise DataError(
            "INSERT ...", {"body": "the webhook body"}, Exception("value too long for type character varying(255)")
        )

    monkeypatch.setattr(Convergence, "reconcile", refused)
    inbox_id = intake(client, purchase(simulator))
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "dead"
    dead = row(runtime, inbox_id)
    assert dead.last_error is not None
    assert dead.error_kind == "terminal" and "value too long" in dead.last_error
    assert "the webhook body" not in dead.last_error and "INSERT" not in dead.last_error  # no SQL, no parameters


def test_a_transient_store_error_is_retried_with_backoff_up_to_a_cap(client, runtime, simulator, monkeypatch):
    def locked(self, reading, cause):
        raise OperationalError("UPDATE subscribers ...", {}, Exception("could not obtain lock on row"))

    monkeypatch.setattr(Convergence, "reconcile", locked)
    ctx = replace(runtime.event_processing, max_attempts=3, retry_base_ms=1_000, retry_cap_ms=4_000, jitter=lambda: 0.0)
    inbox_id = intake(client, purchase(simulator))
    delays = []
    for _ in range(2):
        result = process_inbox_event(inbox_id, ctx)
        assert result.status == "retrying" and result.retry_in_ms is not None
        delays.append(result.retry_in_ms)
        stored = row(runtime, inbox_id)
        assert stored.error_kind == "transient" and stored.next_attempt_ms is not None
        assert stored.next_attempt_ms >= wall_clock_ms() + result.retry_in_ms - 1_000
    assert delays == [500, 1_000]  # exponential, half of it jittered (jitter 0 here)
    assert process_inbox_event(inbox_id, ctx).status == "dead"
    dead = row(runtime, inbox_id)
    assert (dead.attempts, dead.error_kind) == (3, "transient")
    assert (dead.last_error or "").startswith("gave up after 3 attempts")


def test_a_provider_that_stays_down_leaves_the_event_degraded_not_dead(client, runtime, simulator):
    inbox_id = intake(client, purchase(simulator))
    ctx = replace(runtime.event_processing, max_attempts=2)
    simulator.state.fail_next(2, status=503)
    assert process_inbox_event(inbox_id, ctx).status == "retrying"
    assert process_inbox_event(inbox_id, ctx).status == "degraded"  # the sweep reads the customer first
