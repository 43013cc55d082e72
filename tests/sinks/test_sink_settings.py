"""The Open edX sink's settings: off by default, read from the environment, passed to children."""

from __future__ import annotations

from config.settings import Settings
from tasks.celery_app import beat_schedule


def test_the_sink_is_off_unless_configured():
    settings = Settings.from_env({})
    assert not settings.openedx_enabled and "drain-sink-outbox" not in beat_schedule(settings)
    assert not Settings.from_env({"OPENEDX_LMS_URL": "https://lms.example"}).openedx_enabled  # no credentials


def test_environment_round_trip():
    env = {
        "OPENEDX_LMS_URL": "https://lms.example/",
        "OPENEDX_CLIENT_ID": "id",
        "OPENEDX_CLIENT_SECRET": "secret",
        "SINK_DRAIN_INTERVAL_S": "3",
        "SINK_RETRY_BACKOFF_MAX_S": "120",
        "OPENEDX_JWT_RATE_PER_MINUTE": "60",
        "OPENEDX_BUDGET_WAIT_S": "2.5",
    }
    settings = Settings.from_env(env)
    assert (settings.openedx_lms_url, settings.openedx_client_id, settings.openedx_client_secret) == (
        "https://lms.example",
        "id",
        "secret",
    )
    assert settings.openedx_enabled and (settings.sink_drain_interval_s, settings.sink_retry_backoff_max_s) == (3, 120)
    assert (settings.openedx_jwt_rate_per_minute, settings.openedx_budget_wait_s) == (60, 2.5)
    assert Settings.from_env({}).openedx_jwt_rate_per_minute == 120  # the LMS's staff throttle
    assert Settings.from_env(settings.to_env()) == settings
    entry = beat_schedule(settings)["drain-sink-outbox"]
    assert entry["task"] == "lms.drain" and entry["schedule"] == 3.0
    assert Settings.from_env({"OPENEDX_LMS_URL": "https://lms.example", "OPENEDX_API_KEY": "k"}).openedx_enabled


def test_the_sink_spends_a_budget_of_its_own(settings):
    from adapters.openedx import OpenEdxSink
    from services.wiring import wiring_for

    rt = wiring_for(
        settings.with_(openedx_lms_url="http://lms.invalid", openedx_api_key="k", openedx_jwt_rate_per_minute=90)
    )
    try:
        assert isinstance(rt.course_sink, OpenEdxSink) and rt.course_sink.client.budget is rt.lms_budget
        assert (rt.lms_budget.name, rt.lms_budget.per_minute) == ("openedx", 90)
        assert rt.lms_budget.name != rt.budget.name  # the provider's budget is another one
    finally:
        rt.close()
