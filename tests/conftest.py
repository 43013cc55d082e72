"""Fixtures: one migrated database and one Redis per session (SQLite + embedded Redis by
default; PostgreSQL and a real Redis when DATABASE_URL / REDIS_URL are set), cleaned per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import delete

from adapters.embedded_redis import redis_url
from adapters.metrics import flush_all
from config.settings import Settings
from persistence.database import make_engine, upgrade_database
from persistence.models import Base
from services.wiring import Wiring, wiring_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEBHOOK_AUTH = "Bearer test-webhook-secret"
API_TOKEN = "test-api-token"
SIM_KEY = "sk_test_simulator"


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    env = Settings.from_env()
    instance = tmp_path_factory.mktemp("instance")
    database_url = env.database_url
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{instance / 'test.sqlite3'}"
    else:
        database_url = _private_schema(database_url)
    settings = env.with_(
        instance_path=instance,
        database_url=database_url,
        revenuecat_webhook_auth=WEBHOOK_AUTH,
        api_token=API_TOKEN,
        revenuecat_api_key=SIM_KEY,
        catalog_path=FIXTURES / "catalog.toml",
        sentry_dsn="",
        allow_embedded=True,  # the workers and beats tests start may run on the embedded stand-ins
    )
    upgrade_database(settings)
    yield settings
    if not settings.redis_url:
        from adapters.embedded_redis import stop_embedded_redis

        stop_embedded_redis()  # or each run leaves its embedded redis-server running


def _private_schema(url: str) -> str:
    """A fresh PostgreSQL schema for this test run (dropped at exit): leftovers from other runs,
    or runs at the same time, cannot interfere. Child processes get it through the URL."""
    import atexit
    import os
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    atexit.register(drop)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def clean_state(base_settings: Settings) -> None:
    """Empty tables and an empty Redis database before the test."""
    engine = make_engine(base_settings)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    engine.dispose()
    flush_all()  # counts an earlier test's wiring still holds land before Redis is emptied
    redis_lib.Redis.from_url(redis_url(base_settings)).flushdb()


@pytest.fixture
def simulator(base_settings: Settings):
    from simulators.revenuecat.server import SimulatorServer

    with SimulatorServer(api_key=SIM_KEY, webhook_auth=WEBHOOK_AUTH) as sim:
        yield sim


@pytest.fixture
def settings(base_settings: Settings, simulator, clean_state) -> Settings:
    return base_settings.with_(revenuecat_api_url=simulator.url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Wiring]:
    rt = wiring_for(settings)
    yield rt
    rt.close()


@pytest.fixture
def v2_settings(settings: Settings, simulator) -> Settings:
    """The same, with REST API v2 on against the simulator."""
    return settings.with_(revenuecat_project_id=simulator.project_id, revenuecat_v2_api_key=simulator.v2_api_key)


@pytest.fixture
def v2_runtime(v2_settings: Settings) -> Iterator[Wiring]:
    rt = wiring_for(v2_settings)
    yield rt
    rt.close()


@pytest.fixture
def app(settings: Settings, runtime: Wiring):
    from web.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_server(app):
    """The Flask app on a real HTTP port (werkzeug, threaded) for webhooks sent by the simulator."""
    from simulators.serving import ServedApp

    with ServedApp(app, name="engine-under-test") as server:
        yield server.url


class CapturingTransport:
    """Sentry envelopes kept in memory (no network): ``items("event")``, ``items("check_in")``."""

    def __init__(self) -> None:
        self.envelopes: list = []

    def items(self, kind: str) -> list[dict]:
        return [item.payload.json for env in self.envelopes for item in env.items if item.headers.get("type") == kind]


_CAPTURED = CapturingTransport()
_sentry_ready = False


@pytest.fixture
def sentry_events(base_settings: Settings) -> CapturingTransport:
    """Sentry initialised once per session as every process initialises it (config/observability.py:
    the same integrations and scrubbing) but with a local transport; emptied for each test."""
    global _sentry_ready  # noqa: PLW0603 - once per process
    from sentry_sdk.transport import Transport

    from config.observability import init_sentry

    if not _sentry_ready:

        class LocalTransport(Transport):
            def capture_envelope(self, envelope) -> None:
                _CAPTURED.envelopes.append(envelope)

        # A DSN on a reserved, unroutable name: the transport above never sends anything.
        init_sentry(
            base_settings.with_(sentry_dsn="https://public@sentry.invalid/1"),
            component="tests",
            transport=LocalTransport(),
        )
        _sentry_ready = True
    _CAPTURED.envelopes.clear()
    return _CAPTURED
