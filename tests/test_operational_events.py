"""Operational events: the service's own state changes, delivered through the same subscriptions,
signed and retried the same way, each once per change, and never to a subscription to ``*``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OWNER_ACCOUNT_ID, OWNER_BUSINESS_ID
from standardwebhooks.webhooks import Webhook
from test_delivery import Clock, _emit, _run_until_settled
from test_tokens import _expire_in_db

from webhook_service.backfill.sweep import backfill_tenant
from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.inbound import registrar
from webhook_service.sandbox.sink import Reply
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import events as event_store
from webhook_service.storage.models import CallbackStatus
from webhook_service.tenants import onboarding


async def _subscribe(runtime, url, *patterns):
    created = await subscriptions.create(runtime, {"url": url, "event_types": list(patterns)})
    return created.subscription, created.secret


def _bodies(sink, path):
    return [json.loads(r.body) for r in sink.sink.received if r.path == path]


async def _deliver_all(runtime):
    """Send everything due now, until nothing is left to claim."""
    worker = DeliveryWorker(runtime)
    while await worker.run_once():
        pass


async def test_a_refused_refresh_token_is_announced_once_and_so_is_the_reconnect(runtime, tenant, simulator, sink):
    ops, secret = await _subscribe(runtime, f"{sink.base_url}/ops", "tenant.*")
    await _subscribe(runtime, f"{sink.base_url}/all", "*")
    refresh = runtime.box.decrypt(tenant.refresh_token_enc)
    await runtime.oauth.revoke(refresh)  # the customer revoked the app in FreshBooks
    await _expire_in_db(runtime, tenant.id)
    for _ in range(3):  # every later call finds the tenant waiting: no second event
        with pytest.raises(TenantUnavailable):
            await runtime.freshbooks.list_page(tenant, "client")
    await _deliver_all(runtime)

    [request] = [r for r in sink.sink.received if r.path == "/ops"]
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "tenant.reauth_required"
    data = body["data"]
    assert (data["tenant_id"], data["origin"], data["resource"], data["object_id"]) == (
        tenant.id,
        "service",
        "tenant",
        tenant.id,
    )
    assert data["reason"].startswith("invalid_grant")
    assert data["reconnect_url"] == f"{runtime.settings.public_base_url}/oauth/freshbooks/start?business_id=439000"
    assert data["business_id"] == OWNER_BUSINESS_ID and data["account_id"] == OWNER_ACCOUNT_ID

    await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), OWNER_BUSINESS_ID)
    await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), OWNER_BUSINESS_ID)
    await _deliver_all(runtime)
    received = _bodies(sink, "/ops")
    assert [b["type"] for b in received] == ["tenant.reauth_required", "tenant.reconnected"]
    assert received[1]["data"]["previous_status"] == "reauth_required"
    assert received[1]["data"]["sequence"] > received[0]["data"]["sequence"]
    assert _bodies(sink, "/all") == []  # '*' means every FreshBooks event, never an operational one


async def test_a_disconnect_is_announced(runtime, tenant, sink):
    await _subscribe(runtime, f"{sink.base_url}/ops", "tenant.disconnected")
    await onboarding.disconnect(runtime, tenant.id)
    await _deliver_all(runtime)
    [body] = _bodies(sink, "/ops")
    assert body["type"] == "tenant.disconnected"
    assert body["data"]["reason"] == "disconnected by operator" and body["data"]["revoked"] is True


async def test_a_410_tells_the_other_subscriptions_that_ask_never_the_disabled_one(runtime, tenant, sink):
    gone, _ = await _subscribe(runtime, f"{sink.base_url}/gone", "invoice.*", "subscription.*")
    watcher, secret = await _subscribe(runtime, f"{sink.base_url}/watcher", "subscription.disabled")
    await _subscribe(runtime, f"{sink.base_url}/other", "tenant.*")  # asks for something else
    sink.sink.script(410)
    await _emit(runtime, tenant, Clock().now)
    await _deliver_all(runtime)

    [request] = [r for r in sink.sink.received if r.path == "/watcher"]
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "subscription.disabled"
    assert body["data"]["subscription_id"] == gone.id and "410" in body["data"]["reason"]
    assert body["data"]["tenant_id"] is None  # a subscription to every tenant
    assert [r.path for r in sink.sink.received] == ["/gone", "/watcher"]

    await subscriptions.disable(runtime, gone.id, "again")  # already disabled: no second event
    await _deliver_all(runtime)
    assert len(_bodies(sink, "/watcher")) == 1


async def test_an_exhausted_delivery_is_announced_as_dead(runtime, tenant, sink):
    clock = Clock()
    down, _ = await _subscribe(runtime, f"{sink.base_url}/down", "*")
    await _subscribe(runtime, f"{sink.base_url}/ops", "delivery.dead")
    schedule = runtime.settings.retry_schedule
    sink.sink.script(*[500] * len(schedule))
    event = await _emit(runtime, tenant, clock.now)
    await _run_until_settled(DeliveryWorker(runtime, clock=clock), clock, runtime)

    [body] = _bodies(sink, "/ops")
    assert body["type"] == "delivery.dead"
    data = body["data"]
    assert (data["event_id"], data["event_type"], data["subscription_id"]) == (event.id, "invoice.updated", down.id)
    assert (data["attempts"], data["last_status_code"], data["last_error"]) == (len(schedule), 500, "HTTP 500")
    assert data["tenant_id"] == tenant.id


async def test_a_failed_verification_and_a_replaced_callback_are_announced(
    service, settings, runtime, tenant, simulator, sink
):
    runtime.events = ("invoice",)
    settings.callback_verify_attempts = 1
    await _subscribe(runtime, f"{sink.base_url}/ops", "callback.*")
    simulator.state.pause_deliveries()
    await registrar.sync_tenant(runtime, tenant)
    simulator.state.fail_next(settings.freshbooks_max_attempts, status=503, retry_after="0", paths_prefix="/events/")
    simulator.state.resume_deliveries()
    await asyncio.to_thread(service.settle)
    await _deliver_all(runtime)
    [failed] = _bodies(sink, "/ops")
    assert failed["type"] == "callback.failed" and "503" in failed["data"]["reason"]
    assert failed["data"]["event"] == "invoice" and "uri" not in failed["data"]  # its URI is a secret

    await registrar.sync_tenant(runtime, tenant)  # verifies it again
    await asyncio.to_thread(service.settle)
    async with runtime.db.sessions() as session:
        [callback] = await callback_store.active_for_tenant(session, tenant.id)
    assert callback.status == CallbackStatus.VERIFIED.value
    simulator.state.drop_callback(callback.freshbooks_callback_id)  # FreshBooks forgot it
    assert (await registrar.sync_tenant(runtime, tenant)).replaced == ["invoice"]
    await asyncio.to_thread(service.settle)
    await _deliver_all(runtime)
    replaced = _bodies(sink, "/ops")[1:]
    assert [b["type"] for b in replaced] == ["callback.replaced"]
    data = replaced[0]["data"]
    assert data["callback_id"] == callback.id and data["replacement_callback_id"] != callback.id

    async with runtime.db.sessions() as session:
        [replacement] = await callback_store.active_for_tenant(session, tenant.id)
    simulator.state.disable_callback(replacement.freshbooks_callback_id)  # FreshBooks gave up on its URI
    assert (await registrar.sync_tenant(runtime, tenant)).resent == ["invoice"]
    await asyncio.to_thread(service.settle)
    await _deliver_all(runtime)
    disabled = _bodies(sink, "/ops")[2:]
    assert [(b["type"], b["data"]["callback_id"]) for b in disabled] == [("callback.failed", replacement.id)]
    assert "disabled" in disabled[0]["data"]["reason"]


async def test_a_sweep_that_recovers_versions_announces_how_many_per_resource(runtime, tenant, simulator, sink):
    await _subscribe(runtime, f"{sink.base_url}/ops", "backfill.recovered")
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 3)
    simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 2)
    since = datetime.now(UTC) - timedelta(days=61)  # seeded objects are up to 60 days old
    await backfill_tenant(runtime, tenant, since=since, resources=["client", "invoice", "item"])
    await backfill_tenant(runtime, tenant, since=since, resources=["client", "invoice", "item"])  # nothing new
    await _deliver_all(runtime)
    [body] = _bodies(sink, "/ops")
    assert body["data"]["recovered"] == {"client": 3, "invoice": 2} and body["data"]["total"] == 5


async def test_operational_events_are_listed_like_any_other(runtime, tenant):
    await onboarding.disconnect(runtime, tenant.id)
    async with runtime.db.sessions() as session:
        listed = await event_store.list_events(session, origin="service")
    assert [(e.type, e.origin, e.tenant_id) for e in listed] == [("tenant.disconnected", "service", tenant.id)]


async def test_sequences_increase_per_object(runtime, tenant):
    first = await _emit(runtime, tenant, Clock().now, object_id="7")
    later = Clock().now + timedelta(seconds=1)
    second = await _emit(
        runtime, tenant, later, object_id="7", obj={"id": 7, "updated": "2026-11-21 07:00:01", "vis_state": 0}
    )
    other = await _emit(runtime, tenant, later, object_id="8")
    async with runtime.db.sessions() as session:
        stored = {e.id: json.loads(e.payload) for e in await event_store.list_events(session)}
    assert stored[first.id]["data"]["sequence"] == 1
    assert stored[second.id]["data"]["sequence"] == 2
    assert stored[other.id]["data"]["sequence"] == 1


async def test_an_operator_disabling_a_subscription_is_announced_once(runtime, sink):
    target, _ = await _subscribe(runtime, f"{sink.base_url}/target", "*", "subscription.*")
    await _subscribe(runtime, f"{sink.base_url}/watcher", "subscription.*")
    await subscriptions.modify(runtime, target.id, {"enabled": False})
    await subscriptions.modify(runtime, target.id, {"enabled": False, "description": "still off"})
    await _deliver_all(runtime)
    [body] = _bodies(sink, "/watcher")
    assert (body["data"]["subscription_id"], body["data"]["reason"]) == (target.id, "disabled by an operator")
    assert _bodies(sink, "/target") == []
    assert (await subscriptions.get(runtime, target.id)).disabled_reason == "disabled by an operator"


async def test_deliveries_dying_in_one_batch_are_each_announced(runtime, tenant, sink):
    runtime.settings.delivery_retry_jitter = 0  # the three stay in step: every attempt is one batch
    clock = Clock()
    await _subscribe(runtime, f"{sink.base_url}/down", "*")
    await _subscribe(runtime, f"{sink.base_url}/ops", "delivery.dead")
    sink.sink.respond(lambda path, body: Reply(500) if path == "/down" else None)
    events = [await _emit(runtime, tenant, clock.now, object_id=str(n)) for n in (1, 2, 3)]
    await _run_until_settled(DeliveryWorker(runtime, clock=clock), clock, runtime)

    bodies = _bodies(sink, "/ops")
    assert sorted(b["data"]["event_id"] for b in bodies) == sorted(e.id for e in events)
    assert len({b["data"]["delivery_id"] for b in bodies}) == 3
    assert all(b["data"]["sequence"] == 1 for b in bodies)  # each about its own delivery
