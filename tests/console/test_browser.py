"""The console in a real browser (headless Chromium over Selenium), served on a real port: what
an operator clicks. Each page visited is saved as a screenshot under screenshots/console/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from services.inbox import process_inbox_event
from services.sweep import reconcile_customers
from simulators.serving import ServedApp
from tests.conftest import WEBHOOK_AUTH
from tests.console.browser import chromium, needs_chromium, screenshot
from tests.console.conftest import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD
from tests.support import celery_worker, wait_for

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture
def served(console_app) -> Iterator[str]:
    with ServedApp(console_app, name="console-under-test") as server:
        yield server.url


@pytest.fixture
def browser() -> Iterator:
    with chromium() as driver:
        yield driver


def sign_in(driver, base: str, name: str, password: str) -> None:
    driver.get(f"{base}/console/")
    assert "/console/login" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/console/login" not in driver.current_url, timeout=10, what="sign-in")


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def store(client, body: dict) -> int:
    response = client.post("/webhooks/revenuecat", json=body, headers={"Authorization": WEBHOOK_AUTH})
    assert response.status_code in (200, 400), response.json
    return response.json["inbox_id"]


def scenario(console_app, runtime, simulator) -> int:
    """Three purchases processed, one webhook malformed, one a dead letter (the provider refused
    to read its learner): the dead letter's inbox id."""
    client = console_app.test_client()
    for user, product in (("alice", "premium_monthly"), ("bob", "h01enb"), ("carol", "premium_monthly")):
        body = (
            simulator.state.purchase_non_renewing(user, product)
            if product == "h01enb"
            else simulator.state.purchase_subscription(user, product)
        )
        assert process_inbox_event(store(client, body), runtime.event_processing).status == "processed"
    store(client, {"event": {"type": "RENEWAL"}})  # malformed: no id
    dead = store(client, simulator.state.purchase_subscription("dave", "premium_monthly"))
    simulator.state.fail_next(1, 400)
    assert process_inbox_event(dead, runtime.event_processing).status == "dead"
    return dead


def test_sign_in_and_the_overview_shows_the_scenario(served, browser, console_app, runtime, simulator):
    dead = scenario(console_app, runtime, simulator)
    tx = simulator.state.subscriber("bob")[1]["subscriber"]["non_subscriptions"]["h01enb"][0]["store_transaction_id"]
    simulator.state.refund("bob", tx)  # its webhook is lost: the sweep finds the refund
    assert reconcile_customers(["bob"], runtime.sweep_reads).drift == {"missed_revocation": 1}
    sign_in(browser, served, ADMIN, ADMIN_PASSWORD)
    assert text_of(browser, "kpi-received") == "5"
    assert text_of(browser, "kpi-processed") == "3"
    assert text_of(browser, "kpi-failed") == "1"  # the malformed one
    assert text_of(browser, "kpi-dead") == "1"
    assert text_of(browser, "kpi-success") == "75.00%"  # 3 processed of 4 that ended
    assert "p50" in text_of(browser, "kpi-latency")
    assert browser.find_element(By.CSS_SELECTOR, "ul.legend").text.split() == ["missed_revocation", "1"]
    screenshot(browser, "01-overview")
    browser.get(f"{served}/console/inbox")
    screenshot(browser, "02-inbox")
    browser.get(f"{served}/console/inbox/{dead}")
    assert "provider refused" in browser.find_element(By.CSS_SELECTOR, "pre.error").text
    screenshot(browser, "03-dead-letter")
    browser.get(f"{served}/console/learners")
    browser.find_element(By.ID, "learner-q").send_keys("alice")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(lambda: "/console/learners/alice" in browser.current_url, timeout=10, what="the learner page")
    assert "module:algebra" in browser.find_element(By.TAG_NAME, "main").text
    screenshot(browser, "04-learner")
    for name, path in (
        ("05-learners", "/console/learners"),
        ("06-drift", "/console/drift"),
        ("07-outbox", "/console/outbox"),
        ("08-activity", "/console/activity"),
    ):
        browser.get(served + path)
        screenshot(browser, name)


