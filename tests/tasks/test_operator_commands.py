"""Operator commands run as an operator runs them (a child process), and the metrics they move."""

from __future__ import annotations

import json
import subprocess
import sys

from config.settings import PROJECT_ROOT
from persistence.models import Grant
from services.sweep import reconcile_customers
from tests.support import settings_env
from tests.tasks.sweep_support import count, known_customer, set_next_check


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
    reconcile_customers(["alice"], runtime.sweep_reads)
    text = client.get("/metrics").data.decode()
    assert 'engine_drift_repaired_total{kind="missed_revocation"} 1' in text
    assert 'engine_inbox_events{status="processed"} 1' in text
    assert "# TYPE engine_subscribers_due gauge" in text
