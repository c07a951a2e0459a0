"""What operators watch: /metrics counts the pipeline, and the backlog gauge tracks due work."""

from __future__ import annotations

import asyncio

import httpx
from conftest import OWNER_ACCOUNT_ID
from prometheus_client.parser import text_string_to_metric_families

from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.inbound import registrar
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.deliveries import backlog


def _scrape(service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{service.base_url}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_inbound_deliveries_latency_and_refreshes(service, runtime, tenant, simulator, sink):
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/hooks", "event_types": ["invoice.*"]})
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    async with runtime.db.sessions() as session:
        callback = next(
            cb for cb in await callback_store.active_for_tenant(session, tenant.id) if cb.event == "invoice"
        )
    before = _scrape(service)

    simulator.state.expire_access_tokens()  # the hydration must refresh first
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "metrics"})
    await asyncio.to_thread(service.settle)
    sink.sink.wait_for(1)
    forged = httpx.post(
        f"{service.base_url}/webhooks/freshbooks/{callback.endpoint_key}",
        content=b"name=invoice.update&object_id=1",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-FreshBooks-Hmac-SHA256": "Zm9yZ2Vk"},
    )
    assert forged.status_code == 401
    after = _scrape(service)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("webhook_service_inbound_accepted_total", kind="event") == 1
    assert delta("webhook_service_inbound_refused_total", reason="bad_signature") == 1
    assert delta("webhook_service_inbound_ingest_seconds_count") == 1
    assert delta("webhook_service_delivery_attempts_total", outcome="2xx") == 1
    assert delta("webhook_service_deliveries_finished_total", status="succeeded") == 1
    assert delta("webhook_service_delivery_attempt_seconds_count") == 1
    assert delta("webhook_service_inbound_to_delivered_seconds_count", origin="webhook") == 1
    assert delta("webhook_service_token_refreshes_total", outcome="ok") == 1
    assert _value(after, "webhook_service_backlog", queue="inbox") == 0
    assert _value(after, "webhook_service_backlog", queue="deliveries") == 0


async def test_backlog_counts_due_deliveries_until_sent(runtime, tenant, sink):
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/hooks"})
    now = utcnow()
    events = [
        build(
            tenant=tenant,
            resource=get_resource("client"),
            freshbooks_event={"name": "client.create", "object_id": str(n)},
            obj=None,
            origin=ORIGIN_WEBHOOK,
            fallback_time=now,
        )
        for n in range(3)
    ]
    async with runtime.db.sessions() as session:
        await emit.stage_many(session, [(event, tenant.id, None) for event in events], now=now)
        await session.commit()
        assert await backlog(session, utcnow()) == (0, 3)
    assert await DeliveryWorker(runtime).run_once() == 3
    async with runtime.db.sessions() as session:
        assert await backlog(session, utcnow()) == (0, 0)
