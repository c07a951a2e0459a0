"""Forwarding to subscribers: signatures, retries on a simulated clock, dead letters, egress safety."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import OWNER_ACCOUNT_ID
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_service.delivery import replay, signing, subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.inbound import registrar
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.sandbox.sink import Reply
from webhook_service.storage.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Subscription


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance_to(self, moment: datetime) -> None:
        self.now = max(self.now, moment)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _subscribe(runtime, url, **fields):
    created = await subscriptions.create(runtime, {"url": url, **fields})
    return created.subscription, created.secret


async def _emit(runtime, tenant, now, object_id="1", name="invoice.update", obj=None):
    resource = get_resource(name.split(".")[0])
    obj = (
        obj
        if obj is not None
        else {
            "id": int(object_id),
            "updated": "2026-11-21 07:00:00",
            "vis_state": 0,
            "amount": {"amount": "10.00", "code": "USD"},
        }
    )
    event = build(
        tenant=tenant,
        resource=resource,
        freshbooks_event={"name": name, "object_id": object_id},
        obj=obj,
        origin=ORIGIN_WEBHOOK,
        fallback_time=now,
    )
    async with runtime.db.sessions() as session:
        assert await emit.stage(session, event, tenant_id=tenant.id, inbox_event_id=None, now=now)
        await session.commit()
    return event


async def _deliveries(runtime, subscription_id=None):
    async with runtime.db.sessions() as session:
        query = select(Delivery).order_by(Delivery.created_at, Delivery.id)
        if subscription_id:
            query = query.where(Delivery.subscription_id == subscription_id)
        return list((await session.execute(query)).scalars())


async def _attempts(runtime, delivery_id):
    async with runtime.db.sessions() as session:
        rows = await session.execute(
            select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.number)
        )
        return list(rows.scalars())


async def _run_until_settled(worker, clock, runtime, limit=20):
    """Advance the simulated clock to each next attempt and run the worker, until nothing is due."""
    for _ in range(limit):
        pending = [d for d in await _deliveries(runtime) if d.status in ("pending", "failed")]
        if not pending:
            return
        clock.advance_to(min(d.next_attempt_at for d in pending))
        await worker.run_once()
    raise AssertionError("deliveries did not settle")


async def test_end_to_end_invoice_update_reaches_the_subscriber_signed(service, runtime, tenant, simulator, sink):
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    subscription, secret = await _subscribe(runtime, f"{sink.base_url}/hooks", event_types=["invoice.*"])
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "please pay"})
    await asyncio.to_thread(service.settle)

    [request] = sink.sink.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == payload["id"]
    assert payload["type"] == "invoice.updated"
    assert payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["tenant_id"], data["account_id"], data["business_id"]) == (tenant.id, "ABC123", 439000)
    assert (data["resource"], data["object_id"], data["origin"]) == ("invoice", str(invoice["id"]), "webhook")
    assert data["freshbooks_event"]["name"] == "invoice.update"
    stored = simulator.state.get_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"])
    obj = data["object"]
    assert obj["notes"] == "please pay" and len(obj["lines"]) == len(stored["lines"]) > 0
    expected_updated = get_resource("invoice").updated_at(stored).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert obj["updated"] == expected_updated and payload["timestamp"] == expected_updated
    assert obj["amount"] == stored["amount"] and isinstance(obj["amount"]["amount"], str)
    await asyncio.to_thread(service.settle)
    assert len(sink.sink.received) == 1  # one POST, not one per retry or per worker
    [delivery] = await _deliveries(runtime)
    assert delivery.status == "succeeded" and delivery.attempts == 1


async def test_fails_three_times_then_succeeds_with_the_same_webhook_id(runtime, tenant, sink, clock):
    subscription, secret = await _subscribe(runtime, f"{sink.base_url}/flaky")
    sink.sink.script(500, Reply(503, {"Retry-After": "1"}), 502, 200)
    await _emit(runtime, tenant, clock.now)
    worker = DeliveryWorker(runtime, clock=clock)
    await _run_until_settled(worker, clock, runtime)

    received = sink.sink.wait_for(4)
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1
    for request in received:
        Webhook(secret).verify(request.body, request.headers)
    [delivery] = await _deliveries(runtime)
    assert (delivery.status, delivery.attempts) == ("succeeded", 4)
    attempts = await _attempts(runtime, delivery.id)
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 503), (3, 502), (4, 200)]
    assert all(a.latency_ms is not None and a.started_at is not None for a in attempts)
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 4 <= gaps[0] <= 6 and 240 <= gaps[1] <= 360 and 1440 <= gaps[2] <= 2160  # 5 s, 5 min, 30 min ±20%


async def test_exhausting_the_schedule_is_dead_and_recover_brings_it_back(runtime, tenant, sink, clock):
    subscription, _ = await _subscribe(runtime, f"{sink.base_url}/down")
    schedule = runtime.settings.retry_schedule
    sink.sink.script(*[500] * len(schedule))
    started = clock.now
    await _emit(runtime, tenant, clock.now)
    await _run_until_settled(DeliveryWorker(runtime, clock=clock), clock, runtime)

    [delivery] = await _deliveries(runtime)
    assert (delivery.status, delivery.attempts) == ("dead", len(schedule))
    assert len(await _attempts(runtime, delivery.id)) == len(schedule)
    assert timedelta(hours=21) < clock.now - started < timedelta(hours=33)  # ~27 h of simulated time
    assert len(sink.sink.received) == len(schedule)

    recovered = await replay.recover(runtime, subscription.id, since=started - timedelta(minutes=1))
    assert recovered == [delivery.id]
    clock.advance_to(datetime.now(UTC))
    await DeliveryWorker(runtime, clock=clock).run_once()
    [delivery] = await _deliveries(runtime)
    assert (delivery.status, delivery.attempts) == ("succeeded", len(schedule) + 1)
    ids = {r.headers["webhook-id"] for r in sink.sink.received}
    assert len(ids) == 1


async def test_410_disables_the_subscription(runtime, tenant, sink, clock):
    subscription, _ = await _subscribe(runtime, f"{sink.base_url}/gone")
    sink.sink.script(410)
    await _emit(runtime, tenant, clock.now, object_id="1")
    await DeliveryWorker(runtime, clock=clock).run_once()
    await _emit(runtime, tenant, clock.now, object_id="2")  # after disabling: no delivery is even created

    after = await subscriptions.get(runtime, subscription.id)
    assert after.enabled is False and "410" in after.disabled_reason
    deliveries = await _deliveries(runtime)
    assert [d.status for d in deliveries] == ["dead"]
    with pytest.raises(replay.ReplayError, match="disabled"):
        await replay.replay(runtime, deliveries[0].id)


async def test_redirects_are_failures_and_not_followed(runtime, tenant, sink, clock):
    await _subscribe(runtime, f"{sink.base_url}/moved")
    sink.sink.script(Reply(307, {"Location": f"{sink.base_url}/elsewhere"}))
    await _emit(runtime, tenant, clock.now)
    await DeliveryWorker(runtime, clock=clock).run_once()
    assert [r.path for r in sink.sink.received] == ["/moved"]
    [delivery] = await _deliveries(runtime)
    assert (delivery.status, delivery.last_status_code) == ("failed", 307)


async def test_retry_after_is_honoured(runtime, tenant, sink, clock):
    await _subscribe(runtime, f"{sink.base_url}/busy")
    sink.sink.script(Reply(429, {"Retry-After": "900"}))
    await _emit(runtime, tenant, clock.now)
    await DeliveryWorker(runtime, clock=clock).run_once()
    [delivery] = await _deliveries(runtime)
    assert delivery.next_attempt_at - clock.now >= timedelta(seconds=900)


async def test_response_body_is_kept_up_to_20000_bytes(runtime, tenant, sink, clock):
    await _subscribe(runtime, f"{sink.base_url}/chatty")
    sink.sink.script(Reply(500, body=b"x" * 50_000))
    await _emit(runtime, tenant, clock.now)
    await DeliveryWorker(runtime, clock=clock).run_once()
    [delivery] = await _deliveries(runtime)
    [attempt] = await _attempts(runtime, delivery.id)
    assert len(attempt.response_body) == 20_000


async def test_rotation_signs_with_both_secrets_during_grace_then_only_the_new(runtime, tenant, sink, clock):
    subscription, old_secret = await _subscribe(runtime, f"{sink.base_url}/rotating")
    rotated = await subscriptions.rotate_secret(runtime, subscription.id)
    new_secret = rotated.secret
    assert new_secret != old_secret
    await _emit(runtime, tenant, clock.now, object_id="1")
    await DeliveryWorker(runtime, clock=clock).run_once()
    [during] = sink.sink.wait_for(1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(old_secret).verify(during.body, during.headers)
    Webhook(new_secret).verify(during.body, during.headers)

    clock.advance_to(clock.now + timedelta(hours=24, minutes=1))
    await _emit(runtime, tenant, clock.now, object_id="2")
    await DeliveryWorker(runtime, clock=clock).run_once()
    after = sink.sink.wait_for(2)[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new_secret).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(after.body, after.headers)


@pytest.mark.parametrize("zone", [UTC, timezone(timedelta(hours=-5))])
def test_signatures_are_the_libraries_for_each_secret(zone):
    """Each secret signs as ``standardwebhooks`` signs (keyed once, copied per message), whatever the
    timestamp's zone; every signature verifies with the library, and only with its own secret."""
    current, previous = signing.generate_secret(), signing.generate_secret().rstrip("=")  # unpadded too
    sent_at = datetime.now(zone)  # the library refuses a timestamp five minutes away from its clock
    for body in ('{"type":"invoice.updated","name":"Ünïcødé"}', '{"pad":"%s"}' % ("x" * 5000)):
        headers = signing.headers([current, previous], "evt_1", sent_at, body)
        expected = [Webhook(secret).sign("evt_1", sent_at.astimezone(UTC), body) for secret in (current, previous)]
        assert headers["webhook-signature"].split(" ") == expected
        assert headers["webhook-timestamp"] == str(int(sent_at.timestamp()))
        for secret in (current, previous):
            Webhook(secret).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(signing.generate_secret()).verify(body, headers)
    with pytest.raises(ValueError):
        signing.headers([signing.SECRET_PREFIX], "evt_1", sent_at, "{}")