def test_find_a_dead_letter_replay_it_and_see_it_processed(
    served, browser, console_app, console_settings, runtime, simulator
):
    dead = scenario(console_app, runtime, simulator)
    sign_in(browser, served, ADMIN, ADMIN_PASSWORD)
    browser.get(f"{served}/console/inbox")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("dead")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(lambda: "status=dead" in browser.current_url, timeout=10, what="the filtered inbox")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.rows tbody tr")
    assert len(rows) == 1 and str(dead) in rows[0].text
    rows[0].find_element(By.LINK_TEXT, str(dead)).click()
    wait_for(lambda: browser.find_elements(By.ID, "replay"), timeout=10, what="the dead letter's page")
    with celery_worker(console_settings):
        browser.find_element(By.ID, "replay").click()
        wait_for(lambda: "/console/replays/" in browser.current_url, timeout=10, what="the replay page")
        screenshot(browser, "09-replay-watching")
        # the page refreshes by itself (meta refresh) until the worker is done
        wait_for(
            lambda: browser.find_elements(By.ID, "replay-done"), timeout=60, interval=0.5, what="the replay to finish"
        )
    assert text_of(browser, "replay-processed") == "1"
    screenshot(browser, "10-replay-done")
    browser.get(f"{served}/console/activity")
    assert "console:ada" in browser.page_source and "inbox.replay" in browser.page_source


def test_edit_a_mapping_and_see_the_error_next_to_the_bad_field(served, browser):
    sign_in(browser, served, ADMIN, ADMIN_PASSWORD)
    browser.get(f"{served}/console/mappings")
    browser.find_element(By.ID, "mapping-new").click()
    wait_for(lambda: browser.find_elements(By.ID, "save-mapping"), timeout=10, what="the mapping form")
    browser.find_element(By.NAME, "resource").send_keys("course:H01ENB")
    browser.find_element(By.ID, "course_run_id").send_keys("course-v1:HypnoElp+H01ENB+2024")
    browser.find_element(By.ID, "save-mapping").click()
    wait_for(lambda: browser.find_elements(By.ID, "mapping-1"), timeout=10, what="the saved mapping")
    assert "course-v1:HypnoElp+H01ENB+2024" in browser.find_element(By.CSS_SELECTOR, "table.rows").text
    screenshot(browser, "11-mappings")
    browser.find_element(By.CSS_SELECTOR, "#mapping-1 a.edit").click()
    wait_for(lambda: "/edit" in browser.current_url, timeout=10, what="the edit form")
    run = browser.find_element(By.ID, "course_run_id")
    run.clear()
    run.send_keys("HypnoElp H01ENB")
    expires = browser.find_element(By.ID, "expires_at")
    expires.send_keys("2026-06-30")
    browser.find_element(By.ID, "save-mapping").click()
    wait_for(lambda: browser.find_elements(By.ID, "error-course_run_id"), timeout=10, what="the field's error")
    assert "is not an Open edX course key" in text_of(browser, "error-course_run_id")
    assert "has no timezone" in text_of(browser, "error-expires_at")
    screenshot(browser, "12-mapping-error")
    browser.get(f"{served}/console/mappings")
    assert "course-v1:HypnoElp+H01ENB+2024" in browser.find_element(By.CSS_SELECTOR, "table.rows").text  # unchanged


def test_a_viewer_cannot_replay(served, browser, console_app, runtime, simulator):
    dead = scenario(console_app, runtime, simulator)
    sign_in(browser, served, VIEWER, VIEWER_PASSWORD)
    browser.get(f"{served}/console/inbox/{dead}")
    assert not browser.find_elements(By.ID, "replay")
    assert "An admin can replay" in browser.page_source
    screenshot(browser, "13-viewer-dead-letter")
    # Posting the replay anyway (a form built in the page, with the viewer's own CSRF token).
    browser.execute_script(
        """const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
        const t = document.querySelector('input[name=csrf_token]').cloneNode(); f.appendChild(t);
        document.body.appendChild(f); f.submit();""",
        f"/console/inbox/{dead}/replay",
    )
    wait_for(lambda: "Admins only" in browser.page_source, timeout=10, what="the refusal")
    with runtime.session_factory() as session:
        from persistence.models import InboxEvent

        assert session.get(InboxEvent, dead).status == "dead"


def test_a_change_without_its_csrf_token_is_refused(served, browser):
    sign_in(browser, served, ADMIN, ADMIN_PASSWORD)
    browser.get(f"{served}/console/mappings/new")
    browser.execute_script("document.querySelector('form.stacked input[name=csrf_token]').remove()")
    browser.find_element(By.NAME, "resource").send_keys("course:H01ENB")
    browser.find_element(By.ID, "course_run_id").send_keys("course-v1:HypnoElp+H01ENB+2024")
    browser.find_element(By.ID, "save-mapping").click()
    wait_for(lambda: "Change refused" in browser.page_source, timeout=10, what="the refusal")
    assert "Change refused" in browser.page_source and "CSRF" in browser.page_source
    screenshot(browser, "14-csrf-refused")
    browser.get(f"{served}/console/mappings")
    assert "No course is mapped" in browser.page_source
