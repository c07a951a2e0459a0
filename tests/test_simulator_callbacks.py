"""The simulator's callbacks API and webhook deliveries behave like FreshBooks (harsher where undocumented).

A tiny Starlette receiver on 127.0.0.1 records what the simulator POSTs; tests call
``flush_deliveries()`` instead of sleeping. Signatures are checked with a few lines of hmac/json
written here, not with the simulator's own signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.sandbox.serving import BackgroundServer
from webhook_service.sandbox.simulator import SimulatorServer, SimulatorState
from webhook_service.sandbox.simulator.delivery import DeliveryHold
from webhook_service.sandbox.simulator.signing import encode, sign

CALLBACKS = "/events/account/{}/events/callbacks"
ABC = CALLBACKS.format("ABC123")
VERIFY_ORDER = ["user_id", "name", "verifier", "object_id", "account_id", "system"]
EVENT_FIELDS = {"name", "object_id", "account_id", "business_id", "identity_id", "user_id"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
EASTERN_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


class Receiver:
    """Records every request (method, path, headers, raw body) and answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(
            {"method": request.method, "path": request.url.path, "headers": request.headers, "body": body}
        )
        return Response(status_code=self.status)

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[tuple[Receiver, str]]:
    recorder = Receiver()
    with BackgroundServer(recorder.app) as server:
        yield recorder, server.base_url


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorState(seed=11)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_world(sim: SimulatorServer, module_receiver: tuple[Receiver, str]) -> Iterator[None]:
    """One server pair per module (each uvicorn stop costs 0.1 s), reset to a blank slate per test."""
    yield
    state, (recorder, _) = sim.state, module_receiver
    state.resume_deliveries()
    state.flush_deliveries()
    for account in ("ABC123", "XYZ789"):
        for found in state.list_callbacks(account):
            state.drop_callback(found["callbackid"])
    state.delivery_drop_rate = 0.0
    state.disable_after_failures = None
    state.reset_logs()
    recorder.requests.clear()
    recorder.status = 200


@pytest.fixture
def receiver(module_receiver: tuple[Receiver, str]) -> tuple[Receiver, str]:
    return module_receiver


@pytest.fixture
def state(sim: SimulatorServer) -> SimulatorState:
    return sim.state


@pytest.fixture(scope="module")
def http(sim: SimulatorServer) -> Iterator[httpx.Client]:
    state = sim.state
    token = httpx.post(
        sim.base_url + "/auth/oauth/token",
        json={
            "grant_type": "refresh_token",
            "client_id": state.client_id,
            "client_secret": state.client_secret,
            "refresh_token": state.issue_refresh_token(),
            "redirect_uri": "https://app.example.com/cb",
        },
    ).json()["access_token"]
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=5) as client:
        yield client


def form(request: dict[str, Any]) -> list[tuple[str, str]]:
    return parse_qsl(request["body"].decode("ascii"), keep_blank_values=True)


