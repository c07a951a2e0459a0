"""Schemathesis over the admin API's own OpenAPI document, against the running service.

Every documented operation is called with data generated from the document (valid, and with
schemathesis' coverage phase, invalid), once with the bearer ADMIN_TOKEN and once without it: each
operation is a test of its own, ``test_...[GET /admin/v1/tenants]``, which can be run alone. The
checks: never a 5xx, every status, header and body as the document describes it, every request
answered within a deadline. A tenant, a subscription, an event and its deliveries are seeded first,
and path ids are sometimes replaced with theirs, so reads, updates, replays and deletes reach real
rows. Subscription URLs are only validated here (no delivery workers run), never fetched.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from conftest import make_settings
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from test_admin_api import _seed

from webhook_service.delivery import subscriptions
from webhook_service.storage import backfill_jobs
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.web import admin

ADMIN_TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REQUEST_TIMEOUT = 10.0
"""Seconds one request may take before the run calls it a hang."""

OPERATIONS = [f"{method.upper()} {path}" for path, item in admin.DOCUMENT["paths"].items() for method in item]
"""Every documented operation, by its label: one test per operation and token."""
one_operation = schemathesis.pytest.from_fixture("operation_schema")

FUZZ = hypothesis.settings(
    max_examples=25,
    deadline=None,
    # The same examples on every run: CI must not turn red at random. Widen the search locally with
    # derandomize off and a larger max_examples; what it finds becomes an example test.
    derandomize=True,
    # One service per operation, shared by its examples, like a real deployment taking many requests.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


DEPENDS_ON_STATE = {"POST /admin/v1/subscriptions", "PATCH /admin/v1/subscriptions/{subscription_id}"}
"""Valid-looking bodies these refuse with a documented 422 for reasons no schema can say: a
``tenant_id`` that names no tenant, a URL the egress policy (OUTBOUND_ALLOWED_CIDRS) refuses."""


@pytest.fixture
def settings(database_url, simulator, service_socket):
    return make_settings(database_url, simulator, service_socket, admin_token=ADMIN_TOKEN, delivery_workers=0)


@pytest.fixture(params=OPERATIONS)
def operation_schema(request: pytest.FixtureRequest) -> schemathesis.BaseSchema:
    """The document narrowed to one operation, so each is its own test (node id)."""
    # schemathesis' lazy loader (4.x) reads and restores ``node._nodeid`` around each operation for
    # its reports; pytest 9 keeps the node id elsewhere, so give it the attribute it expects.
    request.node._nodeid = request.node.nodeid
    method, path = request.param.split(" ", 1)
    operation = admin.DOCUMENT["paths"][path][method.lower()]
    return schemathesis.openapi.from_dict({**admin.DOCUMENT, "paths": {path: {method.lower(): operation}}})


@pytest.fixture
async def seeded(service, runtime, tenant) -> dict[str, str]:
    """Ids of real rows, by path parameter name."""
    created = await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook", "tenant_id": tenant.id})
    ids = await _seed(runtime, tenant, created.subscription.id)
    async with runtime.db.sessions() as session:  # a finished backfill job to read
        job = await backfill_jobs.add(session, new_id("bfj"), tenant.id, ["invoice"], utcnow())
        await backfill_jobs.record(session, job.id, status="succeeded", finished_at=utcnow())
        await session.commit()
    return {
        "subscription_id": created.subscription.id,
        "tenant_id": tenant.id,
        "event_id": ids["event"],
        "delivery_id": ids["fresh"],
        "type": "invoice.updated",
        "job_id": job.id,
    }


def prepare(case: Any, data: st.DataObject, seeded: dict[str, str], *, drop: frozenset[str] = frozenset()) -> None:
    """Aim path ids at the seeded rows (sometimes), and drop the generated headers named in ``drop``
    or that no HTTP client sends (a name that is no token, framing the client sets itself): uvicorn's
    parser answers those with a plain-text 400 before the service sees the request."""
    for name in list(case.path_parameters or {}):
        if data.draw(st.booleans(), label=f"use the seeded {name}"):
            case.path_parameters[name] = seeded[name]
    case.headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if HEADER_NAME.fullmatch(name) and name.lower() not in FRAMING | drop
    }


HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection"})


@one_operation.parametrize()
@one_operation.given(data=st.data())
@FUZZ
def test_authenticated_requests_get_documented_answers(case, data, service, seeded):
    prepare(case, data, seeded)
    case.call_and_validate(
        base_url=service.base_url,
        headers=AUTH,
        timeout=REQUEST_TIMEOUT,
        excluded_checks=[
            # A query "violating" the schema (an integer sent as "1", an empty value) is often sent
            # as exactly the string a valid one would be: accepting it is right, not a bug.
            negative_data_rejection,
            *([positive_data_acceptance] if case.operation.label in DEPENDS_ON_STATE else []),
        ],
    )


@one_operation.parametrize()
@one_operation.given(data=st.data())
@hypothesis.settings(FUZZ, max_examples=10)  # one answer expected throughout: fewer examples find what there is
def test_requests_without_the_token_are_refused_as_documented(case, data, service, seeded):
    prepare(case, data, seeded, drop=frozenset({"authorization"}))
    response = case.call_and_validate(base_url=service.base_url, timeout=REQUEST_TIMEOUT)
    if case.operation.path == f"{admin.PREFIX}/openapi.json":
        assert response.status_code == 200
    else:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == ["Bearer"]


# --- regressions the fuzzing found ---------------------------------------------------------------


async def test_an_unknown_query_parameter_is_refused_not_ignored(service, seeded):
    """``?staus=dead`` used to list every delivery; now it is a 422 that names the parameter."""
    async with httpx.AsyncClient(base_url=service.base_url + admin.PREFIX, headers=AUTH, timeout=10) as client:
        typo = await client.get("/deliveries", params={"staus": "dead"})
        known = await client.get("/deliveries", params={"status": "dead", "limit": 1})
        on_a_read = await client.get(f"/tenants/{seeded['tenant_id']}", params={"verbose": "1"})
        unauthenticated = await client.get("/deliveries", params={"staus": "dead"}, headers={"Authorization": ""})
    assert typo.status_code == 422 and typo.json()["error"] == "unknown_query_parameter"
    assert "'staus'" in typo.json()["message"]
    assert known.status_code == 200 and len(known.json()["data"]) == 1
    assert on_a_read.status_code == 422
    assert unauthenticated.status_code == 401  # authentication first: nothing about the API leaks


def test_the_document_says_a_subscription_url_is_http_or_https():
    """The document allowed any string, so schema-valid bodies were refused; now it states the scheme."""
    url = admin.DOCUMENT["components"]["schemas"]["SubscriptionCreate"]["properties"]["url"]
    assert all(re.search(url["pattern"], ok) for ok in ("https://example.com/", "HTTP://127.0.0.1:9/hook"))
    assert not any(re.search(url["pattern"], bad) for bad in ("0", "ftp://x", "example.com", " https://x"))
