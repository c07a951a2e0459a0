"""The admin API over loopback: auth, subscriptions, read-only views, replay and recovery, limits, and
its OpenAPI document. Every response a test receives is also checked against that document."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from conftest import OWNER_ACCOUNT_ID, make_settings
from records import dead_delivery, invoice_event
from sqlalchemy import select

from webhook_service.app import create_app
from webhook_service.backfill import jobs
from webhook_service.contract.matching import invalid_patterns
from webhook_service.core.logs import configure_logging
from webhook_service.sandbox.serving import BackgroundServer, bind_socket
from webhook_service.storage import backfill_jobs
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import BackfillJob, Delivery, DeliveryAttempt
from webhook_service.storage.outbox import new_delivery_id
from webhook_service.web import admin
from webhook_service.web.fields import EVENT_TYPE_PATTERN

ADMIN_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
P = "/admin/v1"
DOC = admin.DOCUMENT
JSON = "application/json"
PLUS_ONE = timezone(timedelta(hours=1))


@pytest.fixture
def settings(database_url, simulator, service_socket):
    # No delivery workers: what these tests queue is never sent anywhere. No egress allow list.
    return make_settings(
        database_url, simulator, service_socket, admin_token=ADMIN_TOKEN, delivery_workers=0, outbound_allowed_cidrs=""
    )


@pytest.fixture
async def api(service) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client whose every response must match the OpenAPI document."""

    async def conforms(response: httpx.Response) -> None:
        await response.aread()
        check_documented(response)

    async with httpx.AsyncClient(
        base_url=service.base_url + P, headers=AUTH, event_hooks={"response": [conforms]}
    ) as client:
        yield client


@pytest.fixture
def json_logs(capsys):
    configure_logging("debug", "json")
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    logging.getLogger().handlers[:] = []


# --- the document as a test oracle ---------------------------------------------------------------


def _operation_for(path: str, method: str) -> dict[str, Any] | None:
    """The documented operation serving ``method path`` (literal segments win over parameters)."""
    candidates = sorted(DOC["paths"], key=lambda template: template.count("{"))
    for template in candidates:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method in DOC["paths"][template]:
            return DOC["paths"][template][method]  # type: ignore[no-any-return]
    return None


def check_documented(response: httpx.Response) -> None:
    request = response.request
    operation = _operation_for(request.url.path, request.method.lower())
    assert operation is not None, f"{request.method} {request.url.path} is not documented"
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{request.method} {request.url.path}: undocumented {response.status_code}"
    if "content" in documented:
        assert response.headers["content-type"].startswith(JSON)
        validate(response.json(), documented["content"][JSON]["schema"], f"{request.method} {request.url.path}")
    else:
        assert response.content == b""
    for name, header in documented.get("headers", {}).items():
        assert not header.get("required") or name in response.headers, name


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


