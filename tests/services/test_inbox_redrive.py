"""Every row that is not final is picked up again within a bounded time, never twice at once;
the reads of one event resume where they stopped; operators replay dead letters."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import redis as redis_lib
from sqlalchemy import select

from adapters.embedded_redis import redis_url
from engine.revenuecat import MAX_USERS_PER_EVENT
from persistence.inbox_rows import PROCESSING_LEASE_MS, claim_row, rows_to_redrive
from persistence.models import OperatorAction
from services.clock import wall_clock_ms
from services.convergence import Convergence
from services.inbox import holder_gone, process_inbox_event, this_worker
from services.wiring import Wiring
from tasks.celery_app import create_celery
from tests.services.inbox_support import intake, row, set_row
from tests.support import queued_messages

MINUTE_MS = 60_000


def purchase(simulator, user: str = "alice") -> dict:
    return simulator.state.purchase_subscription(user, "premium_monthly")


def test_the_redrive_takes_every_row_whose_message_may_be_lost_and_nothing_else(client, runtime, simulator):
    now = wall_clock_ms()
    ids = {
        state: intake(client, purchase(simulator, f"user-{state}"))
        for state in ["received", "retrying", "retrying-later", "lapsed", "leased", "dead", "processed"]
    }
    set_row(runtime, ids["retrying"], status="retrying", next_attempt_ms=now - 2 * MINUTE_MS)
    set_row(runtime, ids["retrying-later"], status="retrying", next_attempt_ms=now + MINUTE_MS)
    set_row(runtime, ids["lapsed"], status="processing", lease_until_ms=now - 1)  # its worker was killed
    set_row(runtime, ids["leased"], status="processing", lease_until_ms=now + 5 * MINUTE_MS)
    set_row(runtime, ids["dead"], status="dead")
    set_row(runtime, ids["processed"], status="processed")
    # received rows count from their arrival: a minute later, the waiting one is due
    picked = rows_to_redrive(runtime.session_factory, now_ms=now + MINUTE_MS + 1_000, older_than_s=60)
    assert sorted(picked) == sorted([ids["received"], ids["retrying"], ids["lapsed"]])
    # re-sent once per window, not on every run of the redrive
    assert rows_to_redrive(runtime.session_factory, now_ms=now + MINUTE_MS + 2_000, older_than_s=60) == []


def test_a_retry_whose_message_was_lost_is_redriven_and_processed(settings, client, runtime, simulator):
    inbox_id = intake(client, purchase(simulator))
    simulator.state.fail_next(1, status=500)
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "retrying"
    # Redis restarts empty: the retry's message is gone. The redrive sends the row again.
    set_row(runtime, inbox_id, next_attempt_ms=wall_clock_ms() - 1)
    app = create_celery(settings.with_(redrive_after_s=0))
    queue = redis_lib.Redis.from_url(redis_url(settings))
    queue.delete("celery")
    assert app.tasks["inbox.redrive"].apply().get() == 1
    [message] = queued_messages(settings)
    assert (message["headers"]["task"], message["headers"]["argsrepr"]) == ("inbox.process", f"({inbox_id},)")
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "processed"


def test_a_leased_row_is_never_processed_twice_at_once(client, runtime, simulator):
    inbox_id = intake(client, purchase(simulator))
    now = wall_clock_ms()
    first = claim_row(runtime.session_factory, inbox_id, now_ms=now, holder="other-host:1", holder_gone=holder_gone)
    assert first.outcome == "claimed"
    held = process_inbox_event(inbox_id, runtime.event_processing)
    assert held.status == "held" and held.retry_in_ms is not None and 0 < held.retry_in_ms <= PROCESSING_LEASE_MS
    assert row(runtime, inbox_id).attempts == 1


def test_a_row_held_by_a_dead_process_of_this_host_is_taken_at_once(client, runtime, simulator):
    inbox_id = intake(client, purchase(simulator))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    holder = f"{socket.gethostname()}:{int(gone.stdout)}"
    assert holder_gone(holder) and not holder_gone(this_worker()) and not holder_gone("elsewhere:1")
    claim_row(runtime.session_factory, inbox_id, now_ms=wall_clock_ms(), holder=holder, holder_gone=holder_gone)
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "processed"
    assert row(runtime, inbox_id).attempts == 2


def transfer(sources: list[str], targets: list[str]) -> dict:
    return {
        "api_version": "1.0",
        "event": {
            "id": f"transfer-{len(sources)}-{'-'.join(targets)}",
            "type": "TRANSFER",
            "event_timestamp_ms": wall_clock_ms(),
            "transferred_from": sources,
            "transferred_to": targets,
            "environment": "PRODUCTION",
        },
    }


def forget_budget(wiring) -> None:
    if keys := wiring.redis.keys("budget:*"):
        wiring.redis.delete(*keys)


def test_the_reads_of_one_event_resume_where_they_stopped(settings, client, runtime, simulator):
    users = ["u1", "u2", "u3", "u4"]
    for user in users:
        simulator.state.purchase_non_renewing(user, "h01enb")
    inbox_id = intake(client, transfer(users[:3], users[3:]))
    # A budget of two reads a minute runs out part-way through the event.
    scarce = Wiring(settings.with_(provider_rate_per_minute=2))
    forget_budget(runtime)
    try:
        before = simulator.state.request_count
        assert process_inbox_event(inbox_id, scarce.event_processing).status == "retrying"
        progress = row(runtime, inbox_id).progress
        assert progress is not None
        done = json.loads(progress)
        assert 1 <= len(done) < len(users) and done == users[: len(done)]
        assert simulator.state.request_count - before == len(done)
    finally:
        scarce.close()
    forget_budget(runtime)
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "processed"
    assert simulator.state.request_count - before == len(users)  # each user read once in all


def test_an_event_naming_too_many_users_is_a_clear_terminal_error(client, runtime, simulator):
    many = [f"phantom-{i}" for i in range(MAX_USERS_PER_EVENT + 5)]
    inbox_id = intake(client, transfer(many[:-1], many[-1:]))
    before = simulator.state.request_count
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "dead"
    dead = row(runtime, inbox_id)
    assert dead.last_error is not None
    assert dead.error_kind == "terminal" and f"at most {MAX_USERS_PER_EVENT}" in dead.last_error
    assert simulator.state.request_count == before  # no phantom subscriber was read, or created


def test_an_operator_replays_dead_letters_by_id_and_by_filter(app, client, runtime, simulator, monkeypatch):
    def broken(self, reading, cause):
        raise AttributeError("'NoneType' object has no attribute 'mode'")

    real = Convergence.reconcile
    monkeypatch.setattr(Convergence, "reconcile", broken)
    dead = [intake(client, purchase(simulator, user)) for user in ["alice", "bob", "carol"]]
    for inbox_id in dead:
        assert process_inbox_event(inbox_id, runtime.event_processing).status == "dead"
    monkeypatch.setattr(Convergence, "reconcile", real)  # the bug is fixed and deployed
    cli = app.test_cli_runner()
    listed = cli.invoke(args=["inbox", "list", "--status", "dead", "--json"])
    assert listed.exit_code == 0 and {json.loads(line)["id"] for line in listed.output.splitlines()} == set(dead)
    shown = cli.invoke(args=["inbox", "show", str(dead[0])])
    assert json.loads(shown.output)["body"]["event"]["app_user_id"] == "alice"
    replayed = cli.invoke(args=["inbox", "replay", str(dead[0]), "--actor", "ops:dana"])
    assert replayed.exit_code == 0 and "replayed 1" in replayed.output
    assert (row(runtime, dead[0]).status, row(runtime, dead[0]).replays) == ("received", 1)
    assert process_inbox_event(dead[0], runtime.event_processing).status == "processed"
    by_filter = cli.invoke(args=["inbox", "replay", "--all-dead", "--user", "bob", "--actor", "ops:dana"])
    assert "replayed 1" in by_filter.output and row(runtime, dead[1]).status == "received"
    assert row(runtime, dead[2]).status == "dead"  # not named by the filter
    assert cli.invoke(args=["inbox", "replay"]).exit_code == 2  # nothing named: refused, nothing replayed
    with runtime.session_factory() as session:
        actions = session.scalars(select(OperatorAction).order_by(OperatorAction.id)).all()
    assert [(a.actor, a.action) for a in actions] == [("ops:dana", "inbox.replay")] * 2
    assert json.loads(actions[1].detail)["filter"] == {"status": "dead", "app_user_id": "bob"}


def test_replaying_a_row_that_is_not_dead_changes_nothing(app, client, runtime, simulator):
    inbox_id = intake(client, purchase(simulator))
    assert process_inbox_event(inbox_id, runtime.event_processing).status == "processed"
    result = app.test_cli_runner().invoke(args=["inbox", "replay", str(inbox_id)])
    assert "replayed 0" in result.output and row(runtime, inbox_id).status == "processed"
