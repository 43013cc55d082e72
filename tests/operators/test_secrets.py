"""No secret and no webhook body leaves a process: not in a repr, a log line, or a Sentry event
or breadcrumb, on the failure paths of the intake (in this process) and of a worker (a real
worker process reporting to a local Sentry endpoint)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from config.logs import configure_logging
from config.settings import Settings
from tasks.celery_app import create_celery
from tests.conftest import CapturingTransport
from tests.operators.sentry_sink import SentrySink
from tests.support import celery_worker, wait_for
from web.app import create_app

SECRETS = {
    "revenuecat_api_key": "sk_live_SECRET_api_key_0001",
    "revenuecat_webhook_auth": "Bearer whsec_SECRET_webhook_0002",
    "api_token": "SECRET_api_token_0003",
    "user_token_secret": "SECRET_user_token_secret_0004",
    "openedx_client_secret": "SECRET_lms_client_0005",
    "openedx_api_key": "SECRET_lms_key_0006",
}
DB_PASSWORD = "SECRET_db_password_0007"
BODY_MARKER = "BODY_MARKER_0008"
NEVER_SEEN = [*SECRETS.values(), "whsec_SECRET_webhook_0002", DB_PASSWORD, BODY_MARKER]


def webhook() -> dict:
    return {
        "api_version": "1.0",
        "event": {
            "id": "evt-secret-1",
            "type": "INITIAL_PURCHASE",
            "app_user_id": "alice",
            "event_timestamp_ms": 1,
            "presented_offering_id": BODY_MARKER,
        },
    }


def leaked(text: str) -> list[str]:
    return [value for value in NEVER_SEEN if value in text]


@pytest.fixture
def log_lines(settings: Settings) -> Iterator[io.StringIO]:
    """Every line this process logs, as the processes log them (config/logs.py)."""
    stream = io.StringIO()
    handler = configure_logging(settings.with_(**SECRETS), process="tests", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def everything_sent(events: CapturingTransport) -> str:
    return "\n".join(envelope.serialize().decode("utf-8", "replace") for envelope in events.envelopes)


def test_settings_repr_shows_no_secret(settings):
    secret = settings.with_(**SECRETS, database_url=f"postgresql+psycopg://engine:{DB_PASSWORD}@db.internal/engine")
    assert leaked(repr(secret)) == [] and leaked(str(secret)) == []
    assert "api_token='***'" in repr(secret) and "engine:***@db.internal" in repr(secret)


@pytest.mark.parametrize(
    "database",
    [
        "sqlite:///{tmp}/never-migrated.sqlite3",  # reachable, but the INSERT fails: the body was a parameter
        f"postgresql+psycopg://engine:{DB_PASSWORD}@127.0.0.1:1/engine",  # down
    ],
)
def test_the_intake_failing_to_store_leaks_nothing(settings, runtime, sentry_events, log_lines, tmp_path, database):
    broken = settings.with_(**SECRETS, database_url=database.format(tmp=tmp_path))
    client = create_app(broken).test_client()
    response = client.post(
        "/webhooks/revenuecat", json=webhook(), headers={"Authorization": SECRETS["revenuecat_webhook_auth"]}
    )
    assert response.status_code == 503 and leaked(response.get_data(as_text=True)) == []
    events = sentry_events.items("event")
    assert any("could not store webhook" in json.dumps(e) for e in events)  # it was reported...
    for event in events:
        for exception in (event.get("exception") or {}).get("values", []):
            assert all("vars" not in frame for frame in exception["stacktrace"]["frames"])
    assert leaked(everything_sent(sentry_events)) == []  # ...with nothing secret in it
    assert "could not store webhook" in log_lines.getvalue()
    assert leaked(log_lines.getvalue()) == []


def test_secrets_written_into_a_log_line_or_an_event_are_redacted(settings, sentry_events, log_lines):
    import sentry_sdk

    from config.redaction import register_secrets

    register_secrets(settings.with_(**SECRETS))
    log = logging.getLogger("tests.operators")
    log.error("provider refused key %s", SECRETS["revenuecat_api_key"])
    sentry_sdk.add_breadcrumb(message=f"auth {SECRETS['revenuecat_webhook_auth']}", data={"params": [BODY_MARKER]})
    sentry_sdk.capture_message(f"token {SECRETS['api_token']}", contexts={"request": {"body": BODY_MARKER}})
    assert "provider refused key [redacted]" in log_lines.getvalue()
    assert leaked(log_lines.getvalue()) == [] and leaked(everything_sent(sentry_events)) == []


def test_a_failing_worker_task_leaks_nothing(settings, tmp_path):
    with SentrySink() as sink:
        broken = settings.with_(
            **SECRETS,
            database_url=f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}",
            sentry_dsn=sink.dsn,
        )
        with celery_worker(broken, log_path=tmp_path / "worker.log"):
            create_celery(broken).send_task("inbox.process", args=(1,))
            wait_for(lambda: sink.items("event"), timeout=60, what="the worker's error event")
        [event] = [e for e in sink.items("event") if e.get("exception")]
        assert event["tags"]["process"] == "worker"
        assert event["exception"]["values"][-1]["type"] == "OperationalError"
        assert leaked(sink.text()) == []
        worker_log = (tmp_path / "worker.log").read_text()
        assert "OperationalError" in worker_log and leaked(worker_log) == []
