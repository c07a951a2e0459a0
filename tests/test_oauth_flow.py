"""The browser flow: start, FreshBooks authorize (simulated), callback, business choice."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from webhook_service.config import DEFAULT_SCOPES
from webhook_service.runtime import Runtime
from webhook_service.storage import tenants as tenant_store


@pytest.fixture
def browser(service):
    """A browser-like client of the service running on 127.0.0.1: it keeps cookies."""
    with httpx.Client(base_url=service.base_url) as client:
        yield client


def _authorize(simulator_url: str) -> httpx.Response:
    """What the user's browser does at FreshBooks: approve and get redirected back."""
    return httpx.get(simulator_url, follow_redirects=False)


def _to_callback(browser: httpx.Client, location: str, **extra: str) -> httpx.Response:
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | extra
    return browser.get(parts.path, params=query)


def _tenants(settings):
    async def read():
        async with Runtime.open(settings, migrate_schema=False) as runtime, runtime.db.sessions() as session:
            return await tenant_store.list_all(session)

    return asyncio.run(read())


def test_start_redirects_with_full_scopes_and_signed_state(browser, simulator, settings):
    response = browser.get("/oauth/freshbooks/start", follow_redirects=False)
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    query = parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}" == simulator.base_url
    assert target.path == "/oauth/authorize"
    assert query["client_id"] == [simulator.state.client_id]
    assert query["redirect_uri"] == [f"{settings.public_base_url}/oauth/freshbooks/callback"]
    assert set(query["scope"][0].split()) == set(DEFAULT_SCOPES)
    assert query["state"][0]
    assert "fb_oauth_nonce" in response.headers["set-cookie"]


def test_flow_with_business_id_connects_that_business(browser, simulator, settings):
    start = browser.get("/oauth/freshbooks/start", params={"business_id": 439001}, follow_redirects=False)
    approved = _authorize(start.headers["location"])
    assert approved.status_code == 302
    page = _to_callback(browser, approved.headers["location"])
    assert page.status_code == 200, page.text
    assert "Second Co." in page.text
    [tenant] = _tenants(settings)
    assert (tenant.business_id, tenant.account_id, tenant.role, tenant.status) == (
        439001,
        "XYZ789",
        "business_manager",
        "active",
    )


def test_flow_without_choice_lists_businesses_then_connects_the_chosen_one(browser, simulator, settings):
    start = browser.get("/oauth/freshbooks/start", follow_redirects=False)
    page = _to_callback(browser, _authorize(start.headers["location"]).headers["location"])
    assert page.status_code == 200
    assert "Choose a business" in page.text
    assert "Awesome Inc." in page.text and "Second Co." in page.text
    assert "Client Portal Biz" not in page.text  # a client-role membership cannot be connected
    assert _tenants(settings) == []

    link = next(part.split('"')[0] for part in page.text.split('href="')[1:] if "business_id=439000" in part)
    done = browser.get(link.replace("&amp;", "&"))
    assert done.status_code == 200
    assert "Awesome Inc." in done.text
    [tenant] = _tenants(settings)
    assert (tenant.business_id, tenant.account_id) == (439000, "ABC123")
    assert browser.get(link.replace("&amp;", "&")).status_code == 403  # the held grant was used up


def test_client_only_identity_gets_a_clear_page(browser, simulator, settings):
    identity = simulator.state.add_identity([{"business_id": 777001, "name": "Vendor Portal", "role": "client"}])
    start = browser.get("/oauth/freshbooks/start", follow_redirects=False)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    code = simulator.state.issue_authorization_code(settings.redirect_uri, identity_id=identity)
    page = browser.get("/oauth/freshbooks/callback", params={"code": code, "state": state})
    assert page.status_code == 403
    assert "client" in page.text.lower() and "Traceback" not in page.text
    assert _tenants(settings) == []


def test_bad_state_is_refused(browser, simulator, settings):
    browser.get("/oauth/freshbooks/start", follow_redirects=False)
    code = simulator.state.issue_authorization_code(settings.redirect_uri)
    page = browser.get("/oauth/freshbooks/callback", params={"code": code, "state": "forged"})
    assert page.status_code == 400
    assert _tenants(settings) == []


def test_expired_state_is_refused(browser, simulator, settings, monkeypatch):
    start = browser.get("/oauth/freshbooks/start", follow_redirects=False)
    nonce = browser.cookies.get("fb_oauth_nonce")
    import itsdangerous.timed

    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner,
        "get_timestamp",
        lambda self: int(__import__("time").time()) - settings.oauth_state_ttl - 5,
    )
    old_state = URLSafeTimedSerializer(
        settings.secret_key.get_secret_value(), salt="webhook-service/oauth-state"
    ).dumps({"n": nonce, "b": None})
    monkeypatch.undo()
    code = simulator.state.issue_authorization_code(settings.redirect_uri)
    page = browser.get("/oauth/freshbooks/callback", params={"code": code, "state": old_state})
    assert page.status_code == 400
    assert "took too long" in page.text
    assert start.status_code == 302


def test_state_from_another_browser_is_refused(browser, simulator, settings):
    start = browser.get("/oauth/freshbooks/start", follow_redirects=False)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    browser.cookies.clear()
    code = simulator.state.issue_authorization_code(settings.redirect_uri)
    page = browser.get("/oauth/freshbooks/callback", params={"code": code, "state": state})
    assert page.status_code == 400
    assert _tenants(settings) == []


def test_health_and_readiness(browser):
    assert browser.get("/healthz").json() == {"status": "ok"}
    ready = browser.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    assert ready.headers["x-request-id"].startswith("req_")


def test_unknown_route_is_json_404_with_request_id(browser):
    response = browser.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["request_id"] == "abc-123"
