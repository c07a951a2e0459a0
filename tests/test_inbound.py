"""Receiving FreshBooks webhooks end to end on loopback: registrar, handshake, signatures, inbox."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import timedelta

import httpx
from conftest import OWNER_ACCOUNT_ID
from sqlalchemy import func, select

from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.inbound import registrar
from webhook_service.sandbox.simulator import signing
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Callback, CallbackStatus, Event, InboxEvent, TenantStatus


async def _callbacks(runtime, tenant_id) -> dict[str, Callback]:
    async with runtime.db.sessions() as session:
        return {cb.event: cb for cb in await callback_store.active_for_tenant(session, tenant_id)}


async def _inbox(runtime) -> list[InboxEvent]:
    async with runtime.db.sessions() as session:
        return list((await session.execute(select(InboxEvent).order_by(InboxEvent.id))).scalars())


def _post(service, callback, body: bytes, signature: str | None, content_type="application/x-www-form-urlencoded"):
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-FreshBooks-Hmac-SHA256"] = signature
    return httpx.post(
        callback.uri.replace(callback.uri.split("/webhooks/")[0], service.base_url), content=body, headers=headers
    )


def _signed(simulator, callback, message: dict[str, str]) -> tuple[bytes, str]:
    verifier = simulator.state.callback_verifier(callback.freshbooks_callback_id)
    return signing.encode(message), signing.sign(verifier, message)


def _event(noun="invoice", verb="update", object_id="100001", **extra):
    return {
        "name": f"{noun}.{verb}",
        "object_id": object_id,
        "account_id": OWNER_ACCOUNT_ID,
        "business_id": "439000",
        "identity_id": "12345",
        "user_id": "1",
        **extra,
    }


async def test_connect_sync_verify_and_receive_end_to_end(connected, service, runtime, simulator):
    callbacks = await _callbacks(runtime, connected.id)
    assert set(callbacks) == set(CATALOGUE)
    assert {cb.status for cb in callbacks.values()} == {CallbackStatus.VERIFIED.value}
    remote = simulator.state.list_callbacks(OWNER_ACCOUNT_ID)
    assert len(remote) == len(CATALOGUE) and all(r["verified"] for r in remote)
    assert len({cb.uri for cb in callbacks.values()}) == len(CATALOGUE)  # one unguessable URI each

    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "changed"})
    client = simulator.state.create_object(OWNER_ACCOUNT_ID, "client")
    await asyncio.to_thread(service.settle)

    events = [d for d in simulator.state.deliveries if d["kind"] == "event"]
    assert [d["status"] for d in events] == [200, 200]
    inbox = await _inbox(runtime)
    assert [(e.event_name, e.object_id, e.status) for e in inbox] == [
        ("invoice.update", str(invoice["id"]), "processed"),
        ("client.create", str(client["id"]), "processed"),
    ]
    async with runtime.db.sessions() as session:
        emitted = (await session.execute(select(Event.type, Event.inbox_event_id).order_by(Event.created_at))).all()
    assert sorted(emitted) == sorted([("invoice.updated", inbox[0].id), ("client.created", inbox[1].id)])
    assert inbox[0].callback_id == callbacks["invoice"].id and inbox[0].tenant_id == connected.id
    assert inbox[0].raw_body == events[0]["body"]
    assert json.loads(inbox[0].headers)["x-freshbooks-hmac-sha256"] == events[0]["signature"]
    assert (await _callbacks(runtime, connected.id))["invoice"].last_event_at is not None


async def test_sync_is_idempotent_and_leaves_foreign_callbacks_alone(connected, service, runtime, simulator, tenant):
    foreign = simulator.state.create_callback(OWNER_ACCOUNT_ID, "invoice", "https://other.example.com/hook")
    again = await registrar.sync_tenant(runtime, tenant)
    assert (again.created, again.deleted, again.resent, again.replaced) == ([], [], [], [])
    assert len(again.unchanged) == len(CATALOGUE)
    assert simulator.state.get_callback(foreign["callbackid"]) is not None


async def test_sync_replaces_dropped_resends_disabled_and_deletes_stale(connected, service, runtime, simulator):
    callbacks = await _callbacks(runtime, connected.id)
    simulator.state.drop_callback(callbacks["invoice"].freshbooks_callback_id)
    simulator.state.disable_callback(callbacks["client"].freshbooks_callback_id)
    stale = simulator.state.create_callback(OWNER_ACCOUNT_ID, "item", f"{service.base_url}/webhooks/freshbooks/old-key")

    report = await registrar.sync_tenant(runtime, connected)
    assert report.replaced == ["invoice"]
    assert report.resent == ["client"]
    assert report.deleted == [stale["callbackid"]]
    await asyncio.to_thread(service.settle)

    after = await _callbacks(runtime, connected.id)
    assert after["invoice"].id != callbacks["invoice"].id and after["invoice"].status == "verified"
    assert after["client"].status == "verified"
    assert simulator.state.get_callback(stale["callbackid"]) is None
    remote = simulator.state.list_callbacks(OWNER_ACCOUNT_ID)
    assert len(remote) == len(CATALOGUE) and all(r["verified"] for r in remote)


async def test_forged_verification_changes_nothing(connected, service, runtime, simulator):
    callback = (await _callbacks(runtime, connected.id))["invoice"]
    secret_before = runtime.box.decrypt(callback.verifier_enc)
    forged = {
        "user_id": "1",
        "name": "callback.verify",
        "verifier": "attacker-chosen-verifier",
        "object_id": str(callback.freshbooks_callback_id),
        "account_id": OWNER_ACCOUNT_ID,
    }
    response = _post(service, callback, signing.encode(forged), None)
    assert response.status_code == 200
    await asyncio.to_thread(service.settle)

    after = (await _callbacks(runtime, connected.id))["invoice"]
    assert runtime.box.decrypt(after.verifier_enc) == secret_before
    assert after.previous_verifier_enc is None and after.status == "verified"
    body, signature = _signed(simulator, after, _event())
    assert _post(service, after, body, signature).status_code == 200
    forged_signature = signing.sign("attacker-chosen-verifier", _event())
    assert _post(service, after, signing.encode(_event()), forged_signature).status_code == 401


async def test_reverification_keeps_the_old_verifier_for_a_grace_period(connected, service, runtime, simulator):
    callback = (await _callbacks(runtime, connected.id))["invoice"]
    old_body, old_signature = _signed(simulator, callback, _event())
    simulator.state.resend_verification(callback.freshbooks_callback_id)
    await asyncio.to_thread(service.settle)

    after = (await _callbacks(runtime, connected.id))["invoice"]
    assert runtime.box.decrypt(after.verifier_enc) == simulator.state.callback_verifier(callback.freshbooks_callback_id)
    assert _post(service, after, old_body, old_signature).status_code == 200  # old verifier, inside grace
    new_body, new_signature = _signed(simulator, after, _event(object_id="100002"))
    assert _post(service, after, new_body, new_signature).status_code == 200

    async with runtime.db.sessions() as session:
        row = await session.get(Callback, after.id)
        row.previous_verifier_until = utcnow() - timedelta(seconds=1)
        await session.commit()
    assert _post(service, after, old_body.replace(b"100001", b"100003"), old_signature).status_code == 401


async def test_exact_redelivery_is_a_duplicate(connected, service, runtime, simulator):
    callback = (await _callbacks(runtime, connected.id))["invoice"]
    body, signature = _signed(simulator, callback, _event())
    first = _post(service, callback, body, signature)
    second = _post(service, callback, body, signature)
    assert first.json()["status"] == "accepted" and second.json()["status"] == "duplicate"
    third = _post(service, callback, body, signature)
    assert third.json()["status"] == "duplicate"
    await asyncio.to_thread(service.settle)
    inbox = await _inbox(runtime)
    assert [e.status for e in inbox] == ["processed", "duplicate", "duplicate"]
    assert inbox[1].duplicate_of == inbox[2].duplicate_of == inbox[0].id
    async with runtime.db.sessions() as session:
        events = (await session.execute(select(Event).where(Event.object_id == "100001"))).scalars().all()
    assert len(events) == 1  # processed once


async def test_awkward_values_arrive_signed_through_http(connected, service, runtime, simulator):
    simulator.state.send_event(
        OWNER_ACCOUNT_ID, "client.update", 4242, {"organization": "Tom & Jerry: 50% off, a+b/c é 日本"}
    )
    await asyncio.to_thread(service.settle)
    [delivery] = [d for d in simulator.state.deliveries if d["kind"] == "event"]
    assert delivery["status"] == 200
    [event] = await _inbox(runtime)
    assert event.object_id == "4242"


async def test_reauth_required_tenant_still_has_events_kept(connected, service, runtime, simulator):
    await runtime.tokens.mark_reauth_required(connected.id, "test")
    simulator.state.send_event(OWNER_ACCOUNT_ID, "invoice.sendByEmail", 100001)
    await asyncio.to_thread(service.settle)
    [event] = await _inbox(runtime)
    assert event.event_name == "invoice.sendByEmail"


async def _inbox_count(runtime) -> int:
    async with runtime.db.sessions() as session:
        return (await session.execute(select(func.count()).select_from(InboxEvent))).scalar_one()


def _compact_signature(verifier: str, fields: dict[str, str]) -> str:
    digest = hmac.new(verifier.encode(), json.dumps(fields, separators=(",", ":")).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


async def test_refusals_with_their_status_and_nothing_stored(connected, service, runtime, simulator):
    callbacks = await _callbacks(runtime, connected.id)
    invoice = callbacks["invoice"]
    body, signature = _signed(simulator, invoice, _event())
    fields = json.loads(json.dumps(_event()))
    cases = {
        "unknown key": (
            httpx.post(
                f"{service.base_url}/webhooks/freshbooks/not-a-key",
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-FreshBooks-Hmac-SHA256": signature},
            ),
            404,
        ),
        "missing signature": (_post(service, invoice, body, None), 401),
        "wrong signature": (_post(service, invoice, body, signing.sign("nope", fields)), 401),
        "sorted keys": (
            _post(
                service,
                invoice,
                body,
                signing.sign(
                    simulator.state.callback_verifier(invoice.freshbooks_callback_id), dict(sorted(fields.items()))
                ),
            ),
            401,
        ),
        "compact json": (
            _post(
                service,
                invoice,
                body,
                _compact_signature(simulator.state.callback_verifier(invoice.freshbooks_callback_id), fields),
            ),
            401,
        ),
        "json content type": (_post(service, invoice, body, signature, content_type="application/json"), 415),
        "no content type": (_post(service, invoice, body, signature, content_type=""), 415),
        "malformed": (_post(service, invoice, b"\xff\xfe", signature), 400),
        "no name": (_post(service, invoice, b"object_id=1", signature), 400),
        "other noun": (_post(service, invoice, *_signed(simulator, invoice, _event(noun="client"))), 422),
        "too large": (_post(service, invoice, body + b"&pad=" + b"x" * 70_000, signature), 413),
        "too large, chunked": (
            httpx.post(
                invoice.uri.replace(invoice.uri.split("/webhooks/")[0], service.base_url),
                content=iter([body, b"&pad=", b"x" * 70_000]),
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-FreshBooks-Hmac-SHA256": signature},
            ),
            413,
        ),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, name
        assert set(response.json()) == {"error", "message", "request_id"}, name
        assert "Traceback" not in response.text
    assert "content-length" not in cases["too large, chunked"][0].request.headers
    assert await _inbox_count(runtime) == 0


async def test_unverified_callback_refuses_events_with_403(service, runtime, tenant, simulator):
    simulator.state.pause_deliveries()  # the verification POSTs never arrive
    await registrar.sync_tenant(runtime, tenant)
    callback = (await _callbacks(runtime, tenant.id))["invoice"]
    assert callback.status == CallbackStatus.PENDING_VERIFICATION.value
    body, signature = _signed(simulator, callback, _event())
    response = _post(service, callback, body, signature)
    assert response.status_code == 403
    assert await _inbox_count(runtime) == 0
    simulator.state.resume_deliveries()


async def test_disconnect_deletes_the_callbacks_at_freshbooks(connected, service, runtime, simulator):
    from webhook_service.tenants import onboarding

    tenant, revoke_error = await onboarding.disconnect(runtime, connected.id)
    assert revoke_error is None and tenant.status == TenantStatus.DISCONNECTED.value
    assert simulator.state.list_callbacks(OWNER_ACCOUNT_ID) == []
    assert await _callbacks(runtime, connected.id) == {}


async def test_failed_verification_shows_in_list_and_next_sync_recovers(service, settings, runtime, tenant, simulator):
    runtime.events = ("invoice",)
    settings.callback_verify_attempts = 1
    simulator.state.pause_deliveries()
    assert (await registrar.sync_tenant(runtime, tenant)).created == ["invoice"]
    simulator.state.fail_next(settings.freshbooks_max_attempts, status=503, retry_after="0", paths_prefix="/events/")
    simulator.state.resume_deliveries()
    await asyncio.to_thread(service.settle)

    failed = (await _callbacks(runtime, tenant.id))["invoice"]
    assert failed.status == CallbackStatus.FAILED.value
    assert "503" in failed.last_error and failed.verifier_enc is None

    assert (await registrar.sync_tenant(runtime, tenant)).resent == ["invoice"]
    await asyncio.to_thread(service.settle)
    recovered = (await _callbacks(runtime, tenant.id))["invoice"]
    assert recovered.status == CallbackStatus.VERIFIED.value and recovered.last_error is None
