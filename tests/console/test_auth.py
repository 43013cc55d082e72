"""Signing in to the console: roles from the configuration, strong hashes only, cookies that
scripts and other sites cannot use, sessions that end, CSRF on every change."""

from __future__ import annotations

import pytest

from persistence.models import OperatorAction
from tests.console.conftest import ADMIN, ADMIN_PASSWORD, SECRET, VIEWER, VIEWER_PASSWORD, post, sign_in
from web.app import create_app
from web.console.auth import ConsoleConfigError, parse_operators


def test_every_page_needs_a_signed_in_operator(console_app):
    client = console_app.test_client()
    for path in ("/console/", "/console/inbox", "/console/learners/alice", "/console/drift.csv", "/console/mappings"):
        response = client.get(path)
        assert response.status_code == 302 and "/console/login?next=" in response.location, path


def test_sign_in_sets_a_cookie_scripts_and_other_sites_cannot_use(console_app, runtime):
    client = console_app.test_client()
    assert sign_in(client, ADMIN, "wrong password").status_code == 401
    response = sign_in(client, ADMIN, ADMIN_PASSWORD)
    assert response.status_code == 302 and response.location.endswith("/console/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert ADMIN_PASSWORD not in cookie
    page = client.get("/console/")
    assert page.status_code == 200 and "ada" in page.text and "admin" in page.text
    assert "script-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    with runtime.session_factory() as session:
        assert session.query(OperatorAction).filter_by(action="console.sign_in").one().actor == "console:ada"


def test_cookie_is_secure_over_https_and_behind_a_trusted_proxy_only(console_settings, runtime):
    direct = create_app(console_settings)
    proxied = create_app(console_settings.with_(trust_proxy_headers=True))
    try:
        https = direct.test_client()
        response = https.get("/console/login", base_url="https://console.example")
        assert "Secure" in response.headers["Set-Cookie"]
        forged = direct.test_client().get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" not in forged.headers["Set-Cookie"]  # no proxy is trusted: the header is ignored
        behind = proxied.test_client().get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in behind.headers["Set-Cookie"]
    finally:
        direct.extensions["engine_wiring"].close()
        proxied.extensions["engine_wiring"].close()


def test_a_change_without_a_csrf_token_is_refused(console, runtime):
    response = console.post("/console/mappings", data={"resource": "course:H01ENB", "creating": "1"})
    assert response.status_code == 400 and "CSRF" in response.text
    forged = console.post("/console/mappings", data={"resource": "course:H01ENB", "csrf_token": "forged"})
    assert forged.status_code == 400


def test_a_viewer_reads_but_cannot_change_anything(viewer):
    assert viewer.get("/console/inbox?status=dead").status_code == 200
    assert "Replay every dead letter" not in viewer.get("/console/inbox?status=dead").text
    for path in (
        "/console/inbox/1/replay",
        "/console/inbox/replay",
        "/console/learners/alice/sync",
        "/console/outbox/retry",
    ):
        assert post(viewer, path).status_code == 403, path
    assert viewer.get("/console/mappings/new").status_code == 403


def test_next_stays_inside_the_console(console_app):
    client = console_app.test_client()
    from tests.console.conftest import csrf_token

    for target, expected in (
        ("/console/drift?window=1h", "/console/drift?window=1h"),
        ("//evil.example/x", "/console/"),
        ("https://evil.example", "/console/"),
    ):
        response = client.post(
            "/console/login",
            data={"username": ADMIN, "password": ADMIN_PASSWORD, "next": target, "csrf_token": csrf_token(client)},
        )
        assert response.location.endswith(expected) and "evil" not in response.location
        client.post("/console/logout", data={"csrf_token": csrf_token(client, "/console/")})


def test_sessions_end_when_idle_too_long_or_too_old(console, monkeypatch, console_settings):
    import web.console.auth as auth

    now = auth.wall_clock_ms()
    monkeypatch.setattr(auth, "wall_clock_ms", lambda: now + (console_settings.console_idle_timeout_s + 5) * 1000)
    response = console.get("/console/")
    assert response.status_code == 302 and "/console/login" in response.location
    assert "Your session ended" in console.get(response.location).text


def test_an_active_session_still_ends_after_its_lifetime(console, monkeypatch, console_settings):
    import web.console.auth as auth

    start, step_ms = auth.wall_clock_ms(), 50 * 60_000  # a request every 50 min keeps it from idling out
    elapsed = 0
    while elapsed + step_ms < console_settings.console_session_ttl_s * 1000:
        elapsed += step_ms
        monkeypatch.setattr(auth, "wall_clock_ms", lambda e=elapsed: start + e)
        assert console.get("/console/activity").status_code == 200, elapsed
    monkeypatch.setattr(auth, "wall_clock_ms", lambda: start + elapsed + step_ms)
    assert console.get("/console/activity").status_code == 302


def test_a_changed_password_or_a_removed_operator_ends_their_sessions(
    console, console_settings, console_users, runtime
):
    from werkzeug.security import generate_password_hash

    new_hash = generate_password_hash("a-new-password-123", method="pbkdf2:sha256:1000")
    others = console_users.split(",")[1]
    app = create_app(console_settings.with_(console_users=f"{ADMIN}:admin:{new_hash},{others}"))
    try:
        client = app.test_client()
        client.set_cookie(
            "engine_console", console.get_cookie("engine_console", path="/console").value, path="/console"
        )
        assert client.get("/console/").status_code == 302
    finally:
        app.extensions["engine_wiring"].close()


def test_sign_in_is_refused_after_repeated_failures(console_app):
    client = console_app.test_client()
    for _ in range(10):
        assert sign_in(client, VIEWER, "nope").status_code == 401
    assert sign_in(client, VIEWER, VIEWER_PASSWORD).status_code == 429


def test_console_is_off_until_configured_and_never_shows_a_hash(settings, runtime, console_users):
    for changes, reason in (
        ({}, "CONSOLE_SECRET_KEY"),
        ({"console_secret_key": SECRET, "console_users": "ada:admin:plaintext"}, "CONSOLE_USERS entry 1 (ada)"),
        ({"console_secret_key": "short", "console_users": console_users}, "at least 32"),
    ):
        app = create_app(settings.with_(**changes))
        try:
            page = app.test_client().get("/console/")
            assert page.status_code == 503 and reason in page.text
            assert "pbkdf2:sha256:1000$" not in page.text and "plaintext" not in page.text
        finally:
            app.extensions["engine_wiring"].close()


def test_operator_entries_must_use_strong_hashes():
    with pytest.raises(ConsoleConfigError, match="entry 2"):
        parse_operators("a:admin:scrypt:32768:8:1$x$y,b:viewer:md5$x")
    with pytest.raises(ConsoleConfigError, match="twice"):
        parse_operators("a:admin:scrypt:1$x$y,a:viewer:scrypt:1$x$y")
    ops = parse_operators(" a:admin:scrypt:1$x$y , b:viewer:pbkdf2:sha256:1$x$y ")
    assert {o.name: o.role for o in ops.values()} == {"a": "admin", "b": "viewer"}
    assert "scrypt" not in repr(ops["a"])


def test_settings_hide_console_secrets(console_settings):
    text = repr(console_settings)
    assert SECRET not in text and "pbkdf2" not in text


def test_hash_password_command_prints_an_entry(console_app):
    result = console_app.test_cli_runner().invoke(
        args=["console-hash-password", "--name", "bea", "--role", "admin"],
        input="long-enough-password\nlong-enough-password\n",
    )
    assert result.exit_code == 0, result.output
    entry = result.output.strip().splitlines()[-1]
    (op,) = parse_operators(entry).values()
    assert op.name == "bea" and op.role == "admin" and op.password_hash.startswith("scrypt:")
