"""The FreshBooks simulator keeps the promises the service's tests rely on.

Every test talks HTTP to a real server on 127.0.0.1 (one per module) and
checks a behaviour a careless simulator would get wrong: single-use refresh
tokens, identifier mix-ups answered with 404, Eastern-day filters, capped
pagination, and so on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from webhook_service.sandbox.simulator import SimulatorServer, SimulatorState

REDIRECT = "https://app.example.com/oauth/callback"
TOKEN = "/auth/oauth/token"
ME = "/auth/api/v1/users/me"
INVOICES = "/accounting/account/{}/invoices/invoices"
EASTERN_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# 2026-11-22 04:30 UTC is 23:30 on 2026-11-21 in New York (EST, UTC-5).
LATE_EVENING_EASTERN = datetime(2026, 11, 22, 4, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorState(seed=7)) as server:
        yield server


@pytest.fixture(scope="module")
def http(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5) as client:
        yield client


@pytest.fixture
def state(sim: SimulatorServer) -> SimulatorState:
    return sim.state


def refresh(http: httpx.Client, state: SimulatorState, refresh_token: str, **extra: str) -> httpx.Response:
    body = {
        "grant_type": "refresh_token",
        "client_id": state.client_id,
        "client_secret": state.client_secret,
        "refresh_token": refresh_token,
        "redirect_uri": REDIRECT,
    } | extra
    return http.post(TOKEN, json=body)


def exchange(http: httpx.Client, state: SimulatorState, code: str, redirect_uri: str = REDIRECT) -> httpx.Response:
    return http.post(
        TOKEN,
        json={
            "grant_type": "authorization_code",
            "client_id": state.client_id,
            "client_secret": state.client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        },
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token(http: httpx.Client, state: SimulatorState) -> str:
    """A fresh access token for the default identity."""
    response = refresh(http, state, state.issue_refresh_token())
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def all_ids(http: httpx.Client, token: str, path: str, key: str, **params: str) -> list[int]:
    """Walk every page of a list (accounting or projects shape) and collect ids."""
    ids: list[int] = []
    page = 1
    while True:
        body = http.get(path, params={**params, "page": page, "per_page": 100}, headers=bearer(token)).json()
        result = body["response"]["result"] if "response" in body else body
        meta = result.get("meta", result)
        ids += [obj["id"] for obj in result[key]]
        if page >= meta["pages"]:
            return ids
        page += 1


# -- OAuth -------------------------------------------------------------------------


def test_refresh_token_is_single_use_and_rotation_kills_old_access_token(http, state):
    old = state.issue_refresh_token()
    first = refresh(http, state, old)
    assert first.status_code == 200
    body = first.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 43200
    assert isinstance(body["created_at"], int) and abs(body["created_at"] - time.time()) < 5
    assert "user:invoices:read" in body["scope"].split(" ")
    assert body["refresh_token"] != old

    reused = refresh(http, state, old)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant" and reused.json()["error_description"]

    second = refresh(http, state, body["refresh_token"])
    assert second.status_code == 200
    assert http.get(ME, headers=bearer(body["access_token"])).status_code == 401  # harsher: rotated away
    assert http.get(ME, headers=bearer(second.json()["access_token"])).status_code == 200

    mine = [r for r in state.token_requests if r["refresh_token"] in (old, body["refresh_token"])]
    assert [(r["grant_type"], r["status"], r["error"]) for r in mine] == [
        ("refresh_token", 200, None),
        ("refresh_token", 400, "invalid_grant"),
        ("refresh_token", 200, None),
    ]


def test_concurrent_refreshes_with_one_token_have_exactly_one_winner(http, state):
    shared = state.issue_refresh_token()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: refresh(http, state, shared), range(12)))
    assert sorted(r.status_code for r in responses) == [200] + [400] * 11
    assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}


def test_wrong_client_credentials_are_invalid_client(http, state):
    response = refresh(http, state, state.issue_refresh_token(), client_secret="nope")
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_authorize_redirects_with_code_and_unchanged_state(http, state):
    odd_state = "a/b=c&d é"
    response = http.get(
        "/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": state.client_id,
            "redirect_uri": REDIRECT,
            "scope": "user:profile:read user:invoices:read",
            "state": odd_state,
        },
    )
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [odd_state]

    tokens = exchange(http, state, query["code"][0])
    assert tokens.status_code == 200
    assert tokens.json()["scope"] == "user:profile:read user:invoices:read"
    again = exchange(http, state, query["code"][0])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"  # single use


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "someone-else"},
        {"response_type": "token"},
        {"redirect_uri": "http://app.example.com/callback"},  # FreshBooks wants HTTPS
        {"redirect_uri": REDIRECT + "?next=/x"},  # and no query string: use state
    ],
)
def test_authorize_refuses_bad_requests(http, state, params):
    base = {"response_type": "code", "client_id": state.client_id, "redirect_uri": REDIRECT}
    assert http.get("/oauth/authorize", params=base | params).status_code == 400


def test_code_is_bound_to_its_redirect_uri(http, state):
    mismatched = state.issue_authorization_code(REDIRECT)
    assert exchange(http, state, mismatched, "https://app.example.com/other").json()["error"] == "invalid_grant"
    assert exchange(http, state, state.issue_authorization_code(REDIRECT)).status_code == 200


def test_revoke_kills_the_whole_grant(http, state):
    pair = refresh(http, state, state.issue_refresh_token()).json()
    wrong = http.post(
        "/auth/oauth/revoke", json={"client_id": state.client_id, "client_secret": "x", "token": pair["refresh_token"]}
    )
    assert wrong.status_code == 401
    assert http.get(ME, headers=bearer(pair["access_token"])).status_code == 200

    revoked = http.post(
        "/auth/oauth/revoke",
        json={"client_id": state.client_id, "client_secret": state.client_secret, "token": pair["refresh_token"]},
    )
    assert (revoked.status_code, revoked.json()) == (200, {})
    assert http.get(ME, headers=bearer(pair["access_token"])).status_code == 401
    assert refresh(http, state, pair["refresh_token"]).json()["error"] == "invalid_grant"


def test_expired_access_token_gets_401(http, state, token):
    assert http.get(ME, headers=bearer(token)).status_code == 200
    assert state.expire_access_tokens() >= 1
    expired = http.get(INVOICES.format("ABC123"), headers=bearer(token))
    assert expired.status_code == 401
    assert expired.json()["error"] == "unauthenticated"
    assert http.get(INVOICES.format("ABC123")).status_code == 401  # no token at all


# -- identity and identifiers --------------------------------------------------------


def test_users_me_lists_memberships_and_the_client_one_lacks_account_id(http, token):
    me = http.get(ME, headers=bearer(token)).json()["response"]
    assert me["id"] == me["identity_id"] == 12345
    by_business = {m["business"]["id"]: m for m in me["business_memberships"]}
    assert set(by_business) == {439000, 439001, 439002}
    assert (by_business[439000]["role"], by_business[439000]["business"]["account_id"]) == ("owner", "ABC123")
    assert by_business[439000]["business"]["name"] == "Awesome Inc."
    assert by_business[439001]["business"]["account_id"] == "XYZ789"
    assert by_business[439002]["role"] == "client"
    assert "account_id" not in by_business[439002]["business"]
    membership_ids = {m["id"] for m in me["business_memberships"]}
    assert len(membership_ids) == 3 and not membership_ids & set(by_business)
    assert all(m["business"]["business_uuid"] for m in me["business_memberships"])


def test_wrong_identifier_is_404(http, token):
    ok = bearer(token)
    assert http.get(INVOICES.format("ABC123"), headers=ok).status_code == 200
    assert http.get(INVOICES.format("439000"), headers=ok).status_code == 404  # business id where account_id goes
    assert http.get(INVOICES.format("NOPE42"), headers=ok).status_code == 404
    assert http.get("/projects/business/439000/projects", headers=ok).status_code == 200
    assert http.get("/projects/business/ABC123/projects", headers=ok).status_code == 404  # and vice versa
    assert http.get("/projects/business/140130/projects", headers=ok).status_code == 404  # a membership id


def test_client_only_identity_sees_no_accounting(http, state):
    identity = state.add_identity([{"business_id": 439000, "name": "Awesome Inc.", "role": "client"}])
    access = refresh(http, state, state.issue_refresh_token(identity)).json()["access_token"]
    [membership] = http.get(ME, headers=bearer(access)).json()["response"]["business_memberships"]
    assert membership["role"] == "client" and "account_id" not in membership["business"]
    assert http.get(INVOICES.format("ABC123"), headers=bearer(access)).status_code == 404


# -- accounting lists and objects ------------------------------------------------------


def test_per_page_is_capped_at_100_and_pages_past_the_end_are_empty(http, state, token):
    seeded = {obj["id"] for obj in state.seed("XYZ789", "invoice", 1234)}
    url = INVOICES.format("XYZ789")

    def page(**params: Any) -> dict[str, Any]:
        return http.get(url, params=params, headers=bearer(token)).json()["response"]["result"]

    first = page(per_page=500)
    assert (first["per_page"], first["pages"], first["total"], len(first["invoices"])) == (100, 13, 1234, 100)
    ids = [inv["id"] for inv in first["invoices"]]
    assert ids == sorted(ids)
    assert [inv["id"] for inv in page(page=0, per_page=100)["invoices"]] == ids
    last = page(page=13, per_page=500)
    assert len(last["invoices"]) == 34
    beyond = page(page=14, per_page=500)
    assert beyond["invoices"] == [] and beyond["total"] == 1234
    assert page()["per_page"] == 15 and len(page()["invoices"]) == 15
    assert set(all_ids(http, token, url, "invoices")) == seeded


def test_lines_only_with_include(http, state, token):
    invoice = state.create_object("ABC123", "invoice")
    single = f"{INVOICES.format('ABC123')}/{invoice['id']}"
    plain = http.get(single, headers=bearer(token)).json()["response"]["result"]["invoice"]
    assert "lines" not in plain
    full = http.get(single, params={"include[]": "lines"}, headers=bearer(token)).json()["response"]["result"]
    lines = full["invoice"]["lines"]
    assert lines and all({"lineid", "name", "qty", "unit_cost", "amount"} <= set(line) for line in lines)
    assert re.fullmatch(r"-?\d+\.\d{2}", lines[0]["unit_cost"]["amount"])
    listed = http.get(INVOICES.format("ABC123"), params={"include[]": "lines"}, headers=bearer(token)).json()
    assert all(inv["lines"] for inv in listed["response"]["result"]["invoices"])
    listed = http.get(INVOICES.format("ABC123"), headers=bearer(token)).json()
    assert not any("lines" in inv for inv in listed["response"]["result"]["invoices"])


def test_not_found_has_freshbooks_error_shape(http, token):
    response = http.get(f"{INVOICES.format('ABC123')}/99", headers=bearer(token))
    assert response.status_code == 404
    [error] = response.json()["response"]["errors"]
    assert (error["errno"], error["field"], error["object"], error["value"]) == (1012, "invoiceid", "invoice", "99")


@pytest.mark.parametrize(
    ("moment", "eastern"),
    [
        (LATE_EVENING_EASTERN, "2026-11-21 23:30:00"),  # EST, UTC-5
        (datetime(2026, 7, 1, 3, 30, tzinfo=UTC), "2026-06-30 23:30:00"),  # EDT, UTC-4
    ],
)
def test_updated_is_zoneless_us_eastern(http, state, token, monkeypatch, moment, eastern):
    monkeypatch.setattr(state, "now", lambda: moment)
    client = state.create_object("ABC123", "client")
    served = http.get(f"/accounting/account/ABC123/users/clients/{client['id']}", headers=bearer(token))
    body = served.json()["response"]["result"]["client"]
    assert body["updated"] == eastern and EASTERN_NAIVE.match(body["updated"])
    assert body["signup_date"] == moment.strftime("%Y-%m-%d %H:%M:%S")  # signup_date stays UTC


def test_updated_min_and_max_compare_eastern_days(http, state, token, monkeypatch):
    invoice = state.create_object("ABC123", "invoice")
    monkeypatch.setattr(state, "now", lambda: LATE_EVENING_EASTERN)  # 23:30 Eastern on 2026-11-21
    state.update_object("ABC123", "invoice", invoice["id"], {"notes": "late edit"})
    url = INVOICES.format("ABC123")

    def found(**search: str) -> bool:
        params = {f"search[{k}]": v for k, v in search.items()}
        return invoice["id"] in all_ids(http, token, url, "invoices", **params)

    assert found(updated_min="2026-11-21")
    assert not found(updated_min="2026-11-22")  # the UTC date, which is wrong
    assert found(updated_max="2026-11-21")
    assert not found(updated_max="2026-11-20")
    assert found(updated_min="2026-11-21", updated_max="2026-11-21")


def test_taxes_and_categories_ignore_updated_filters(http, state, token, monkeypatch):
    monkeypatch.setattr(state, "now", lambda: datetime(2020, 1, 1, 12, tzinfo=UTC))
    tax = state.create_object("ABC123", "tax")
    category = state.create_object("ABC123", "category")
    invoice = state.create_object("ABC123", "invoice")
    future = {"search[updated_min]": "2030-01-01"}
    assert tax["id"] in all_ids(http, token, "/accounting/account/ABC123/taxes/taxes", "taxes", **future)
    assert category["id"] in all_ids(
        http, token, "/accounting/account/ABC123/expenses/categories", "categories", **future
    )
    assert invoice["id"] not in all_ids(http, token, INVOICES.format("ABC123"), "invoices", **future)


def test_soft_delete_archive_and_vis_state_filter(http, state, token):
    client = state.create_object("XYZ789", "client")
    gone = state.create_object("XYZ789", "client")
    state.delete_object("XYZ789", "client", gone["id"])
    state.archive_object("XYZ789", "client", client["id"])
    path = "/accounting/account/XYZ789/users/clients"
    served = http.get(f"{path}/{gone['id']}", headers=bearer(token))
    assert served.status_code == 200 and served.json()["response"]["result"]["client"]["vis_state"] == 1
    listed = all_ids(http, token, path, "clients")
    assert gone["id"] in listed and client["id"] in listed
    active = all_ids(http, token, path, "clients", **{"search[vis_state]": "0"})
    archived = all_ids(http, token, path, "clients", **{"search[vis_state]": "2"})
    assert gone["id"] not in active and client["id"] not in active
    assert client["id"] in archived and gone["id"] not in archived


# -- projects family ---------------------------------------------------------------------


def test_projects_updated_since_and_utc_formats(http, state, token, monkeypatch):
    t1 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    monkeypatch.setattr(state, "now", lambda: t1)
    early = state.create_object("ABC123", "project")
    monkeypatch.setattr(state, "now", lambda: t1 + timedelta(hours=1))
    late = state.create_object("ABC123", "project")
    entry = state.create_object("ABC123", "time_entry")
    service = state.create_object("ABC123", "service")
    projects = "/projects/business/439000/projects"

    since = all_ids(http, token, projects, "projects", updated_since="2026-11-21T10:30:00Z")
    assert late["id"] in since and early["id"] not in since
    inclusive = all_ids(http, token, projects, "projects", updated_since="2026-11-21T10:00:00")
    assert {early["id"], late["id"]} <= set(inclusive)

    one = http.get(f"/projects/business/439000/project/{late['id']}", headers=bearer(token)).json()
    assert one["project"]["updated_at"] == "2026-11-21T11:00:00"  # UTC, no Z
    listed = http.get(projects, headers=bearer(token)).json()
    assert set(listed["meta"]) >= {"page", "pages", "per_page", "total"}

    entries = "/timetracking/business/439000/time_entries"
    got = http.get(f"{entries}/{entry['id']}", headers=bearer(token)).json()["time_entry"]
    assert got["updated_at"] == "2026-11-21T11:00:00Z"
    assert entry["id"] not in all_ids(http, token, entries, "time_entries", updated_since="2026-11-21T11:00:01Z")
    services = all_ids(
        http, token, "/comments/business/439000/services", "services", updated_since="2100-01-01T00:00:00Z"
    )
    assert service["id"] in services  # services have no timestamps and ignore the filter


def test_project_delete_is_hard(http, state, token):
    project = state.create_object("ABC123", "project")
    url = f"/projects/business/439000/project/{project['id']}"
    assert http.get(url, headers=bearer(token)).status_code == 200
    state.delete_object("ABC123", "project", project["id"])
    assert http.get(url, headers=bearer(token)).status_code == 404
    assert state.get_object("ABC123", "project", project["id"]) is None


# -- failures, logs, control -------------------------------------------------------------


def test_fail_next_gives_429_with_retry_after_then_normal(http, state, token):
    state.fail_next(2, status=429, retry_after="7")
    assert refresh(http, state, state.issue_refresh_token()).status_code == 200  # token endpoint untouched
    url = INVOICES.format("ABC123")
    answers = [http.get(url, headers=bearer(token)) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert answers[0].json()["errno"] == 429
    assert [r["status"] for r in state.requests[-3:]] == [429, 429, 200]


def test_fail_next_on_the_token_endpoint_does_not_consume_the_refresh_token(http, state):
    state.fail_next(1, status=503, retry_after=None, paths_prefix=TOKEN)
    kept = state.issue_refresh_token()
    failed = refresh(http, state, kept)
    assert failed.status_code == 503 and "retry-after" not in failed.headers
    assert (state.token_requests[-1]["status"], state.token_requests[-1]["refresh_token"]) == (503, kept)
    assert refresh(http, state, kept).status_code == 200


def test_request_log_keeps_query_order_and_authorization(http, state, token):
    query = [("search[updated_min]", "2026-01-01"), ("page", "2"), ("include[]", "lines"), ("per_page", "5")]
    http.get(INVOICES.format("ABC123"), params=query, headers=bearer(token))
    entry = state.requests[-1]
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", INVOICES.format("ABC123"), 200)
    assert entry["query"] == query
    assert entry["authorization"] == f"Bearer {token}"
    assert isinstance(entry["time"], float)


def test_seed_is_deterministic():
    def world() -> SimulatorState:
        state = SimulatorState(seed=3)
        state.now = lambda: LATE_EVENING_EASTERN
        return state

    invoices = world().seed("ABC123", "invoice", 2500)
    assert world().seed("ABC123", "invoice", 2500) == invoices
    assert len({inv["id"] for inv in invoices}) == 2500
    assert all(EASTERN_NAIVE.match(inv["updated"]) and inv["lines"] for inv in invoices[:50])


def test_control_routes_drive_a_running_simulator(http, state):
    refresh_token = http.post("/_sim/refresh-tokens").json()["refresh_token"]
    access = refresh(http, state, refresh_token).json()["access_token"]
    seeded = http.post("/_sim/seed", json={"account_id": "ABC123", "resource": "estimate", "count": 3}).json()
    assert seeded["count"] == 3
    created = http.post("/_sim/objects/ABC123/estimate", json={"notes": "made over HTTP"}).json()
    updated = http.put(f"/_sim/objects/ABC123/estimate/{created['id']}", json={"notes": "edited"}).json()
    assert updated["notes"] == "edited"
    assert http.delete(f"/_sim/objects/ABC123/estimate/{created['id']}").json()["vis_state"] == 1

    assert http.post("/_sim/fail-next", json={"count": 1, "status": 429, "retry_after": "2"}).status_code == 200
    path = "/accounting/account/ABC123/estimates/estimates"
    assert http.get(path, headers=bearer(access)).status_code == 429
    listed = http.get(path, headers=bearer(access)).json()["response"]["result"]
    assert set(seeded["ids"]) | {created["id"]} <= {e["id"] for e in listed["estimates"]}

    assert http.post("/_sim/expire-access-tokens").status_code == 200
    assert http.get(path, headers=bearer(access)).status_code == 401
    logged = http.get("/_sim/requests").json()
    assert logged[-1]["path"] == path and logged[-1]["status"] == 401
    assert not any(r["path"].startswith("/_sim/") for r in logged)
    assert http.get("/_sim/token-requests").json()[-1]["refresh_token"] == refresh_token


def test_businesses_route_connects_many_at_once(http, state):
    uri = "http://127.0.0.1:9/webhooks/freshbooks/"
    specs = [
        {
            "business_id": 7_100_000 + i,
            "account_id": f"BULK{i:02d}",
            "callbacks": [{"event": "invoice", "uri": f"{uri}i{i}"}, {"event": "client", "uri": f"{uri}c{i}"}],
        }
        for i in range(3)
    ]
    made = http.post("/_sim/businesses", json={"businesses": specs}).json()["businesses"]
    assert [m["account_id"] for m in made] == ["BULK00", "BULK01", "BULK02"]
    second = made[1]
    callbacks = http.get("/events/account/BULK01/events/callbacks", headers=bearer(second["access_token"]))
    listed = callbacks.json()["response"]["result"]["callbacks"]
    assert [(c["event"], c["uri"], c["verified"]) for c in listed] == [
        ("invoice", f"{uri}i1", True),
        ("client", f"{uri}c1", True),
    ]
    assert [c["callbackid"] for c in listed] == [c["callbackid"] for c in second["callbacks"]]
    assert state.callback_verifier(listed[0]["callbackid"]) == second["callbacks"][0]["verifier"]
    assert not any(d["callback_id"] in {c["callbackid"] for c in listed} for d in state.delivery_log())
    # each business is its own identity's only one, and its refresh token is live
    other = http.get("/events/account/BULK00/events/callbacks", headers=bearer(second["access_token"]))
    assert other.status_code == 404
    assert refresh(http, state, second["refresh_token"]).status_code == 200
    again = http.post("/_sim/businesses", json={"businesses": specs[:1]})
    assert again.status_code == 400 and "exists already" in again.json()["error"]


def test_unknown_route_is_json_404(http):
    response = http.get("/accounting/account/ABC123/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not found"


async def test_async_context_manager():
    async with SimulatorServer() as server, httpx.AsyncClient(base_url=server.base_url) as client:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        assert (await client.get(ME)).status_code == 401
