"""The console with REST API v2: what discovery healed is on the drift page under its own kind,
found by discovery, and the discovery job is among the beat jobs."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from config.settings import Settings
from services.discovery import run_discovery
from tasks.celery_app import create_celery
from tests.console.conftest import ADMIN, ADMIN_PASSWORD, sign_in
from web.app import create_app


@pytest.fixture
def v2_console_app(console_settings: Settings, simulator) -> Iterator[Flask]:
    app = create_app(
        console_settings.with_(revenuecat_project_id=simulator.project_id, revenuecat_v2_api_key=simulator.v2_api_key)
    )
    yield app
    app.extensions["engine_wiring"].close()


@pytest.fixture
def v2_console(v2_console_app: Flask) -> FlaskClient:
    client = v2_console_app.test_client()
    sign_in(client, ADMIN, ADMIN_PASSWORD)
    return client


def test_discovered_customers_are_drift_of_their_own_kind_on_the_drift_page(v2_console_app, v2_console, simulator):
    simulator.state.purchase_non_renewing("walk-in", "h01enb")
    wiring = v2_console_app.extensions["engine_wiring"]
    assert run_discovery(replace(wiring.discovery, page_size=2)).repaired == 1
    page = v2_console.get("/console/drift?window=1h").text
    assert "undiscovered_customer" in page and "walk-in" in page and "<td>discovery</td>" in page
    rows = list(
        csv.DictReader(io.StringIO(v2_console.get("/console/drift.csv?window=1h&kind=undiscovered_customer").text))
    )
    assert [(r["customer_id"], r["action"], r["cause"]) for r in rows] == [("walk-in", "grant", "discovery")]


def discovery_row(client: FlaskClient) -> str:
    found = re.search(r'<td class="mono">discovery</td>.*?</tr>', client.get("/console/").text, re.S)
    assert found is not None, "no discovery row among the beat jobs"
    return found.group(0)


def test_the_discovery_job_is_among_the_beat_jobs(v2_console_app, v2_console):
    assert "never ran" in discovery_row(v2_console)
    create_celery(v2_console_app.config["ENGINE_SETTINGS"]).tasks["discovery.run"].apply().get()
    assert "on time" in discovery_row(v2_console)


def test_without_v2_there_is_no_discovery_job(console):
    assert '<td class="mono">discovery</td>' not in console.get("/console/").text
