"""Start-up checks of every process: the embedded stand-ins are refused by the Procfile's
processes unless ALLOW_EMBEDDED is set, a catalog typo or a bad setting stops a process with one
line, and /readyz reports the catalog."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from config.settings import ENV_VARS, PROJECT_ROOT, ConfigError, Settings
from engine.catalog import parse_catalog
from engine.errors import CatalogError
from tests.support import settings_env
from web.app import create_app

PROCESSES = ("web", "worker", "beat")
TYPO_CATALOG = '[products.premium]\nstore_ids = ["premium"]\nkind = "subscription"\ngrants = [{ resource = "module:a", mode = "full", polcy = "period" }]\n'


def run_procfile_process(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The Procfile's line for ``name``, as a platform runs it (bash, the venv on PATH); it must
    exit by itself (a process that starts would run until the timeout)."""
    line = next(x for x in (PROJECT_ROOT / "Procfile").read_text().splitlines() if x.startswith(f"{name}:"))
    command = line[len(name) + 1 :].strip()
    env = {**env, "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{env.get('PATH', os.defpath)}", "PORT": "0"}
    env.setdefault("WEB_CONCURRENCY", "1")
    return subprocess.run(
        ["bash", "-c", command], check=False, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("process", PROCESSES)
def test_procfile_processes_refuse_the_embedded_stand_ins(process, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "ALLOW_EMBEDDED"}}
    env["INSTANCE_PATH"] = str(tmp_path)
    line = one_line_error(run_procfile_process(process, env))
    assert line.startswith(f"{process}: refusing to start {process} on a SQLite database")
    assert "embedded redis-server" in line and "ALLOW_EMBEDDED=1" in line
    assert not list(tmp_path.iterdir())  # nothing created: no SQLite file, no redis-server


@pytest.mark.parametrize("process", PROCESSES)
def test_a_catalog_typo_stops_each_process_with_one_line(process, settings, tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TYPO_CATALOG)
    line = one_line_error(run_procfile_process(process, settings_env(settings.with_(catalog_path=catalog))))
    assert line.startswith(f"{process}: catalog {catalog} is invalid: ")
    assert "unknown key(s) 'polcy'" in line


@pytest.mark.parametrize("process", PROCESSES)
def test_a_bad_setting_stops_each_process_with_one_line(process, settings):
    env = {**settings_env(settings), "PROVIDER_RATE_PER_MINUTE": "lots", "API_TOKEN": "tok-secret-42"}
    line = one_line_error(run_procfile_process(process, env))
    assert line.startswith(f"{process}: PROVIDER_RATE_PER_MINUTE='lots' is not valid")


def test_readyz_reports_an_invalid_catalog(settings, runtime, tmp_path):
    assert create_app(settings).test_client().get("/readyz").get_json()["checks"]["catalog"] == "ok"
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TYPO_CATALOG)
    response = create_app(settings.with_(catalog_path=catalog)).test_client().get("/readyz")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "not_ready"
    assert re.match(r"error: catalog .* is invalid: .*unknown key\(s\) 'polcy'", body["checks"]["catalog"])


GOOD = {"store_ids": ["p"], "kind": "subscription", "grants": [{"resource": "r", "mode": "full", "policy": "period"}]}


@pytest.mark.parametrize(
    ("catalog", "problem"),
    [
        ({"product": {"p": GOOD}}, "catalog: unknown key(s) 'product'"),
        ({"products": {}}, "no [products.<name>] table"),
        ({"products": {"p": {**GOOD, "titel": "Premium"}}}, "products.p: unknown key(s) 'titel'"),
        (
            {"products": {"p": {**GOOD, "grants": [{"resource": "r", "mode": "full", "policy": "credit", "dayz": 3}]}}},
            "products.p.grants[0]: unknown key(s) 'dayz'",
        ),
        (
            {"products": {"p": {**GOOD, "grants": [{"resource": "r", "mode": "profesional", "policy": "period"}]}}},
            "products.p.grants[0].mode: 'profesional' is not in mode_rank",
        ),
        ({"products": {"p": {**GOOD, "family_shareable": "no"}}}, "products.p.family_shareable: must be true or false"),
    ],
)
def test_catalog_typos_are_problems_not_silently_ignored(catalog, problem):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(catalog)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_settings_name_the_variable_that_is_wrong_and_never_echo_a_secret():
    with pytest.raises(ConfigError, match=r"^LOG_FORMAT='xml' is not valid: not one of text, json$"):
        Settings.from_env({"LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match=r"^SWEEP_INTERVAL_S='soon' is not valid"):
        Settings.from_env({"SWEEP_INTERVAL_S": "soon"})
    assert Settings.from_env({"LOG_FORMAT": "JSON", "ALLOW_EMBEDDED": "1"}).log_format == "json"


def test_every_variable_the_settings_read_is_documented():
    text = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    # the names in the first cell of each table row
    documented = {name for cell in re.findall(r"^\| ([^|]+) \|", text, re.M) for name in re.findall(r"`(\w+)`", cell)}
    read = {var for var, _parse in ENV_VARS.values()}
    read |= {"DATABASE_URL", "REDIS_URL", "REVENUECAT_API_URL", "CATALOG_PATH", "INSTANCE_PATH"}
    assert read - documented == set()
