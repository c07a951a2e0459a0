"""The FreshBooks API client against the simulator: paths, identifiers, pages, includes, retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from conftest import OWNER_ACCOUNT_ID, OWNER_BUSINESS_ID

from webhook_service.core.retry_after import parse_retry_after
from webhook_service.freshbooks import client as client_module
from webhook_service.freshbooks import transport
from webhook_service.freshbooks.catalogue import CATALOGUE, IdKind, get_resource
from webhook_service.freshbooks.client import FreshBooksClient
from webhook_service.freshbooks.errors import FreshBooksError

EVENT_NOUNS = {
    "bill",
    "bill_vendor",
    "category",
    "client",
    "credit_note",
    "estimate",
    "expense",
    "invoice",
    "item",
    "payment",
    "project",
    "recurring",
    "service",
    "tax",
    "time_entry",
}


def _api_requests(state, fragment):
    return [r for r in state.requests if fragment in r["path"]]


def test_catalogue_covers_every_event_noun():
    assert set(CATALOGUE) >= EVENT_NOUNS


async def test_1234_invoices_at_per_page_500_come_back_complete_across_13_pages(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1234)
    invoices = [inv async for inv in runtime.freshbooks.iterate(tenant, "invoice", per_page=500)]

    assert len(invoices) == 1234
    assert len({inv["id"] for inv in invoices}) == 1234
    assert all(isinstance(inv.get("lines"), list) and inv["lines"] for inv in invoices)
    pages = _api_requests(simulator.state, "/invoices/invoices")
    assert len(pages) == 13
    assert all(("per_page", "100") in r["query"] and ("include[]", "lines") in r["query"] for r in pages)
    assert [dict(r["query"])["page"] for r in pages] == [str(n) for n in range(1, 14)]


@pytest.mark.parametrize("name", sorted(CATALOGUE))
async def test_each_resource_on_its_path_with_its_identifier(runtime, tenant, simulator, name):
    spec = get_resource(name)
    seeded = simulator.state.seed(OWNER_ACCOUNT_ID, name, 3)
    listed = [obj async for obj in runtime.freshbooks.iterate(tenant, name)]
    assert sorted(str(o["id"]) for o in listed) == sorted(str(o["id"]) for o in seeded)

    one = await runtime.freshbooks.get(tenant, name, seeded[1]["id"])
    assert str(one["id"]) == str(seeded[1]["id"])
    if "lines" in spec.includes:
        assert one["lines"], f"{name} should come with its lines"

    expected_identifier = {IdKind.ACCOUNT_ID: OWNER_ACCOUNT_ID, IdKind.BUSINESS_ID: str(OWNER_BUSINESS_ID)}[
        spec.id_kind
    ]
    paths = [urlsplit(r["path"]).path for r in simulator.state.requests]
    assert all(f"/{expected_identifier}/" in path for path in paths), paths
    assert all(r["status"] == 200 for r in simulator.state.requests)


@pytest.mark.parametrize("name", ["invoice", "project", "time_entry"])
async def test_wrong_identifier_gets_404_like_freshbooks(runtime, tenant, simulator, name):
    """The simulator refuses a wrong identifier, so the per-resource test above can fail."""
    simulator.state.seed(OWNER_ACCOUNT_ID, name, 1)
    spec = get_resource(name)
    wrong_kind = IdKind.BUSINESS_ID if spec.id_kind is IdKind.ACCOUNT_ID else IdKind.ACCOUNT_ID
    swapped = spec.list_path.replace("{" + spec.id_kind.value + "}", "{" + wrong_kind.value + "}")
    with pytest.raises(FreshBooksError) as caught:
        await runtime.freshbooks.request(
            tenant, "GET", swapped.format(account_id=tenant.account_id, business_id=tenant.business_id)
        )
    assert caught.value.status == 404


async def test_three_429s_with_retry_after_then_success(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 120)
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    client = FreshBooksClient(runtime.settings, runtime.http, runtime.tokens, sleep=recording_sleep)
    simulator.state.fail_next(3, status=429, retry_after="1")
    clients = [c async for c in client.iterate(tenant, "client")]

    assert len(clients) == 120
    assert waits == [1.0, 1.0, 1.0]
    statuses = [r["status"] for r in simulator.state.requests]
    assert statuses == [429, 429, 429, 200, 200]
    times = [r["time"] for r in simulator.state.requests]
    assert all(later - earlier >= 0.95 for earlier, later in zip(times[:3], times[1:4], strict=True))


async def test_5xx_retries_are_bounded_and_raise_a_freshbooks_error(runtime, tenant, simulator):
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    client = FreshBooksClient(runtime.settings, runtime.http, runtime.tokens, sleep=no_wait)
    simulator.state.fail_next(50, status=503, retry_after=None)
    with pytest.raises(FreshBooksError) as caught:
        await client.list_page(tenant, "client")
    assert caught.value.status == 503
    attempts = runtime.settings.freshbooks_max_attempts
    assert len(simulator.state.requests) == attempts
    assert len(waits) == attempts - 1
    for attempt, wait in enumerate(waits, start=1):  # exponential backoff with jitter
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= wait <= ceiling


async def test_concurrency_per_tenant_is_limited(runtime, tenant, simulator, monkeypatch):
    simulator.state.seed(OWNER_ACCOUNT_ID, "item", 1)
    in_flight = 0
    peak = 0
    original = transport.send

    async def counting(*args, **kwargs):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(*args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(client_module, "send", counting)  # every request the API client sends
    await asyncio.gather(*(runtime.freshbooks.list_page(tenant, "item") for _ in range(20)))
    assert 1 < peak <= runtime.settings.freshbooks_concurrency_per_tenant


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "The provided authorization grant is invalid"},
            "invalid_grant",
            "The provided authorization grant is invalid",
        ),
        (
            422,
            {"errno": 422, "message": "Unrecognized event.", "details": ["event: Value error, Unrecognized event."]},
            422,
            "Unrecognized event.",
        ),
        (
            400,
            {"code": 3, "message": "Invalid", "details": [{"fieldViolations": [{"field": "x", "description": "bad"}]}]},
            3,
            "Invalid",
        ),
        (
            404,
            {
                "response": {
                    "errors": [
                        {
                            "errno": 1012,
                            "field": "invoiceid",
                            "message": "Not found.",
                            "object": "invoice",
                            "value": "9",
                        }
                    ]
                }
            },
            1012,
            "Not found.",
        ),
    ],
)
def test_every_freshbooks_error_shape_becomes_one_exception(status, body, code, message):
    error = FreshBooksError.from_body(status, body)
    assert (error.status, error.code, error.message) == (status, code, message)
    if "fieldViolations" in str(body):
        assert error.details == [{"field": "x", "description": "bad"}]


async def test_updated_since_uses_each_resources_filter_syntax(runtime, tenant, simulator):
    since = datetime(2026, 3, 10, 3, 30, tzinfo=UTC)  # 2026-03-09 23:30 in US/Eastern
    [_ async for _ in runtime.freshbooks.iterate(tenant, "invoice", updated_since=since)]
    [_ async for _ in runtime.freshbooks.iterate(tenant, "project", updated_since=since)]
    invoice_query = dict(_api_requests(simulator.state, "/invoices/invoices")[0]["query"])
    project_query = dict(_api_requests(simulator.state, "/projects")[0]["query"])
    assert invoice_query["search[updated_min]"] == "2026-03-08"  # Eastern day, one day of overlap
    assert project_query["updated_since"] == "2026-03-10T03:30:00Z"


async def test_requests_go_through_the_configured_proxy(settings):
    """``FRESHBOOKS_PROXY``: each request is sent to the proxy, naming FreshBooks' URL in full."""
    heads: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"via": 1}\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxied = settings.model_copy(update={"freshbooks_proxy": f"http://127.0.0.1:{port}"})
    try:
        async with transport.session(proxied) as http:
            reply = await transport.send(http, "GET", f"{settings.freshbooks_api_base}/auth/api/v1/users/me")
    finally:
        server.close()
        await server.wait_closed()
    assert reply.json() == {"via": 1}
    assert heads and heads[0].startswith(f"GET {settings.freshbooks_api_base}/auth/api/v1/users/me HTTP/1.1".encode())
