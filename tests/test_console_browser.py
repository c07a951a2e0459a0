"""The console in a real browser: headless Chromium against a real ``serve`` process, with the
FreshBooks simulator as FreshBooks (see ``browser.py`` for the browser and its evidence).

Each test is what an operator does: sign in and out, a form sent without its CSRF token, a tenant
whose grant FreshBooks revoked showing its reconnect link, a subscription whose secret is shown
once, a dead delivery replayed from its page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from browser import click, keep_evidence, require_chromium, screenshot_for_readme, start_chromium, wait_for
from conftest import ON_POSTGRES, OWNER_ACCOUNT_ID
from processes import (
    STARTUP_TIMEOUT,
    Admin,
    FreshBooksSender,
    ServiceProcess,
    children,
    connect_tenant,
    free_port,
    service_env,
    wait_until,
)
from sqlalchemy import select

from webhook_service.core.crypto import SecretBox
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant

pytestmark = [
    pytest.mark.slow,
    # The browser sees the same pages on either database; the pages' reads and writes run on
    # PostgreSQL in tests/test_console.py. Once per CI run keeps each run under six minutes.
    pytest.mark.skipif(ON_POSTGRES, reason="the browser tests run once, on SQLite"),
]


@dataclass
class Console:
    service: ServiceProcess
    admin: Admin
    token: str
    tenant_id: str

    @property
    def url(self) -> str:
        return f"{self.service.base_url}/console"


@pytest.fixture
def console(database_url, simulator, tmp_path) -> Iterator[Console]:
    require_chromium()
    port = free_port()
    # one attempt per delivery: a refused one is dead at once, for the replay test
    env = service_env(database_url, simulator, port, delivery_retry_schedule="0")
    with children(tmp_path) as processes:
        service = processes.start_service("service", port, env)
        admin = Admin(service.base_url, env["ADMIN_TOKEN"])
        try:
            tenant_id = connect_tenant(simulator, env, tmp_path, admin)
            yield Console(service, admin, env["ADMIN_TOKEN"], tenant_id)
        finally:
            admin.close()


@pytest.fixture
def chrome(request) -> Iterator[Any]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"\nscreenshot of the failure: {keep_evidence(driver, request.node.name)}")
        driver.quit()


def heading(chrome: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(chrome.find_element(By.TAG_NAME, "h1").text)


def sign_in(chrome: Any, console: Console, token: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    chrome.get(f"{console.url}/")
    wait_for(chrome, lambda c: heading(c) == "Sign in", "the sign-in form")
    field = chrome.find_element(By.ID, "token")
    field.send_keys(token if token is not None else console.token)
    field.submit()


def test_an_operator_signs_in_sees_the_overview_and_signs_out(console, chrome):
    from selenium.webdriver.common.by import By

    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    assert chrome.current_url == f"{console.url}/"
    assert console.token not in chrome.current_url and console.token not in chrome.page_source
    cookie = chrome.get_cookie("console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert chrome.execute_script("return document.cookie") == ""  # out of any script's reach
    assert "verified" in chrome.page_source  # the tenant's callbacks, counted

    click(chrome, By.CSS_SELECTOR, ".sign-out button")
    wait_for(chrome, lambda c: heading(c) == "Sign in", "the sign-in form after signing out")
    chrome.get(f"{console.url}/tenants")
    wait_for(chrome, lambda c: heading(c) == "Sign in", "a page to send a signed-out browser to sign in")


def test_a_wrong_token_is_refused(console, chrome):
    from selenium.webdriver.common.by import By

    sign_in(chrome, console, "not-the-admin-token")
    alert = wait_for(chrome, lambda c: c.find_element(By.CSS_SELECTOR, "[role=alert]"), "the refusal")
    assert "not this service's admin token" in alert.text
    assert heading(chrome) == "Sign in"


def test_a_form_posted_without_its_csrf_token_is_refused(console, chrome):
    from selenium.webdriver.common.by import By

    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    # what a forged form would send: the same form without the token
    chrome.execute_script("document.querySelector('.sign-out input[name=csrf_token]').remove()")
    click(chrome, By.CSS_SELECTOR, ".sign-out button")
    wait_for(chrome, lambda c: heading(c) == "Not done", "the refusal page")
    assert "did not come from this console" in chrome.page_source
    cookies = {cookie["name"]: cookie["value"] for cookie in chrome.get_cookies()}
    refused = httpx.post(f"{console.url}/sign-out", data={"from": "elsewhere"}, cookies=cookies)
    assert refused.status_code == 403  # the status the browser got for that page
    chrome.get(f"{console.url}/")
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview: still signed in")


def test_a_tenant_waiting_for_reauthorization_shows_its_reconnect_link(console, chrome, simulator, database_url):
    from selenium.webdriver.common.by import By

    # The customer revokes the app in FreshBooks; the next fetch finds the access token refused,
    # the refresh is refused too (invalid_grant), and the tenant waits for re-authorization.
    simulator.state.revoke_token(
        {
            "client_id": simulator.state.client_id,
            "client_secret": simulator.state.client_secret,
            "token": _refresh_token(database_url, console),
        }
    )
    simulator.state.expire_access_tokens()
    sender = FreshBooksSender(simulator)
    with httpx.Client(timeout=10.0) as client:
        assert sender.post(client, console.service.base_url, 1) == 200
    wait_until(
        lambda: _status(console),
        STARTUP_TIMEOUT,
        "the tenant to wait for re-authorization",
        interval=0.2,
    )

    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    assert "Tenants needing attention" in chrome.page_source
    click(chrome, By.LINK_TEXT, "Tenants")
    wait_for(chrome, lambda c: heading(c) == "Tenants", "the tenant list")
    click(chrome, By.CSS_SELECTOR, f"a[href='/console/tenants/{console.tenant_id}']")
    link = wait_for(chrome, lambda c: c.find_element(By.ID, "reconnect"), "the reconnect link")
    assert link.get_attribute("href").endswith("/oauth/freshbooks/start?business_id=" + _business_id(console))
    assert "invalid_grant" in chrome.page_source  # the reason
    screenshot_for_readme(chrome, "tenant")


def _status(console: Console) -> bool:
    response = console.admin.client.get(f"/tenants/{console.tenant_id}")
    return bool(response.json()["status"] == "reauth_required")


def _business_id(console: Console) -> str:
    return str(console.admin.client.get(f"/tenants/{console.tenant_id}").json()["business_id"])


def _refresh_token(database_url: str, console: Console) -> str:
    """The tenant's current refresh token, as the service stored it (decrypted with its key)."""

    async def read() -> str:
        db = Database(database_url)
        try:
            async with db.sessions() as session:
                stored = (
                    await session.execute(select(Tenant.refresh_token_enc).where(Tenant.id == console.tenant_id))
                ).scalar_one()
        finally:
            await db.dispose()
        return SecretBox([console.service.env["SECRET_KEY"]]).decrypt(stored)

    return asyncio.run(read())