_TYPES: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def validate(value: Any, schema: dict[str, Any], where: str) -> None:
    """The subset of JSON Schema the document uses."""
    schema = _resolve(schema)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        assert any(_TYPES[t](value) for t in types), f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, str):
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
        if schema.get("format") == "date-time":
            assert datetime.fromisoformat(value).tzinfo is not None, f"{where}: {value!r}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        assert not set(schema.get("required", [])) - set(value), f"{where}: missing {schema['required']}"
        if schema.get("additionalProperties") is False:
            assert not set(value) - set(properties), f"{where}: undocumented {set(value) - set(properties)}"
        for key, item in value.items():
            if key in properties:
                validate(item, properties[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{index}]")


# --- authentication ----------------------------------------------------------------------------


async def test_requests_without_the_right_token_are_refused(service, json_logs):
    async with httpx.AsyncClient(base_url=service.base_url + P) as client:
        refusals = [
            await client.get("/subscriptions"),
            await client.get("/subscriptions", headers={"Authorization": "Bearer wrong-token-value"}),
            await client.get("/tenants", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}),
            await client.get("/deliveries", headers={"Authorization": "Bearer"}),
            await client.post("/subscriptions", json={"url": "https://example.com/"}),
            await client.post("/deliveries/recover", content=b"x" * (2 * 1024 * 1024)),
        ]
        ok = await client.get("/subscriptions", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    for response in refusals:
        check_documented(response)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert ok.status_code == 200
    logged = [line for line in json_logs() if line["event"] == "admin_refused"]
    assert {line["reason"] for line in logged} == {"missing_credentials", "wrong_credentials"}
    assert len(logged) == len(refusals)
    assert all("wrong-token-value" not in json.dumps(line) and ADMIN_TOKEN not in json.dumps(line) for line in logged)


def test_the_admin_api_is_disabled_without_admin_token(database_url, simulator):
    sock = bind_socket("127.0.0.1", 0)
    app = create_app(make_settings(database_url, simulator, sock, admin_token=None, delivery_workers=0))
    with BackgroundServer(app, sock=sock, lifespan="on") as server, httpx.Client(base_url=server.base_url + P) as c:
        answers = [
            c.get("/subscriptions", headers=AUTH),
            c.get("/subscriptions"),
            c.post("/subscriptions", json={"url": "https://example.com/"}, headers=AUTH),
            c.get("/tenants/ten_x", headers=AUTH),
            c.post("/deliveries/dlv_x/replay", headers=AUTH),
        ]
        document = c.get("/openapi.json")
    for response in answers:
        check_documented(response)
        assert response.status_code == 503
        assert response.json()["error"] == "admin_disabled"
        assert response.json()["message"] == "set ADMIN_TOKEN to enable the admin API"
    assert document.status_code == 200


# --- subscriptions -----------------------------------------------------------------------------


async def test_subscription_crud_round_trip_shows_the_secret_only_at_creation_and_rotation(api):
    created = await api.post(
        "/subscriptions",
        json={"url": "https://example.com/hooks", "event_types": ["invoice.*", "client.created"], "description": "CRM"},
    )
    assert created.status_code == 201
    subscription = created.json()
    secret = subscription.pop("secret")
    assert secret.startswith("whsec_")
    assert subscription["event_types"] == ["invoice.*", "client.created"]
    assert subscription["enabled"] is True and subscription["tenant_id"] is None
    assert subscription["previous_secret_valid_until"] is None
    sid = subscription["id"]

    fetched = await api.get(f"/subscriptions/{sid}")
    assert fetched.status_code == 200
    assert fetched.json() == subscription
    listed = await api.get("/subscriptions")
    assert listed.json() == {"data": [subscription]}
    assert secret not in fetched.text + listed.text

    defaults = await api.post("/subscriptions", json={"url": "http://example.org/"})
    assert defaults.status_code == 201
    assert defaults.json()["event_types"] == ["*"] and defaults.json()["description"] == ""

    patched = await api.patch(
        f"/subscriptions/{sid}", json={"description": "CRM sync", "enabled": False, "rate_limit_per_second": 5.0}
    )
    assert patched.status_code == 200
    assert patched.json()["description"] == "CRM sync"
    assert patched.json()["enabled"] is False
    assert patched.json()["rate_limit_per_second"] == 5
    assert patched.json()["url"] == "https://example.com/hooks"
    assert "secret" not in patched.json()

    before = utcnow()
    rotated = await api.post(f"/subscriptions/{sid}/rotate-secret", json={"grace_hours": 2})
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    until = datetime.fromisoformat(rotated.json()["previous_secret_valid_until"])
    assert before + timedelta(hours=2) <= until <= utcnow() + timedelta(hours=2)
    again = await api.post(f"/subscriptions/{sid}/rotate-secret")  # no body: the configured grace
    assert again.status_code == 200
    assert datetime.fromisoformat(again.json()["previous_secret_valid_until"]) > until + timedelta(hours=20)

    after = await api.get(f"/subscriptions/{sid}")
    assert "secret" not in after.json()
    assert all(s not in after.text for s in (secret, new_secret, again.json()["secret"]))

    assert (await api.delete(f"/subscriptions/{sid}")).status_code == 204
    for response in (
        await api.get(f"/subscriptions/{sid}"),
        await api.delete(f"/subscriptions/{sid}"),
        await api.patch(f"/subscriptions/{sid}", json={"enabled": True}),
        await api.post(f"/subscriptions/{sid}/rotate-secret"),
        await api.get("/subscriptions/a%00b"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


async def test_invalid_subscriptions_are_refused_with_422(api, tenant):
    bad_bodies = [
        {"url": "ftp://x"},
        {"url": "http://10.0.0.1/"},
        {"url": "http://[::1]:8080/"},
        {"url": "http://2130706433/"},
        {"url": "http://xn--/"},
        {"url": "http://user:pass@example.com/"},
        {"url": ""},
        {"event_types": ["*"]},
        {"url": "https://example.com/", "event_types": "invoice.*"},
        {"url": "https://example.com/", "event_types": []},
        {"url": "https://example.com/", "event_types": ["nonsense.*"]},
        {"url": "https://example.com/", "event_types": ["invoice.*", 3]},
        {"url": "https://example.com/", "secret": "whsec_mine"},
        {"url": "https://example.com/", "tenant_id": "ten_unknown"},
        {"url": "https://example.com/", "description": "x" * 1001},
        {"url": "https://example.com/", "description": "nul\x00"},
        {"url": "https://example.com/", "enabled": "yes"},
        {"url": "https://example.com/", "rate_limit_per_second": 0},
        {"url": "https://example.com/", "rate_limit_per_second": 2.5},
    ]
    for body in bad_bodies:
        response = await api.post("/subscriptions", json=body)
        assert response.status_code == 422, body
        assert response.json()["message"], body
    assert (await api.get("/subscriptions")).json() == {"data": []}

    created = await api.post("/subscriptions", json={"url": "https://example.com/", "tenant_id": tenant.id})
    assert created.status_code == 201 and created.json()["tenant_id"] == tenant.id
    sid = created.json()["id"]
    for body in ({"url": None}, {"event_types": None}, {"enabled": None}, {"colour": "red"}):
        assert (await api.patch(f"/subscriptions/{sid}", json=body)).status_code == 422, body
    for body in ({"grace_hours": 500}, {"grace_hours": -1}, {"grace_hours": "2"}, {"grace_hours": True}, {"x": 1}):
        assert (await api.post(f"/subscriptions/{sid}/rotate-secret", json=body)).status_code == 422, body


async def test_an_invalid_body_is_refused_with_422_naming_each_field_at_fault(api):
    cases = [
        ("/subscriptions", {"url": "https://example.com/", "enabled": "yes"}, "invalid_enabled", ["enabled"]),
        ("/subscriptions", {"event_types": ["*"]}, "invalid_url", ["url: Field required"]),
        ("/subscriptions", {"url": "https://example.com/", "colour": "red"}, "unknown_field", ["colour: no such"]),
        (
            "/subscriptions",
            {"url": "https://example.com/", "event_types": ["invoice.*", 3], "rate_limit_per_second": 0},
            "invalid_event_types",
            ["event_types.1:", "rate_limit_per_second:"],
        ),
        ("/deliveries/recover", {"subscription_id": 7, "since": "yesterday"}, "invalid_subscription_id", ["since:"]),
    ]
    for path, body, error, named in cases:
        response = await api.post(path, json=body)
        assert response.status_code == 422, body
        assert response.json()["error"] == error, response.json()
        assert all(part in response.json()["message"] for part in named), response.json()
    for params, error in (({"limit": "1.5"}, "invalid_limit"), ({"status": "lost"}, "invalid_status")):
        response = await api.get("/deliveries", params=params)
        assert (response.status_code, response.json()["error"]) == (422, error), params
        assert response.json()["message"].startswith(error.removeprefix("invalid_") + ":")


async def test_malformed_and_oversized_bodies(api, service):
    for content in (b"{", b"[]", b'"text"', b"", b"\xff\xfe", b'{"url": NaN}', b"[" * 100_000):
        response = await api.post("/subscriptions", content=content, headers={"Content-Type": JSON})
        assert response.status_code == 400, content
        assert response.json()["error"] == "bad_json"
    huge = b'{"url": "https://example.com/", "description": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    too_large = await api.post("/subscriptions", content=huge, headers={"Content-Type": JSON})
    assert too_large.status_code == 413
    chunked = await api.post("/subscriptions", content=_chunks(huge), headers={"Content-Type": JSON})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413
    assert (await api.get("/subscriptions")).json() == {"data": []}
    wrong_method = httpx.put(f"{service.base_url}/admin/v1/subscriptions", content=b"{}")  # not a documented call
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 256 * 1024):
        yield body[start : start + 256 * 1024]


# --- read-only views ---------------------------------------------------------------------------


async def test_tenants_callbacks_and_inbox_never_show_a_token(api, runtime, tenant):
    tenants = await api.get("/tenants")
    assert [t["id"] for t in tenants.json()["data"]] == [tenant.id]
    one = await api.get(f"/tenants/{tenant.id}")
    assert one.json() == tenants.json()["data"][0]
    assert one.json()["status"] == "active" and one.json()["business_id"] == tenant.business_id
    for secret in (runtime.box.decrypt(tenant.refresh_token_enc), runtime.box.decrypt(tenant.access_token_enc)):
        assert secret not in tenants.text + one.text
    assert not [key for key in one.json() if "token" in key]
    assert (await api.get("/tenants/ten_missing")).status_code == 404

    callbacks = await api.get("/callbacks", params={"tenant_id": tenant.id})
    assert callbacks.status_code == 200 and isinstance(callbacks.json()["data"], list)
    assert (await api.get("/callbacks", params={"tenant_id": "ten_other"})).json() == {"data": []}

    inbox = await api.get("/inbox-events", params={"tenant_id": tenant.id, "status": "pending", "limit": 5})
    assert inbox.json() == {"data": []}
    for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 1001}, {"limit": "abc"}, {"limit": "9" * 5000}):
        assert (await api.get("/inbox-events", params=params)).status_code == 422, params
    assert (await api.get("/deliveries", params={"limit": "1.5"})).status_code == 422
    assert (await api.get("/events", params={"tenant_id": "a\x00b"})).status_code == 422


