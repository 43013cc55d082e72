"""``customers import`` (an operator's list of ids, from a file or stdin) and ``reconcile-user``
for an id the engine never saw: with REST API v2 nothing is created at the provider, and an id it
does not know is said to be unknown; with v1 alone, what v1's GET does is said."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from persistence.models import AuditEntry, Identity, OperatorAction, Subscriber
from persistence.unit_of_work import unit_of_work
from services.clock import wall_clock_ms
from tests.operators.test_cli_input import assert_one_line_refusal


@pytest.fixture
def cli(app):
    return app.test_cli_runner()


@pytest.fixture
def v2_cli(v2_settings, v2_runtime):
    from web.app import create_app

    return create_app(v2_settings).test_cli_runner()


def count(runtime, model) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def due(runtime) -> dict[str, int]:
    with runtime.session_factory() as session:
        return dict(session.execute(select(Subscriber.customer_id, Subscriber.next_check_ms)).tuples().all())


def imports(runtime) -> list[OperatorAction]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(OperatorAction).where(OperatorAction.action == "customers_import")))


def test_import_from_a_file_registers_new_ids_due_now_and_counts_the_known(cli, runtime, tmp_path):
    with unit_of_work(runtime.session_factory)() as uow:  # known: a customer, and an alias of one
        uow.ledger.lock_customer("alice")
        uow.ledger.record_identities({"alice": "alice", "alice-old-device": "alice"})
    listing = tmp_path / "users.txt"
    listing.write_bytes(b"# our learners\nalice\r\n\nalice-old-device\n  bob  \ncarol\nbob\n$RCAnonymousID:0a\n")
    started = wall_clock_ms()

    result = cli.invoke(args=["customers", "import", str(listing), "--actor", "ops:maria"])

    assert result.exit_code == 0, result.output
    assert "imported 5 id(s): 3 new, 2 already known; all due for a check now; 1 duplicate line(s)" in result.stdout
    checks = due(runtime)
    assert set(checks) == {"alice", "bob", "carol", "$RCAnonymousID:0a"}  # the alias made alice due, no row of its own
    assert all(started <= at <= wall_clock_ms() for at in checks.values())
    [entry] = imports(runtime)
    assert (entry.actor, entry.target) == ("ops:maria", str(listing))
    assert json.loads(entry.detail or "{}") == {
        "ids": 5,
        "new": 3,
        "known": 2,
        "duplicates": 1,
        "skipped": 0,
        "skipped_lines": [],
    }
    again = cli.invoke(args=["customers", "import", str(listing)])
    assert "0 new, 5 already known" in again.stdout and count(runtime, Subscriber) == 4


def test_import_from_stdin(cli, runtime):
    result = cli.invoke(args=["customers", "import"], input=b"dora\nemil\n")
    assert result.exit_code == 0, result.output
    assert "imported 2 id(s): 2 new, 0 already known" in result.stdout
    assert set(due(runtime)) == {"dora", "emil"}
    assert imports(runtime)[0].target == "stdin"


BAD = b"ok-1\n" + b"x" * 256 + b"\nbad\x00id\n\xed\xa0\x80lone\nok-2\ncaf\xe9\n"


def test_bad_lines_are_named_by_number_and_nothing_is_imported(cli, runtime):
    result = cli.invoke(args=["customers", "import", "-"], input=BAD)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        "stdin: line 2: '" + "x" * 40 + "…' 256 characters, at most 255 allowed",
        "stdin: line 3: 'bad\\x00id' holds a NUL character",
        "stdin: line 4: not valid UTF-8 (byte 1)",
        "stdin: line 6: not valid UTF-8 (byte 4)",
    ]
    assert "4 invalid line(s) in stdin: nothing imported" in lines[-1] and "--skip-invalid" in lines[-1]
    assert count(runtime, Subscriber) == count(runtime, Identity) == count(runtime, OperatorAction) == 0


def test_bad_lines_can_be_skipped_and_are_said_to_be(cli, runtime):
    result = cli.invoke(args=["customers", "import", "--skip-invalid"], input=BAD)
    assert result.exit_code == 0, result.output
    assert "imported 2 id(s): 2 new" in result.stdout
    assert "skipped 4 invalid line(s): 2, 3, 4, 6" in result.stderr
    assert set(due(runtime)) == {"ok-1", "ok-2"}
    assert json.loads(imports(runtime)[0].detail or "{}")["skipped_lines"] == [2, 3, 4, 6]


def test_a_list_of_no_id_imports_nothing(cli, runtime):
    assert_one_line_refusal(cli.invoke(args=["customers", "import"], input=b"# nobody yet\n\n"), "lists no id")
    assert count(runtime, OperatorAction) == 0


def test_with_v2_an_id_unknown_to_the_provider_is_said_unknown_and_created_nowhere(v2_cli, v2_runtime, simulator):
    simulator.state.purchase_non_renewing("someone-else", "h01enb")
    customers = simulator.state.stats()["customers"]
    result = v2_cli.invoke(args=["reconcile-user", "never-seen"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    said = result.stderr.splitlines()[-1]  # (the simulator, in this process, logs its requests above)
    assert "'never-seen' is unknown to the provider" in said and "nothing was written" in said
    assert simulator.state.aliases_of("never-seen") == [] and simulator.state.stats()["customers"] == customers
    assert not [p for _, p, _ in simulator.state.request_log if p.startswith("/v1/")]  # v1's GET was never sent
    assert count(v2_runtime, Subscriber) == count(v2_runtime, Identity) == count(v2_runtime, AuditEntry) == 0


def test_with_v2_an_id_the_engine_never_saw_is_looked_up_and_reconciled(v2_cli, v2_runtime, simulator):
    simulator.state.purchase_non_renewing("walk-in", "h01enb")  # a buyer whose webhook never came
    customers = simulator.state.stats()["customers"]
    result = v2_cli.invoke(args=["reconcile-user", "walk-in"])  # no --lookup needed: v2 creates nothing
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["changes"] == [{"action": "grant", "resource": "course:H01ENB"}]
    assert (answer["known_to_engine"], answer["looked_up_with"]) == (False, "v2")
    assert "nothing created" in answer["note"] and simulator.state.stats()["customers"] == customers
    # known from now on: an ordinary reconcile, without the note
    assert "note" not in json.loads(v2_cli.invoke(args=["reconcile-user", "walk-in"]).stdout)


def test_with_v1_only_the_output_says_the_id_was_unknown_and_what_v1_did(cli, runtime, simulator):
    result = cli.invoke(args=["reconcile-user", "--lookup", "curious"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["known_to_engine"], answer["looked_up_with"], answer["changes"]) == (False, "v1", [])
    assert "creates a customer at RevenueCat" in answer["note"] and "no purchase" in answer["note"]
    assert simulator.state.aliases_of("curious") == ["curious"]  # as the note says: v1 created it
    refused = cli.invoke(args=["reconcile-user", "other"])
    assert_one_line_refusal(refused, "not a user the engine knows", "REST API v2 is not configured")