async def test_rate_limit_is_enforced_per_second(runtime, tenant, sink, clock):
    subscription, _ = await _subscribe(runtime, f"{sink.base_url}/slow", rate_limit_per_second=2)
    for n in range(5):
        await _emit(runtime, tenant, clock.now, object_id=str(n + 1))
    worker = DeliveryWorker(runtime, clock=clock)
    sent_per_window = []
    for _ in range(3):
        before = len(sink.sink.received)
        await worker.run_once()
        sent_per_window.append(len(sink.sink.received) - before)
        clock.advance_to(clock.now + timedelta(seconds=1))
    assert sent_per_window == [2, 2, 1]
    assert {d.status for d in await _deliveries(runtime)} == {"succeeded"}
    assert all(d.attempts == 1 for d in await _deliveries(runtime))  # deferrals are not attempts


async def test_sustained_failure_disables_the_subscription(runtime, tenant, sink, clock):
    subscription, _ = await _subscribe(runtime, f"{sink.base_url}/broken")
    sink.sink.script(*[500] * 20)
    await _emit(runtime, tenant, clock.now, object_id="1")
    worker = DeliveryWorker(runtime, clock=clock)
    await worker.run_once()
    assert (await subscriptions.get(runtime, subscription.id)).enabled
    clock.advance_to(clock.now + timedelta(hours=runtime.settings.subscription_disable_after_hours, minutes=1))
    await _emit(runtime, tenant, clock.now, object_id="2")
    await worker.run_once()
    after = await subscriptions.get(runtime, subscription.id)
    assert after.enabled is False and "failures" in after.disabled_reason
    assert {d.status for d in await _deliveries(runtime)} == {"dead"}