# --- events and deliveries ---------------------------------------------------------------------


async def _seed(runtime, tenant, subscription_id: str) -> dict[str, Any]:
    """An event and three dead deliveries of it: two recent, one from two hours ago."""
    now = utcnow()
    event, payload = invoice_event(tenant, now)
    fresh, recent, old = new_delivery_id(), new_delivery_id(), new_delivery_id()

    def dead(delivery_id: str, created_at: datetime) -> Delivery:
        return dead_delivery(delivery_id, event.id, subscription_id, created_at)

    async with runtime.db.sessions() as session:
        session.add(event)
        await session.flush()
        session.add_all([dead(fresh, now), dead(recent, now), dead(old, now - timedelta(hours=2))])
        await session.flush()
        for number in (2, 1):
            session.add(
                DeliveryAttempt(
                    delivery_id=fresh, number=number, started_at=now, status_code=500, latency_ms=12.5, error="HTTP 500"
                )
            )
        await session.commit()
    return {"event": event.id, "fresh": fresh, "recent": recent, "old": old, "payload": payload}


async def test_events_and_deliveries_list_get_replay_and_recover(api, runtime, tenant):
    sid = (await api.post("/subscriptions", json={"url": "https://example.com/hooks"})).json()["id"]
    ids = await _seed(runtime, tenant, sid)

    events = (await api.get("/events", params={"tenant_id": tenant.id, "type": "invoice.updated"})).json()["data"]
    assert [e["id"] for e in events] == [ids["event"]] and "payload" not in events[0]
    assert (await api.get("/events", params={"type": "client.create"})).json() == {"data": []}
    assert (await api.get("/events", params={"origin": "service"})).json() == {"data": []}
    assert [e["id"] for e in (await api.get("/events", params={"origin": "webhook"})).json()["data"]] == [ids["event"]]
    assert (await api.get("/events", params={"origin": "elsewhere"})).status_code == 422
    event = (await api.get(f"/events/{ids['event']}")).json()
    assert event["payload"] == ids["payload"] and event["payload"]["data"]["object_id"] == "1234"
    assert (await api.get("/events/evt_missing")).status_code == 404

    listed = (await api.get("/deliveries", params={"subscription_id": sid, "status": "dead"})).json()["data"]
    assert {d["id"] for d in listed} == {ids["fresh"], ids["recent"], ids["old"]}
    assert len((await api.get("/deliveries", params={"event_id": ids["event"], "limit": 2})).json()["data"]) == 2
    assert (await api.get("/deliveries", params={"status": "lost"})).status_code == 422
    detail = (await api.get(f"/deliveries/{ids['fresh']}")).json()
    assert [a["number"] for a in detail["attempt_log"]] == [1, 2]
    assert (await api.get("/deliveries/dlv_missing")).status_code == 404

    replayed = await api.post(f"/deliveries/{ids['fresh']}/replay")
    assert replayed.status_code == 202
    assert replayed.json()["status"] == "pending" and replayed.json()["next_attempt_at"] is not None
    again = await api.post(f"/deliveries/{ids['fresh']}/replay")
    assert again.status_code == 409 and again.json()["error"] == "not_replayable"
    assert (await api.post("/deliveries/dlv_missing/replay")).status_code == 404

    hour_ago = utcnow() - timedelta(hours=1)
    naive_or_not_a_time = ("2020-01-01T00:00:00", "2020-01-01", "2020-01-01T00:00Z", "yesterday", 12, None)
    for since in (*naive_or_not_a_time, "2020-02-30T00:00:00Z", "2020-01-01T00:00:00+24:00"):
        response = await api.post("/deliveries/recover", json={"subscription_id": sid, "since": since})
        assert response.status_code == 422, since
        assert response.json()["error"] == "invalid_since"
    for since in ("9999-12-31T23:59:60-05:00", "2999-01-01t00:00:00.123456789z"):  # valid RFC 3339, nothing after
        late = await api.post("/deliveries/recover", json={"subscription_id": sid, "since": since})
        assert late.status_code == 202 and late.json() == {"recovered": [], "count": 0}, since
    unknown = await api.post("/deliveries/recover", json={"subscription_id": "sub_x", "since": "2020-01-01T00:00:00Z"})
    assert unknown.status_code == 404
    assert (await api.post("/deliveries/recover", json={"subscription_id": sid})).status_code == 422
    recovered = await api.post(
        "/deliveries/recover", json={"subscription_id": sid, "since": hour_ago.astimezone(PLUS_ONE).isoformat()}
    )
    assert recovered.status_code == 202
    assert recovered.json() == {"recovered": [ids["recent"]], "count": 1}
    assert (await api.get(f"/deliveries/{ids['old']}")).json()["status"] == "dead"

    await api.patch(f"/subscriptions/{sid}", json={"enabled": False})
    assert (await api.post(f"/deliveries/{ids['old']}/replay")).status_code == 409
    since = hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await api.post("/deliveries/recover", json={"subscription_id": sid, "since": since})).status_code == 409


