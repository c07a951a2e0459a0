"""The operator console over loopback, as a browser speaks to it (a cookie jar, forms):
signing in and out, the session cookie's flags, CSRF, the sign-in throttle, the headers, and
that the admin token never shows in a page, a URL or a log. The pages' content is checked here
at the HTML level; a real browser drives them in the browser tests."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
from conftest import make_settings
from records import dead_delivery, invoice_event
from starlette.routing import Route

from webhook_service.app import create_app
from webhook_service.core.logs import configure_logging
from webhook_service.delivery import subscriptions
from webhook_service.sandbox.serving import BackgroundServer
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import DeliveryAttempt
from webhook_service.storage.outbox import new_delivery_id
from webhook_service.web.console import mount
from webhook_service.web.console.pages import PAGE_SIZE
from webhook_service.web.console.security import SignInThrottle
from webhook_service.web.server import build_config

ADMIN_TOKEN = "console-admin-token-4f1e8a"
CONSOLE = "/console"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(database_url, simulator, service_socket):
    return make_settings(database_url, simulator, service_socket, admin_token=ADMIN_TOKEN, delivery_workers=0)


@pytest.fixture
def json_logs(capsys) -> Iterator:
    configure_logging("debug", "json")
    yield lambda: capsys.readouterr().err
    logging.getLogger().handlers[:] = []


@pytest.fixture
async def browser(service) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies and does not follow redirects (the tests look at them)."""
    async with httpx.AsyncClient(base_url=service.base_url, follow_redirects=False) as client:
        yield client