async def test_a_success_ends_the_failing_streak(runtime, tenant, sink, clock):
    """Failures separated by a success never add up to the disabling streak."""
    subscription, _ = await _subscribe(runtime, f"{sink.base_url}/flaky")
    sink.sink.script(500, 200, 500)
    worker = DeliveryWorker(runtime, clock=clock)
    await _emit(runtime, tenant, clock.now, object_id="1")
    await worker.run_once()  # 500
    assert (await subscriptions.get(runtime, subscription.id)).failing_since == clock.now
    [delivery] = await _deliveries(runtime)
    clock.advance_to(delivery.next_attempt_at)
    await worker.run_once()  # the retry: 200
    assert (await subscriptions.get(runtime, subscription.id)).failing_since is None
    clock.advance_to(clock.now + timedelta(hours=runtime.settings.subscription_disable_after_hours, minutes=1))
    await _emit(runtime, tenant, clock.now, object_id="2")
    await worker.run_once()  # 500: a new streak starts now, nothing to disable
    after = await subscriptions.get(runtime, subscription.id)
    assert after.enabled and after.failing_since == clock.now


async def test_a_crashed_workers_claim_is_retried_after_its_lease(runtime, tenant, sink, clock):
    from webhook_service.storage import deliveries as claims

    await _subscribe(runtime, f"{sink.base_url}/x")
    await _emit(runtime, tenant, clock.now)
    async with runtime.db.sessions() as session:  # a worker claims, then dies before sending
        claimed = await claims.claim_deliveries(
            session, owner="crashed", now=clock.now, limit=10, lease=timedelta(seconds=60)
        )
    assert len(claimed) == 1
    worker = DeliveryWorker(runtime, clock=clock)
    assert await worker.run_once() == 0  # still leased: nobody else may send it
    clock.advance_to(clock.now + timedelta(seconds=61))
    assert await worker.run_once() == 1
    assert len(sink.sink.received) == 1


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),  # a name that resolves to a private address
    ],
)
async def test_egress_to_internal_addresses_is_refused_and_recorded(settings, tenant, sink, clock, host, reason):
    from webhook_service.runtime import Runtime
    from webhook_service.storage.columns import utcnow

    guarded = settings.model_copy(update={"outbound_allowed_cidrs": ""})
    guarded.__dict__.pop("allowed_cidrs", None)
    async with Runtime.open(guarded, migrate_schema=False) as runtime:
        async with runtime.db.sessions() as session:  # saved before a DNS change, or by hand
            session.add(
                Subscription(
                    id="sub_internal",
                    url=f"http://{host}:{sink.port}/x",
                    event_types='["*"]',
                    description="",
                    enabled=True,
                    rate_window_count=0,
                    secret_enc=runtime.box.encrypt("whsec_" + "A" * 43),
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            await session.commit()
        await _emit(runtime, tenant, clock.now)
        await DeliveryWorker(runtime, clock=clock).run_once()
        [delivery] = await _deliveries(runtime)
        [attempt] = await _attempts(runtime, delivery.id)
    assert delivery.status == DeliveryStatus.FAILED.value
    assert attempt.status_code is None
    assert attempt.error.startswith("egress refused") and reason in attempt.error
    assert sink.sink.received == []


async def test_subscription_urls_are_checked_when_saved(runtime):
    for url in (
        "ftp://example.com/x",
        "http://10.0.0.1/hook",
        "http://user:pw@example.com/",
        "not a url",
        "http://xn--/",
    ):
        with pytest.raises(subscriptions.SubscriptionError):
            await subscriptions.create(runtime, {"url": url})
    for patterns in (["invoices.*"], ["invoice.*\n"], [], ["*.updated"]):
        with pytest.raises(subscriptions.SubscriptionError, match="event_types"):
            await subscriptions.create(runtime, {"url": "https://example.com/h", "event_types": patterns})


async def test_only_matching_subscriptions_get_the_event(runtime, tenant, sink, clock, simulator):
    from webhook_service.tenants import onboarding

    other_tenant = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439001)
    wants_all, _ = await _subscribe(runtime, f"{sink.base_url}/all")
    wants_invoices, _ = await _subscribe(runtime, f"{sink.base_url}/inv", event_types=["invoice.*"])
    wants_exact, _ = await _subscribe(runtime, f"{sink.base_url}/exact", event_types=["invoice.created"])
    wants_clients, _ = await _subscribe(runtime, f"{sink.base_url}/cli", event_types=["client.*"])
    other_scope, _ = await _subscribe(runtime, f"{sink.base_url}/other", tenant_id=other_tenant.id)
    disabled, _ = await _subscribe(runtime, f"{sink.base_url}/off", enabled=False)
    await _emit(runtime, tenant, clock.now, name="invoice.update")
    by_subscription = {d.subscription_id for d in await _deliveries(runtime)}
    assert by_subscription == {wants_all.id, wants_invoices.id}
    assert not {wants_exact.id, wants_clients.id, other_scope.id, disabled.id} & by_subscription


async def test_event_types_and_object_states(service, runtime, tenant, simulator, sink):
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    subscription, secret = await _subscribe(runtime, f"{sink.base_url}/all")
    invoice = simulator.state.create_object(OWNER_ACCOUNT_ID, "invoice")
    await asyncio.to_thread(service.settle)
    simulator.state.send_event(OWNER_ACCOUNT_ID, "invoice.sendByEmail", invoice["id"])
    await asyncio.to_thread(service.settle)
    simulator.state.delete_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"])
    await asyncio.to_thread(service.settle)
    project = simulator.state.create_object(OWNER_ACCOUNT_ID, "project")
    await asyncio.to_thread(service.settle)
    simulator.state.delete_object(OWNER_ACCOUNT_ID, "project", project["id"])  # projects vanish (404)
    await asyncio.to_thread(service.settle)

    payloads = [Webhook(secret).verify(r.body, r.headers) for r in sink.sink.wait_for(5)]
    assert [p["type"] for p in payloads] == [
        "invoice.created",
        "invoice.sent_by_email",
        "invoice.deleted",
        "project.created",
        "project.deleted",
    ]
    deleted_invoice = payloads[2]["data"]["object"]
    assert deleted_invoice["vis_state"] == 1 and deleted_invoice["lines"]
    assert payloads[3]["data"]["object"]["updated_at"].endswith("Z")
    assert payloads[4]["data"]["object"] is None
    assert payloads[4]["data"]["object_id"] == str(project["id"])


async def test_events_of_a_tenant_waiting_for_reauthorization_flow_after_reconnect(
    service, runtime, tenant, simulator, sink
):
    from webhook_service.tenants import onboarding

    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    await _subscribe(runtime, f"{sink.base_url}/all")
    await runtime.tokens.mark_reauth_required(tenant.id, "customer revoked access")
    client = simulator.state.create_object(OWNER_ACCOUNT_ID, "client")
    await asyncio.to_thread(service.settle)
    assert sink.sink.received == []
    async with runtime.db.sessions() as session:
        assert (await session.execute(select(Event).where(Event.origin != "service"))).first() is None

    await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439000)  # reconnect
    await asyncio.to_thread(service.settle)
    [request] = sink.sink.wait_for(1)
    assert json.loads(request.body)["data"]["object_id"] == str(client["id"])


async def test_shutdown_gives_back_the_leases_of_deliveries_in_flight(connected, service, runtime, simulator, sink):
    """A rolling restart must not leave an event waiting a whole lease for someone to send it."""
    await _subscribe(runtime, f"{sink.base_url}/held", event_types=["invoice.*"])
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    sink.sink.hold()
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "in flight"})
    await asyncio.to_thread(sink.sink.wait_for, 1)  # the POST reached the subscriber, unanswered
    [delivery] = await _deliveries(runtime)
    assert delivery.lease_owner is not None and delivery.status == "pending"

    await asyncio.to_thread(service.server.stop)  # SIGTERM's path: the app's shutdown
    [delivery] = await _deliveries(runtime)  # cancelled after the grace period, its lease given back
    assert delivery.lease_owner is None and delivery.lease_until is None and delivery.status == "pending"
    sink.sink.release()
    assert await DeliveryWorker(runtime).run_once() == 1  # due at once, not after DELIVERY_LEASE_SECONDS
    [delivery] = await _deliveries(runtime)
    assert delivery.status == "succeeded"
    assert len({r.headers["webhook-id"] for r in sink.sink.received}) == 1