def test_a_subscription_created_in_the_console_shows_its_secret_once(console, chrome, sink):
    from selenium.webdriver.common.by import By

    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    click(chrome, By.LINK_TEXT, "Subscriptions")
    wait_for(chrome, lambda c: heading(c) == "Subscriptions", "the subscriptions")
    click(chrome, By.LINK_TEXT, "New subscription")
    wait_for(chrome, lambda c: heading(c) == "New subscription", "the form")
    chrome.find_element(By.ID, "url").send_keys(f"{sink.base_url}/hook")
    chrome.find_element(By.ID, "description").send_keys("billing system")
    events = chrome.find_element(By.ID, "event_types")
    events.clear()
    events.send_keys("invoice.*")
    click(chrome, By.CSS_SELECTOR, "form.fields button[type=submit]")
    wait_for(chrome, lambda c: heading(c) == "Subscription created", "the secret page")
    secret = chrome.find_element(By.ID, "secret").text
    assert secret.startswith("whsec_")
    click(chrome, By.CSS_SELECTOR, "button[data-copy=secret]")
    wait_for(chrome, lambda c: c.find_element(By.CSS_SELECTOR, "button[data-copy]").text != "Copy", "the copy button")
    assert chrome.current_url == f"{console.url}/subscriptions"  # the secret is in no URL

    click(chrome, By.LINK_TEXT, "Done")
    wait_for(chrome, lambda c: heading(c) == "Subscription", "the subscription's page")
    assert secret not in chrome.page_source
    chrome.back()  # the answer that showed it is not cached (no-store): going back does not show it again
    assert secret not in chrome.page_source
    [listed] = console.admin.get("/subscriptions")
    assert listed["url"] == f"{sink.base_url}/hook" and listed["event_types"] == ["invoice.*"]
    assert "secret" not in listed