async def csrf_of(browser: httpx.AsyncClient, path: str) -> str:
    page = await browser.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(browser: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    csrf = await csrf_of(browser, f"{CONSOLE}/sign-in")
    return await browser.post(f"{CONSOLE}/sign-in", data={"csrf_token": csrf, "token": token})


def console_routes() -> list[tuple[str, str]]:
    """Every page and action of the console, its path ids filled in: (method, path)."""
    found = []
    for route in mount().routes:
        if isinstance(route, Route) and "{rest" not in route.path:
            path = CONSOLE + re.sub(r"\{[a-z_]+\}", "x_1", route.path)
            found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


async def test_no_page_or_action_works_without_a_session(browser):
    routes = console_routes()
    assert ("POST", f"{CONSOLE}/deliveries/x_1/replay") in routes and len(routes) > 20
    for method, path in routes:
        if path.endswith("/sign-in"):
            continue  # the way in
        response = await browser.request(method, path, data={"csrf_token": "anything"} if method == "POST" else None)
        if method == "GET":
            assert response.status_code == 303, path
            assert response.headers["location"] == f"{CONSOLE}/sign-in"
        else:
            assert response.status_code == 403, path


async def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_shows_the_overview(browser, json_logs):
    response = await sign_in(browser)
    assert response.status_code == 303 and response.headers["location"] == f"{CONSOLE}/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Max-Age=28800" in cookie  # CONSOLE_SESSION_HOURS' default, 8
    assert "Secure" not in cookie  # PUBLIC_BASE_URL is http here; an https one makes it Secure
    overview = await browser.get(f"{CONSOLE}/")
    assert overview.status_code == 200
    assert "<h1>Overview</h1>" in overview.text and "Delivery success" in overview.text
    assert ADMIN_TOKEN not in cookie and ADMIN_TOKEN not in overview.text
    assert ADMIN_TOKEN not in json_logs()


async def test_a_wrong_token_is_refused_and_logged_without_the_token(browser, json_logs):
    response = await sign_in(browser, "not-the-token")
    assert response.status_code == 401
    assert "not this service&#39;s admin token" in response.text or "not this service's admin token" in response.text
    assert (await browser.get(f"{CONSOLE}/")).status_code == 303
    logs = json_logs()
    assert "console_sign_in_failed" in logs and "not-the-token" not in logs


async def test_a_form_without_its_csrf_token_is_refused_with_403(browser):
    no_token = await browser.post(f"{CONSOLE}/sign-in", data={"token": ADMIN_TOKEN})
    assert no_token.status_code == 403
    assert (await browser.get(f"{CONSOLE}/")).status_code == 303  # not signed in
    assert (await sign_in(browser)).status_code == 303
    forged = await browser.post(f"{CONSOLE}/sign-out", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert (await browser.get(f"{CONSOLE}/")).status_code == 200  # still signed in


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(browser, service):
    await sign_in(browser)
    copied = browser.cookies.get("console_session")
    csrf = await csrf_of(browser, f"{CONSOLE}/")
    response = await browser.post(f"{CONSOLE}/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303 and response.headers["location"] == f"{CONSOLE}/sign-in"
    assert (await browser.get(f"{CONSOLE}/")).status_code == 303
    async with httpx.AsyncClient(base_url=service.base_url, cookies={"console_session": copied}) as other:
        assert (await other.get(f"{CONSOLE}/", follow_redirects=False)).status_code == 303


async def test_changing_the_admin_token_signs_every_browser_out(browser, service):
    await sign_in(browser)
    assert (await browser.get(f"{CONSOLE}/")).status_code == 200
    settings = service.runtime.settings
    previous = settings.admin_token
    settings.admin_token = type(previous)("a-new-admin-token")  # type: ignore[misc]
    try:
        assert (await browser.get(f"{CONSOLE}/")).status_code == 303
    finally:
        settings.admin_token = previous


async def test_an_altered_cookie_is_refused(browser):
    await sign_in(browser)
    value = browser.cookies.get("console_session")
    payload, _, signature = value.partition(".")
    browser.cookies.set("console_session", payload[:-2] + "xx." + signature, path="/console")
    assert (await browser.get(f"{CONSOLE}/")).status_code == 303


async def test_every_console_answer_has_a_content_security_policy(browser):
    await sign_in(browser)
    for path in ("/", "/tenants", "/sign-in", "/static/console.css", "/no-such-page"):
        response = await browser.get(CONSOLE + path)
        policy = response.headers.get("content-security-policy", "")
        assert "default-src 'none'" in policy and "script-src 'self'" in policy, path
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
    assert (await browser.get(f"{CONSOLE}/no-such-page")).status_code == 404


async def test_repeated_failed_sign_ins_are_slowed_down(browser):
    for _ in range(SignInThrottle.FREE):
        assert (await sign_in(browser, "wrong")).status_code == 401
    throttled = await sign_in(browser, "wrong")
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["retry-after"]) <= SignInThrottle.FIRST_WAIT
    # while it lasts, even the right token waits: guessing cannot go faster
    assert (await sign_in(browser, ADMIN_TOKEN)).status_code == 429


def test_the_throttle_waits_longer_after_each_further_failure():
    now = [1000.0]
    throttle = SignInThrottle(clock=lambda: now[0])
    for _ in range(SignInThrottle.FREE):
        assert throttle.wait("a") == 0
        throttle.failed("a")
    assert throttle.wait("a") == 30 and throttle.wait("b") == 0
    now[0] += 30
    assert throttle.wait("a") == 0
    throttle.failed("a")
    assert throttle.wait("a") == 60
    now[0] += SignInThrottle.WINDOW + 1  # the failures age out of the window
    assert throttle.wait("a") == 0
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.wait("a") == 0


async def test_the_tenant_pages_list_tenants_and_show_a_reconnect_link_when_needed(browser, connected, runtime):
    await sign_in(browser)
    listing = await browser.get(f"{CONSOLE}/tenants")
    assert listing.status_code == 200 and f"{CONSOLE}/tenants/{connected.id}" in listing.text
    detail = await browser.get(f"{CONSOLE}/tenants/{connected.id}")
    assert detail.status_code == 200 and 'id="reconnect"' not in detail.text
    assert "invoice" in detail.text  # its callbacks
    await runtime.tokens.mark_reauth_required(connected.id, "customer revoked access")
    detail = await browser.get(f"{CONSOLE}/tenants/{connected.id}")
    assert f'href="/oauth/freshbooks/start?business_id={connected.business_id}"' in detail.text
    assert "customer revoked access" in detail.text
    overview = await browser.get(f"{CONSOLE}/")
    assert "Tenants needing attention" in overview.text and "customer revoked access" in overview.text
    assert (await browser.get(f"{CONSOLE}/tenants/ten_nobody")).status_code == 404


async def test_without_an_admin_token_the_console_says_how_to_enable_it(database_url, simulator, service_socket):
    settings = make_settings(database_url, simulator, service_socket, admin_token=None, delivery_workers=0)
    app = create_app(settings)
    config = build_config(settings, app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2)
    with BackgroundServer(app, sock=service_socket, config=config) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            for path in ("/", "/sign-in"):
                response = await client.get(CONSOLE + path)
                assert response.status_code == 503
                assert "Set <code>ADMIN_TOKEN</code>" in response.text
            posted = await client.post(f"{CONSOLE}/sign-in", data={"token": "anything"})
            assert posted.status_code == 503


SECRET = re.compile(r'<code id="secret" class="secret">(whsec_[^<]+)</code>')


async def test_subscriptions_are_created_edited_rotated_switched_and_deleted(browser, sink):
    await sign_in(browser)
    csrf = await csrf_of(browser, f"{CONSOLE}/subscriptions/new")
    refused = await browser.post(
        f"{CONSOLE}/subscriptions", data={"csrf_token": csrf, "url": "ftp://nowhere", "event_types": "*"}
    )
    assert refused.status_code == 422 and 'role="alert"' in refused.text
    assert 'value="ftp://nowhere"' in refused.text  # what was typed stays in the form

    created = await browser.post(
        f"{CONSOLE}/subscriptions",
        data={
            "csrf_token": csrf,
            "url": f"{sink.base_url}/hook",
            "description": "billing",
            "event_types": "invoice.*, payment.created",
            "tenant_id": "",
            "rate_limit_per_second": "5",
            "filter": '{"data.object.status": {"$in": ["sent", "paid"]}}',
        },
    )
    assert created.status_code == 200, created.text
    secret = SECRET.search(created.text)
    assert secret, created.text
    subscription_id = re.search(r'href="/console/subscriptions/(sub_[A-Za-z0-9]+)"', created.text).group(1)

    page = await browser.get(f"{CONSOLE}/subscriptions/{subscription_id}")
    assert page.status_code == 200 and secret.group(1) not in page.text  # shown once only
    assert "invoice.*, payment.created" in page.text and 'value="5"' in page.text

    saved = await browser.post(
        f"{CONSOLE}/subscriptions/{subscription_id}",
        data={"csrf_token": csrf, "url": f"{sink.base_url}/other", "event_types": "*", "description": "all"},
    )
    assert saved.status_code == 303
    page = await browser.get(saved.headers["location"])
    assert f'value="{sink.base_url}/other"' in page.text and "Saved." in page.text

    switched = await browser.post(
        f"{CONSOLE}/subscriptions/{subscription_id}/switch", data={"csrf_token": csrf, "enabled": "false"}
    )
    assert switched.status_code == 303
    assert ">Enable</button>" in (await browser.get(f"{CONSOLE}/subscriptions/{subscription_id}")).text

    rotated = await browser.post(f"{CONSOLE}/subscriptions/{subscription_id}/rotate-secret", data={"csrf_token": csrf})
    new_secret = SECRET.search(rotated.text)
    assert rotated.status_code == 200 and new_secret and new_secret.group(1) != secret.group(1)

    confirm = await browser.get(f"{CONSOLE}/subscriptions/{subscription_id}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    deleted = await browser.post(f"{CONSOLE}/subscriptions/{subscription_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert (await browser.get(f"{CONSOLE}/subscriptions/{subscription_id}")).status_code == 404
    listing = await browser.get(f"{CONSOLE}/subscriptions")
    assert subscription_id not in listing.text


async def test_subscription_actions_need_the_csrf_token(browser, sink):
    await sign_in(browser)
    response = await browser.post(f"{CONSOLE}/subscriptions", data={"url": f"{sink.base_url}/hook"})
    assert response.status_code == 403
    listing = await browser.get(f"{CONSOLE}/subscriptions")
    assert "No subscription yet" in listing.text


async def _seed_dead_deliveries(runtime, tenant, subscription_id: str, count: int) -> tuple[str, list[str]]:
    """An event, and ``count`` dead deliveries of it a second apart (the first attempted twice)."""
    now = utcnow()
    event, payload = invoice_event(tenant, now)
    ids = [new_delivery_id() for _ in range(count)]
    async with runtime.db.sessions() as session:
        session.add(event)
        await session.flush()
        for n, delivery_id in enumerate(ids):
            session.add(dead_delivery(delivery_id, event.id, subscription_id, now - timedelta(seconds=n)))
        await session.flush()
        for number in (1, 2):
            session.add(
                DeliveryAttempt(
                    delivery_id=ids[0],
                    number=number,
                    started_at=now,
                    status_code=500,
                    latency_ms=12.5,
                    error="HTTP 500",
                    response_body="upstream down",
                )
            )
        await session.commit()
    return event.id, ids


DELIVERY_LINK = re.compile(r'href="/console/deliveries/(dlv_[A-Za-z0-9_]+)"')


async def test_deliveries_page_through_a_filter_replay_and_recover(browser, runtime, tenant, sink):
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/hook"})
    event_id, ids = await _seed_dead_deliveries(runtime, tenant, created.subscription.id, PAGE_SIZE + 5)
    await sign_in(browser)

    first = await browser.get(f"{CONSOLE}/deliveries", params={"status": "dead"})
    shown = DELIVERY_LINK.findall(first.text)
    assert shown == ids[:PAGE_SIZE]  # newest first
    older = re.search(r'href="(/console/deliveries\?[^"]+)" rel="next"', first.text).group(1)
    second = await browser.get(older.replace("&amp;", "&"))
    assert DELIVERY_LINK.findall(second.text) == ids[PAGE_SIZE:] and 'rel="next"' not in second.text
    assert DELIVERY_LINK.findall((await browser.get(f"{CONSOLE}/deliveries?status=pending")).text) == []

    detail = await browser.get(f"{CONSOLE}/deliveries/{ids[0]}")
    assert detail.status_code == 200 and detail.text.count("HTTP 500") >= 2 and "upstream down" in detail.text
    csrf = CSRF.search(detail.text).group(1)
    replayed = await browser.post(f"{CONSOLE}/deliveries/{ids[0]}/replay", data={"csrf_token": csrf})
    assert replayed.status_code == 303
    detail = await browser.get(replayed.headers["location"])
    assert "Queued again" in detail.text and 'id="delivery-status">pending<' in detail.text
    again = await browser.post(f"{CONSOLE}/deliveries/{ids[0]}/replay", data={"csrf_token": csrf})
    assert again.status_code == 409  # pending already: nothing to replay

    since = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    recovered = await browser.post(
        f"{CONSOLE}/deliveries/recover",
        data={"csrf_token": csrf, "subscription_id": created.subscription.id, "since": since},
    )
    assert recovered.status_code == 303 and f"recovered={PAGE_SIZE + 4}" in recovered.headers["location"]
    assert not DELIVERY_LINK.findall((await browser.get(f"{CONSOLE}/deliveries?status=dead")).text)
    missing = await browser.get(f"{CONSOLE}/deliveries/dlv_nothing")
    assert missing.status_code == 404

    events = await browser.get(f"{CONSOLE}/events", params={"type": "invoice.updated", "origin": "webhook"})
    assert f"/console/events/{event_id}" in events.text
    assert f"/console/events/{event_id}" not in (await browser.get(f"{CONSOLE}/events?origin=backfill")).text
    event = await browser.get(f"{CONSOLE}/events/{event_id}")
    assert event.status_code == 200 and "&#34;sequence&#34;: 1" in event.text  # pretty-printed, escaped
    assert f"/console/deliveries/{ids[0]}" in event.text


async def test_tenant_actions_sync_backfill_and_disconnect(browser, connected, simulator):
    await sign_in(browser)
    page = await browser.get(f"{CONSOLE}/tenants/{connected.id}")
    csrf = CSRF.search(page.text).group(1)
    assert 'id="run-backfill"' in page.text and 'id="sync-callbacks"' in page.text

    assert (await browser.post(f"{CONSOLE}/tenants/{connected.id}/sync-callbacks", data={})).status_code == 403
    synced = await browser.post(f"{CONSOLE}/tenants/{connected.id}/sync-callbacks", data={"csrf_token": csrf})
    assert synced.status_code == 303 and "done=synced" in synced.headers["location"]
    assert "Callbacks synced with FreshBooks." in (await browser.get(synced.headers["location"])).text

    started = await browser.post(f"{CONSOLE}/tenants/{connected.id}/backfill", data={"csrf_token": csrf})
    assert started.status_code == 303
    page = await browser.get(f"{CONSOLE}/tenants/{connected.id}")
    assert 'id="backfill-job"' in page.text

    confirm = await browser.get(f"{CONSOLE}/tenants/{connected.id}/disconnect")
    assert confirm.status_code == 200 and "revoke its grant" in confirm.text
    gone = await browser.post(f"{CONSOLE}/tenants/{connected.id}/disconnect", data={"csrf_token": csrf})
    assert gone.status_code == 303 and "done=disconnected" in gone.headers["location"]
    page = await browser.get(gone.headers["location"])
    assert "status disconnected" in page.text and 'id="run-backfill"' not in page.text
    refused = await browser.post(f"{CONSOLE}/tenants/{connected.id}/backfill", data={"csrf_token": csrf})
    assert refused.status_code == 409  # FreshBooks cannot be asked for a disconnected tenant


SUBSCRIPTION_LINK = re.compile(r'href="/console/subscriptions/(sub_[A-Za-z0-9]+)"')


async def test_the_subscription_list_pages_with_a_cursor(browser, runtime, sink):
    made = [(await subscriptions.create(runtime, {"url": f"{sink.base_url}/{n}"})).subscription.id for n in range(52)]
    await sign_in(browser)
    first = await browser.get(f"{CONSOLE}/subscriptions")
    older = re.search(r'href="(/console/subscriptions\?after=[^"]+)" rel="next"', first.text).group(1)
    second = await browser.get(older)
    shown = SUBSCRIPTION_LINK.findall(first.text) + SUBSCRIPTION_LINK.findall(second.text)
    assert len(SUBSCRIPTION_LINK.findall(first.text)) == PAGE_SIZE and 'rel="next"' not in second.text
    assert sorted(shown) == sorted(made)  # every one once, oldest first
