"""Every process logs to stdout (the CLI to stderr: its stdout is the command's output), as
text or as JSON lines (LOG_FORMAT=json), with what is known: event, user, Celery task."""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from config.logs import configure_logging, install_celery_task_context, log_context
from config.settings import PROJECT_ROOT, Settings
from tasks.celery_app import create_celery
from tests.conftest import WEBHOOK_AUTH
from tests.support import celery_worker, settings_env, wait_for


@pytest.fixture
def json_lines(settings: Settings) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(settings.with_(log_format="json"), process="tests", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def parsed(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_context_known(json_lines):
    with log_context(event_id="evt-1", app_user_id="alice"):
        logging.getLogger("services.inbox").warning("provider slow for %s", "alice")
    logging.getLogger("services.inbox").info("outside")
    inside, outside = parsed(json_lines.getvalue())
    assert inside["message"] == "provider slow for alice" and inside["level"] == "WARNING"
    assert (inside["event_id"], inside["app_user_id"], inside["process"]) == ("evt-1", "alice", "tests")
    assert inside["logger"] == "services.inbox" and "time" in inside
    assert "event_id" not in outside and outside["message"] == "outside"


def test_text_lines_name_the_process_and_the_context(settings):
    stream = io.StringIO()
    handler = configure_logging(settings, process="worker", stream=stream)
    try:
        with log_context(task_id="t-1", inbox_id=7):
            logging.getLogger("tasks").info("processing")
    finally:
        logging.getLogger().removeHandler(handler)
    assert re.search(r" INFO worker tasks: processing task_id=t-1 inbox_id=7$", stream.getvalue().strip())


def test_a_tasks_lines_carry_its_task_id_and_key(settings, runtime, json_lines):
    install_celery_task_context({"inbox.process": "inbox_id"})  # as tasks/worker.py does
    app = create_celery(settings)

    @app.task(name="inbox.process", shared=False)
    def process_event(inbox_id: int) -> None:
        logging.getLogger("tasks.jobs").info("working on %s", inbox_id)

    result = process_event.apply(args=(42,))
    logging.getLogger("tasks.jobs").info("after the task")
    during, after = [line for line in parsed(json_lines.getvalue()) if line["logger"] == "tasks.jobs"]
    assert (during["task_id"], during["task"], during["inbox_id"]) == (result.id, "inbox.process", 42)
    assert "task_id" not in after


def procfile_command(name: str, values: dict[str, str]) -> list[str]:
    line = next(x for x in (PROJECT_ROOT / "Procfile").read_text().splitlines() if x.startswith(f"{name}:"))
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), line[len(name) + 1 :])
    argv = shlex.split(line)
    return [sys.executable, "-m", argv[0], *argv[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_web_process_logs_a_503_to_stdout_as_json(settings, tmp_path):
    down = settings.with_(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", log_format="json")
    port = free_port()
    out, err = open(tmp_path / "out", "wb"), open(tmp_path / "err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        procfile_command("web", {"PORT": str(port), "WEB_CONCURRENCY": "1"}),
        cwd=PROJECT_ROOT,
        env=settings_env(down),
        stdout=out,
        stderr=err,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), timeout=30, what="gunicorn")
        body = {"event": {"id": "evt-503", "type": "RENEWAL", "app_user_id": "alice", "event_timestamp_ms": 1}}
        response = requests.post(f"{url}/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
        assert response.status_code == 503
        wait_for(lambda: "could not store webhook" in (tmp_path / "out").read_text(), what="the error line")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        out.close()
        err.close()
    lines = parsed((tmp_path / "out").read_text())
    [error] = [x for x in lines if x["message"] == "could not store webhook evt-503"]
    assert (error["level"], error["logger"], error["process"]) == ("ERROR", "web.intake", "web")
    assert "OperationalError" in error["exc_info"]
    assert any(x["logger"] == "gunicorn.access" and "POST /webhooks/revenuecat" in x["message"] for x in lines)
    assert any(x["logger"] == "gunicorn.error" and "Booting worker" in x["message"] for x in lines)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_the_worker_logs_json_lines_with_the_task_id(settings, runtime, tmp_path):
    json_settings = settings.with_(log_format="json")
    log_path = tmp_path / "worker.log"
    with celery_worker(json_settings, log_path=log_path):
        result = create_celery(json_settings).send_task("inbox.process", args=(424242,))
        # "received" names the task id before it runs: wait for the line of its end
        wait_for(lambda: f"{result.id}] succeeded" in log_path.read_text(), timeout=60, what="the task's lines")
    lines = parsed(log_path.read_text())
    mine = [x for x in lines if x.get("task_id") == result.id]
    assert mine and all(x["inbox_id"] == 424242 and x["process"] == "worker" for x in mine)
    assert any(x["level"] == "ERROR" for x in mine)  # the task failed: no such inbox row


def test_cli_logs_go_to_stderr_as_json_with_the_command(app, settings):
    from web.app import create_app

    cli = create_app(settings.with_(log_format="json")).test_cli_runner()
    result = cli.invoke(args=["migrate"])
    assert result.exit_code == 0 and result.stdout == "database at head\n"
    lines = parsed(result.stderr)
    assert lines and all(x["process"] == "cli" and x["command"] == "migrate" for x in lines)