def test_a_dead_delivery_replayed_from_its_page_succeeds(console, chrome, simulator, sink):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    console.admin.subscribe(f"{sink.base_url}/hook")
    sink.sink.script(500)  # the subscriber fails the first delivery; with one attempt it is dead
    with httpx.Client(timeout=10.0) as client:
        assert FreshBooksSender(simulator).post(client, console.service.base_url, 1) == 200
    [dead] = wait_until(
        lambda: [d for d in console.admin.deliveries() if d["status"] == "dead"] or None,
        STARTUP_TIMEOUT,
        "the delivery to be dead",
    )

    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    click(chrome, By.LINK_TEXT, "Deliveries")
    wait_for(chrome, lambda c: heading(c) == "Deliveries", "the deliveries")
    Select(chrome.find_element(By.ID, "status")).select_by_value("dead")
    click(chrome, By.CSS_SELECTOR, "form.filters button")
    click(chrome, By.LINK_TEXT, dead["id"])
    wait_for(chrome, lambda c: heading(c) == "Delivery", "the delivery's page")
    timeline = chrome.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert "#1" in timeline and "HTTP 500" in timeline

    click(chrome, By.ID, "replay")
    wait_for(chrome, lambda c: "Queued again" in c.page_source, "the replay's notice")

    def succeeded(c: Any) -> bool:
        if c.find_element(By.ID, "delivery-status").text == "succeeded":
            return True
        c.refresh()
        return False

    wait_for(chrome, succeeded, "the replayed delivery to succeed")
    timeline = chrome.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert "HTTP 500" in timeline and "HTTP 200" in timeline
    screenshot_for_readme(chrome, "delivery")
    ids = {request.headers["webhook-id"] for request in sink.sink.received}
    assert len(sink.sink.received) == 2 and len(ids) == 1  # the same delivery, sent again


def test_a_backfill_started_from_the_tenant_page_runs_to_completion_with_progress_shown(console, chrome, simulator):
    from selenium.webdriver.common.by import By

    # Three invoices made while FreshBooks dropped every webhook: what a backfill exists to recover.
    simulator.state.delivery_drop_rate = 1.0
    for _ in range(3):
        simulator.state.create_object(OWNER_ACCOUNT_ID, "invoice")
    simulator.state.flush_deliveries()
    sign_in(chrome, console)
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    chrome.get(f"{console.url}/tenants/{console.tenant_id}")
    click(chrome, By.ID, "run-backfill")
    counts = wait_for(chrome, lambda c: c.find_element(By.ID, "backfill-counts"), "the job's progress")
    assert "resources" in counts.text
    assert "Backfill running" in chrome.page_source or "Backfill finished" in chrome.page_source
    # the page refreshes itself (console.js) while the job runs: no reload from here on
    wait_for(
        chrome,
        lambda c: "Backfill finished" in c.find_element(By.ID, "backfill-job").text,
        "the backfill to finish",
        timeout=120,
    )
    done = chrome.find_element(By.ID, "backfill-counts").text
    assert "3 events recovered" in done, done
    progress = chrome.find_element(By.ID, "backfill-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max")
    recovered = console.admin.get("/events", origin="backfill")
    assert sorted(event["type"] for event in recovered) == ["invoice.created"] * 3
    chrome.get(f"{console.url}/")
    wait_for(chrome, lambda c: heading(c) == "Overview", "the overview")
    screenshot_for_readme(chrome, "overview")


UNLABELLED = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(field => field.labels.length === 0 && !field.closest('label'))
  .map(field => field.name || field.id);
"""
OVERFLOW = "return document.documentElement.scrollWidth - window.innerWidth;"


def test_every_page_works_from_a_keyboard_and_at_390_px_wide(console, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    narrow = start_chromium(width=390, height=844)
    try:
        narrow.get(f"{console.url}/")
        wait_for(narrow, lambda c: heading(c) == "Sign in", "the sign-in form")
        narrow.switch_to.active_element.send_keys(console.token + Keys.ENTER)  # the field has the focus
        wait_for(narrow, lambda c: heading(c) == "Overview", "the overview")
        for path in (
            "/",
            "/tenants",
            f"/tenants/{console.tenant_id}",
            "/subscriptions",
            "/subscriptions/new",
            "/events",
            "/deliveries",
        ):
            narrow.get(console.url + path)
            wait_for(narrow, lambda c: c.find_element(By.TAG_NAME, "h1"), f"{path} to load")
            assert narrow.execute_script(UNLABELLED) == [], path
            assert narrow.execute_script(OVERFLOW) <= 1, f"{path} is wider than the screen"
        # from the top of a page, the first Tab reaches "skip to content", which moves the focus there
        narrow.get(f"{console.url}/deliveries")
        narrow.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert narrow.switch_to.active_element.text == "Skip to content"
        narrow.switch_to.active_element.send_keys(Keys.ENTER)
        assert narrow.switch_to.active_element.get_attribute("id") == "main"
    except BaseException:
        print(f"\\nscreenshot of the failure: {keep_evidence(narrow, request.node.name)}")
        raise
    finally:
        narrow.quit()