def freshbooks_signature(verifier: str, body: bytes) -> str:
    """Our own reading of the docs: JSON of the form fields in received order, default separators."""
    fields = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
    digest = hmac.new(verifier.encode(), json.dumps(fields).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def create(http: httpx.Client, uri: str, event: str = "invoice", path: str = ABC) -> dict[str, Any]:
    response = http.post(path, json={"callback": {"event": event, "uri": uri}})
    assert response.status_code == 200, response.text
    return response.json()["response"]["result"]["callback"]


def verify(http: httpx.Client, state: SimulatorState, callback_id: int) -> dict[str, Any]:
    response = http.put(f"{ABC}/{callback_id}", json={"callback": {"verifier": state.callback_verifier(callback_id)}})
    assert response.status_code == 200, response.text
    return response.json()["response"]["result"]["callback"]


def subscribed(state: SimulatorState, base: str, path: str, event: str = "invoice") -> int:
    """A verified callback made through the Python API (its verification POST flushed)."""
    callback_id = state.create_callback("ABC123", event, base + path)["callbackid"]
    state.verify_callback(callback_id, state.callback_verifier(callback_id))
    state.flush_deliveries()
    return callback_id


# -- signing ---------------------------------------------------------------------------


def test_reference_vector():
    body = "name=invoice.create&object_id=1234567&account_id=6BApk&business_id=6543&identity_id=1234&user_id=1"
    message = dict(parse_qsl(body))
    expected = "/S03vyYmI7CekM4YXBHUhs9o5rnMtqGLrW3aA8S9gPc="
    assert sign("scADVVi5QuKuj5qTjVkbJNYQe7V7USpGd", message) == expected
    assert encode(message) == body.encode()
    assert freshbooks_signature("scADVVi5QuKuj5qTjVkbJNYQe7V7USpGd", body.encode()) == expected


# -- callbacks API ---------------------------------------------------------------------------


def test_create_answers_then_posts_the_verification_in_documented_order(http, state, receiver):
    recorder, base = receiver
    created = create(http, base + "/hooks", "invoice.create")
    assert created["callbackid"] >= 778599 and created["verified"] is False
    assert (created["event"], created["uri"]) == ("invoice.create", base + "/hooks")
    assert set(created) == {"callbackid", "event", "uri", "verified", "updated_at"}
    state.flush_deliveries()

    [post] = recorder.requests
    assert post["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert "x-freshbooks-hmac-sha256" not in post["headers"]
    fields = form(post)
    assert [key for key, _ in fields] == VERIFY_ORDER
    values = dict(fields)
    assert values["name"] == "callback.verify" and values["account_id"] == "ABC123"
    assert values["object_id"] == str(created["callbackid"])
    assert values["user_id"] == str(state.default_identity_id)
    assert values["verifier"] == state.callback_verifier(created["callbackid"])
    assert re.fullmatch(r"[A-Za-z0-9]{25,40}", values["verifier"])
    assert re.fullmatch(r"https%3A%2F%2F[a-z0-9]+\.freshbooks\.com", post["body"].decode().rsplit("system=", 1)[1])
    [logged] = state.deliveries
    assert (logged["kind"], logged["status"], logged["signature"], logged["dropped"]) == ("verify", 200, None, False)


def test_verification_waits_for_the_response_hold():
    state = SimulatorState()
    hold = DeliveryHold()
    state.create_callback("ABC123", "invoice", "http://127.0.0.1:9/never", hold=hold)
    with pytest.raises(TimeoutError):
        state.flush_deliveries(timeout=0.05)
    assert state.deliveries == []
    state.close()


def test_wrong_verifier_is_422_and_changes_nothing_then_the_right_one_verifies(http, state, receiver):
    _, base = receiver
    callback_id = create(http, base + "/hooks")["callbackid"]
    verifier = state.callback_verifier(callback_id)
    wrong = http.put(f"{ABC}/{callback_id}", json={"callback": {"verifier": verifier + "x"}})
    assert wrong.status_code == 422
    assert wrong.json()["errno"] == 422 and wrong.json()["message"] == "Invalid verifier."
    assert state.get_callback(callback_id)["verified"] is False
    assert state.callback_verifier(callback_id) == verifier
    assert verify(http, state, callback_id)["verified"] is True
    assert http.get(f"{ABC}/{callback_id}").json()["response"]["result"]["callback"]["verified"] is True


def test_list_pages_like_accounting_and_searches_exact_event(http, state, receiver):
    _, base = receiver
    events = ["invoice", "invoice.create", "client", "invoice", "payment.delete", "invoice", "estimate.sendByEmail"]
    ids = [state.create_callback("ABC123", event, f"{base}/{i}")["callbackid"] for i, event in enumerate(events)]
    state.create_callback("XYZ789", "invoice", base + "/other")

    def page(**params: Any) -> dict[str, Any]:
        response = http.get(ABC, params=params)
        assert response.status_code == 200
        return response.json()["response"]["result"]

    first = page(page=1, per_page=3)
    assert (first["page"], first["pages"], first["per_page"], first["total"]) == (1, 3, 3, 7)
    assert [c["callbackid"] for c in first["callbacks"]] == ids[:3]
    assert [c["callbackid"] for c in page(page=3, per_page=3)["callbacks"]] == ids[6:]
    assert page(page=4, per_page=3)["callbacks"] == []
    assert page(page=0, per_page=3)["page"] == 1
    capped = page(per_page=500)
    assert capped["per_page"] == 100 and len(capped["callbacks"]) == 7
    assert page()["per_page"] == 15
    searched = page(**{"search[event]": "invoice"})
    assert [c["callbackid"] for c in searched["callbacks"]] == [ids[0], ids[3], ids[5]]
    assert searched["total"] == 3
    state.flush_deliveries()


def test_unknown_event_and_bad_uri_are_422(http, receiver):
    _, base = receiver
    unknown = http.post(ABC, json={"callback": {"event": "invoice.explode", "uri": base}})
    assert unknown.status_code == 422
    assert unknown.json() == {
        "errno": 422,
        "message": "Unrecognized event.",
        "details": ["event: Value error, Unrecognized event."],
    }
    assert http.post(ABC, json={"callback": {"event": "Invoice", "uri": base}}).status_code == 422
    for uri in ("ftp://example.com/x", "not a uri", None, 17):
        response = http.post(ABC, json={"callback": {"event": "invoice", "uri": uri}})
        assert response.status_code == 422 and response.json()["errno"] == 422
        assert response.json()["details"][0].startswith("uri: ")
    for event in ("time_entry.delete", "invoice.sendByEmail", "bill_vendor", "recurring.update"):
        create(http, base + "/ok", event)


def test_wrong_account_or_callback_of_another_account_is_404(http, state, receiver):
    _, base = receiver
    callback_id = create(http, base + "/hooks")["callbackid"]
    assert http.get(CALLBACKS.format("NOPE")).status_code == 404
    assert http.get(CALLBACKS.format("439000")).status_code == 404  # the business id is the wrong identifier
    assert http.get(CALLBACKS.format("XYZ789") + f"/{callback_id}").status_code == 404
    assert http.get(f"{ABC}/{callback_id + 1000}").status_code == 404
    assert http.get(f"{ABC}/abc").status_code == 404
    assert httpx.get(str(http.base_url) + ABC).status_code == 401


def test_delete_is_204_then_404(http, state, receiver):
    _, base = receiver
    callback_id = create(http, base + "/hooks")["callbackid"]
    deleted = http.delete(f"{ABC}/{callback_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert http.get(f"{ABC}/{callback_id}").status_code == 404
    assert http.delete(f"{ABC}/{callback_id}").status_code == 404
    assert state.get_callback(callback_id) is None


def test_resend_gives_a_new_verifier_unverifies_and_posts_again(http, state, receiver):
    recorder, base = receiver
    callback_id = create(http, base + "/hooks")["callbackid"]
    verify(http, state, callback_id)
    old = state.callback_verifier(callback_id)

    resent = http.put(f"{ABC}/{callback_id}", json={"callback": {"resend": True}})
    assert resent.status_code == 200
    assert resent.json()["response"]["result"]["callback"]["verified"] is False
    new = state.callback_verifier(callback_id)
    assert new != old
    state.flush_deliveries()
    assert [dict(form(r))["verifier"] for r in recorder.requests] == [old, new]

    assert http.put(f"{ABC}/{callback_id}", json={"callback": {"verifier": old}}).status_code == 422
    assert verify(http, state, callback_id)["verified"] is True


def test_uri_change_reverifies_but_event_change_does_not(http, state, receiver):
    recorder, base = receiver
    callback_id = create(http, base + "/one")["callbackid"]
    verify(http, state, callback_id)
    renamed = http.put(f"{ABC}/{callback_id}", json={"callback": {"event": "client.update"}}).json()
    assert renamed["response"]["result"]["callback"]["event"] == "client.update"
    assert renamed["response"]["result"]["callback"]["verified"] is True
    moved = http.put(f"{ABC}/{callback_id}", json={"callback": {"uri": base + "/two"}}).json()
    assert moved["response"]["result"]["callback"]["verified"] is False
    bad = http.put(f"{ABC}/{callback_id}", json={"callback": {"event": "nope", "uri": base + "/three"}})
    assert bad.status_code == 422 and state.get_callback(callback_id)["uri"] == base + "/two"
    state.flush_deliveries()
    [verification] = recorder.at("/two")
    assert dict(form(verification))["verifier"] == state.callback_verifier(callback_id)


def test_updated_at_comes_in_both_formats(http, state, receiver):
    _, base = receiver
    callback_id = create(http, base + "/hooks")["callbackid"]
    seen = [http.get(f"{ABC}/{callback_id}").json()["response"]["result"]["callback"]["updated_at"] for _ in range(2)]
    assert any(ISO_Z.match(s) for s in seen) and any(EASTERN_NAIVE.match(s) for s in seen)


# -- event deliveries ---------------------------------------------------------------------------


def test_an_update_delivers_one_signed_event_to_verified_subscribers_of_the_noun(http, state, receiver):
    recorder, base = receiver
    [invoice] = state.seed("ABC123", "invoice", 1)  # seeding is silent
    state.seed("XYZ789", "invoice", 1)
    noun = subscribed(state, base, "/noun", "invoice")
    subscribed(state, base, "/create-only", "invoice.create")
    subscribed(state, base, "/client", "client")
    create(http, base + "/unverified", "invoice.update")
    state.flush_deliveries()
    recorder.requests.clear()

    state.seed("ABC123", "invoice", 3)  # still silent with subscribers
    state.update_object("ABC123", "invoice", invoice["id"], {"notes": "changed"})
    state.update_object("XYZ789", "invoice", invoice["id"], {"notes": "another tenant"})
    state.flush_deliveries()

    [post] = recorder.requests
    assert post["path"] == "/noun"
    assert post["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert post["headers"]["x-freshbooks-hmac-sha256"] == freshbooks_signature(
        state.callback_verifier(noun), post["body"]
    )
    fields = dict(form(post))
    assert set(fields) == EVENT_FIELDS
    assert fields["name"] == "invoice.update" and fields["object_id"] == str(invoice["id"])
    assert (fields["account_id"], fields["business_id"]) == ("ABC123", "439000")
    assert fields["identity_id"] == str(state.default_identity_id)
    [logged] = [d for d in state.deliveries if d["kind"] == "event"]
    assert logged["status"] == 200 and logged["fields"] == fields and logged["body"] == post["body"].decode()

    recorder.requests.clear()
    created = state.create_object("ABC123", "invoice")
    state.archive_object("ABC123", "invoice", created["id"])
    state.delete_object("ABC123", "invoice", created["id"])
    state.flush_deliveries()
    got = [(r["path"], dict(form(r))["name"]) for r in recorder.requests]
    assert got == [
        ("/noun", "invoice.create"),
        ("/create-only", "invoice.create"),
        ("/noun", "invoice.update"),
        ("/noun", "invoice.delete"),
    ]


def test_field_order_varies_between_deliveries(state, receiver):
    recorder, base = receiver
    subscribed(state, base, "/hooks", "invoice")
    recorder.requests.clear()
    for object_id in range(8):
        assert state.send_event("ABC123", "invoice.sendByEmail", object_id) == 1
    state.flush_deliveries()
    orders = {tuple(key for key, _ in form(r)) for r in recorder.requests}
    assert all(set(order) == EVENT_FIELDS for order in orders)
    assert len(orders) > 1


def test_awkward_field_values_are_form_encoded_and_signed_over_decoded_values(state, receiver):
    recorder, base = receiver
    callback_id = subscribed(state, base, "/hooks", "estimate.sendByEmail")
    recorder.requests.clear()
    awkward = "a:b,c/d e+f%g&h=i é 日本"
    state.send_event("ABC123", "estimate.sendByEmail", 77, {"note": awkward, "user_id": 42})
    state.flush_deliveries()
    [post] = recorder.requests
    assert "+" in post["body"].decode() and "%C3%A9" in post["body"].decode() and "&h" not in post["body"].decode()
    fields = dict(form(post))
    assert fields["note"] == awkward and fields["user_id"] == "42" and fields["object_id"] == "77"
    assert post["headers"]["x-freshbooks-hmac-sha256"] == freshbooks_signature(
        state.callback_verifier(callback_id), post["body"]
    )


def test_drop_rate_drops_events_but_never_verifications(state, receiver):
    recorder, base = receiver
    state.delivery_drop_rate = 1.0
    subscribed(state, base, "/hooks", "invoice")
    assert [r["path"] for r in recorder.requests] == ["/hooks"]  # the verification got through
    state.send_event("ABC123", "invoice.create", 1)
    state.flush_deliveries()
    assert len(recorder.requests) == 1
    dropped = state.deliveries[-1]
    assert (dropped["kind"], dropped["dropped"], dropped["status"], dropped["error"]) == ("event", True, None, None)


def test_consecutive_failures_disable_the_callback(state, receiver):
    recorder, base = receiver
    state.disable_after_failures = 2
    callback_id = subscribed(state, base, "/hooks", "invoice")
    recorder.status = 500
    for object_id in range(3):
        state.send_event("ABC123", "invoice.update", object_id)
    state.flush_deliveries()
    events = [d for d in state.deliveries if d["kind"] == "event"]
    assert [d["status"] for d in events] == [500, 500]  # the third was never sent
    assert state.get_callback(callback_id)["verified"] is False
    assert state.send_event("ABC123", "invoice.update", 9) == 0


def test_transport_errors_are_logged_and_lost():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/gone"
    state = SimulatorState()
    callback_id = state.create_callback("ABC123", "client", dead)["callbackid"]
    state.verify_callback(callback_id, state.callback_verifier(callback_id))
    state.send_event("ABC123", "client.create", 5)
    state.flush_deliveries()
    assert [(d["kind"], d["status"]) for d in state.deliveries] == [("verify", None), ("event", None)]
    assert all(d["error"] for d in state.deliveries)
    state.close()


def test_disabled_or_dropped_callbacks_get_nothing(state, receiver):
    recorder, base = receiver
    disabled = subscribed(state, base, "/disabled", "invoice")
    dropped = subscribed(state, base, "/dropped", "invoice")
    recorder.requests.clear()
    state.disable_callback(disabled)
    state.drop_callback(dropped)
    assert state.send_event("ABC123", "invoice.create", 1) == 0
    state.flush_deliveries()
    assert recorder.requests == [] and state.get_callback(dropped) is None
    assert [c["callbackid"] for c in state.list_callbacks("ABC123")] == [disabled]


def test_flush_returns_without_sleeping_and_pause_holds_deliveries(state, receiver):
    recorder, base = receiver
    state.flush_deliveries(timeout=0)  # nothing queued: returns at once
    subscribed(state, base, "/hooks", "invoice")
    state.pause_deliveries()
    assert state.deliveries_paused
    state.send_event("ABC123", "invoice.create", 1)
    state.flush_deliveries(timeout=0)  # paused deliveries are not waited for
    assert len(recorder.requests) == 1
    state.resume_deliveries()
    state.flush_deliveries()
    assert len(recorder.requests) == 2


def test_control_routes_drive_deliveries(sim, state, receiver):
    recorder, base = receiver
    callback_id = subscribed(state, base, "/hooks", "client")
    with httpx.Client(base_url=sim.base_url, timeout=5) as control:
        [listed] = control.get("/_sim/callbacks/ABC123").json()
        assert listed["callbackid"] == callback_id and listed["verifier"] == state.callback_verifier(callback_id)
        settings = control.post("/_sim/delivery-settings", json={"paused": True, "disable_after_failures": 3})
        assert settings.json() == {"drop_rate": 0.0, "paused": True, "disable_after_failures": 3}
        sent = control.post("/_sim/events", json={"account_id": "ABC123", "name": "client.update", "object_id": 5})
        assert sent.json() == {"queued": 1}
        control.post("/_sim/delivery-settings", json={"paused": False})
        assert control.post("/_sim/flush-deliveries", json={"timeout": 5}).status_code == 200
        log = control.get("/_sim/deliveries").json()
        assert [(d["kind"], d["status"]) for d in log] == [("verify", 200), ("event", 200)]
        assert control.post("/_sim/delivery-settings", json={"drop_rate": 2}).status_code == 400
        assert control.get("/_sim/callbacks/NOPE").status_code == 404
    assert dict(form(recorder.requests[-1]))["name"] == "client.update"


def test_stopping_the_server_stops_the_delivery_thread(receiver):
    _, base = receiver
    before = set(threading.enumerate())
    with SimulatorServer() as server:
        server.state.create_callback("ABC123", "invoice", base + "/hooks")
        server.state.flush_deliveries()
        started = [t for t in threading.enumerate() if t not in before and t.name.startswith("sim-deliveries")]
        assert len(started) == 1
    assert not started[0].is_alive()