# --- the OpenAPI document (served as generated, valid, no drift: tests/test_openapi.py) ----------


def test_the_document_is_consistent():
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(DOC))
    assert set(refs) <= set(DOC["components"]["schemas"])
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"][JSON]["schema"] == {"$ref": "#/components/schemas/Error"}
            if method != "get" or path.endswith("openapi.json"):
                continue
            assert {"401", "503"} <= set(operation["responses"])
    # The event-type pattern documents exactly what the subscription validator accepts.
    samples = ["*", "invoice.*", "time_entry.created", "time_entry.create", "tenant.*", "tenant.reauth_required"]
    samples += ["tenant.created", "nonsense.*", "invoice", "Invoice.*", "invoice.", ".*", "a.b.c"]
    for sample in samples:
        accepted = not invalid_patterns([sample])
        assert bool(re.fullmatch(EVENT_TYPE_PATTERN, sample)) == accepted, sample


async def test_a_backfill_job_is_started_polled_and_answered_once_per_tenant(
    api, service, runtime, connected, simulator
):
    simulator.state.delivery_drop_rate = 1.0  # webhooks lost: the backfill finds the invoice
    simulator.state.create_object(OWNER_ACCOUNT_ID, "invoice")
    started = await api.post(f"/tenants/{connected.id}/backfill")
    assert started.status_code == 202
    job = started.json()
    assert job["status"] == "running" and job["tenant_id"] == connected.id and "invoice" in job["resources"]
    again = await api.post(f"/tenants/{connected.id}/backfill")
    assert again.status_code == 202 and again.json()["id"] == job["id"]  # one job per tenant at a time

    async def finished() -> dict[str, Any]:
        while True:
            polled = (await api.get(f"/backfill-jobs/{job['id']}")).json()
            if polled["status"] != "running":
                return polled
            await asyncio.sleep(0.1)

    done = await asyncio.wait_for(finished(), 120)
    assert done["status"] == "succeeded" and done["emitted"] == 1 and done["finished_at"]
    assert done["resources_done"] == len(done["resources"])
    assert (await api.post("/tenants/ten_nobody/backfill")).status_code == 404
    assert (await api.get("/backfill-jobs/bfj_nothing")).status_code == 404

    synced = await api.post(f"/tenants/{connected.id}/callbacks/sync")
    assert synced.status_code == 200 and synced.json()["error"] is None
    assert "invoice" in synced.json()["unchanged"]


