"""The alerting rules shipped in monitoring/ are valid and behave as their tests say (promtool),
and every series they read is one the engine exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from adapters.metrics import FAMILIES
from config.settings import PROJECT_ROOT

MONITORING = PROJECT_ROOT / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian package prometheus; scripts/bootstrap installs it as root)"
)
# Gauges read at scrape time (services/pipeline_state.py) and the beat jobs' last runs.
GAUGES = {
    "engine_inbox_backlog",
    "engine_inbox_oldest_unprocessed_age_seconds",
    "engine_outbox_oldest_pending_age_seconds",
    "engine_provider_budget_used_ratio",
    "engine_provider_budget_paused_seconds",
    "engine_job_last_run_timestamp_seconds",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], check=False, cwd=MONITORING, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_are_valid():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_read_only_series_the_engine_exports(client):
    rules = (MONITORING / "alerts.yml").read_text()
    used = set(re.findall(r"\b(engine_[a-z_]+)\b", rules))
    exported = {f"{name}_total" if f.kind == "counter" else name for name, f in FAMILIES.items()} | GAUGES
    assert used and used <= exported, used - exported
    scraped = client.get("/metrics").data.decode()
    for name in used:
        assert f"# TYPE {name} " in scraped, name
