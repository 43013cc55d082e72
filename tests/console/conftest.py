"""Console fixtures: an app with two operators (ada, an admin; vic, a viewer), and signing in
through the real form (CSRF token included)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from config.settings import Settings
from web.app import create_app

ADMIN, ADMIN_PASSWORD = "ada", "ada-correct-horse-battery"
VIEWER, VIEWER_PASSWORD = "vic", "vic-correct-horse-battery"
SECRET = "console-test-secret-0123456789abcdef"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session")
def console_users() -> str:
    # pbkdf2 with few rounds: the tests' hashes need not resist anything, and scrypt's cost
    # per sign-in would add up over the suite
    admin = generate_password_hash(ADMIN_PASSWORD, method="pbkdf2:sha256:1000")
    viewer = generate_password_hash(VIEWER_PASSWORD, method="pbkdf2:sha256:1000")
    return f"{ADMIN}:admin:{admin},{VIEWER}:viewer:{viewer}"


@pytest.fixture
def console_settings(settings: Settings, console_users: str) -> Settings:
    return settings.with_(console_users=console_users, console_secret_key=SECRET)


@pytest.fixture
def console_app(console_settings: Settings, runtime) -> Iterator[Flask]:
    app = create_app(console_settings)
    yield app
    app.extensions["engine_wiring"].close()


@pytest.fixture
def console(console_app: Flask) -> FlaskClient:
    """A test client signed in as the admin."""
    client = console_app.test_client()
    sign_in(client, ADMIN, ADMIN_PASSWORD)
    return client


@pytest.fixture
def viewer(console_app: Flask) -> FlaskClient:
    client = console_app.test_client()
    sign_in(client, VIEWER, VIEWER_PASSWORD)
    return client


def csrf_token(client: FlaskClient, path: str = "/console/login") -> str:
    page = client.get(path)
    match = _TOKEN.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient, name: str, password: str):
    response = client.post(
        "/console/login", data={"username": name, "password": password, "csrf_token": csrf_token(client)}
    )
    assert response.status_code in (302, 401, 429), response.status_code
    return response


def post(client: FlaskClient, path: str, data: dict | None = None, *, token_from: str = "/console/", **kwargs):
    """A form post with the CSRF token of a page the operator has open."""
    return client.post(path, data={"csrf_token": csrf_token(client, token_from), **(data or {})}, **kwargs)