async def test_a_start_that_misses_the_running_job_in_its_look_still_leaves_one(runtime, tenant, monkeypatch):
    """The race on purpose: a second start looks for a running job before the first one's commit
    lands (another replica, or this process between its look and its insert). The database keeps
    one running job per tenant, and the second start answers with it."""
    now = utcnow()
    async with runtime.db.sessions() as session:
        existing = await backfill_jobs.add(session, "bfj_first", tenant.id, ["invoice"], now)
        await session.commit()
    real_look = backfill_jobs.running_for
    looks = []

    async def missing_it_once(*args: Any, **kwargs: Any) -> Any:
        looks.append(1)
        return None if len(looks) == 1 else await real_look(*args, **kwargs)

    monkeypatch.setattr(backfill_jobs, "running_for", missing_it_once)
    job, new = await jobs.start(runtime, tenant.id)
    assert (job.id, new) == (existing.id, False) and len(looks) == 2
    async with runtime.db.sessions() as session:
        running = (await session.execute(select(BackfillJob.id).where(BackfillJob.status == "running"))).scalars().all()
    assert running == [existing.id]


async def test_a_silent_running_job_is_marked_abandoned_when_a_new_one_starts(runtime, tenant):
    long_ago = utcnow() - jobs.ABANDONED_AFTER - timedelta(seconds=1)
    async with runtime.db.sessions() as session:
        await backfill_jobs.add(session, "bfj_silent", tenant.id, ["invoice"], long_ago)
        await session.commit()
    job, new = await jobs.start(runtime, tenant.id)
    assert new and job.id != "bfj_silent"
    async with runtime.db.sessions() as session:
        silent = await backfill_jobs.get(session, "bfj_silent")
    assert silent is not None and silent.status == "abandoned" and silent.finished_at is not None
