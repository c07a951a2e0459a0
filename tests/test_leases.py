"""A lease is a promise: leased work starts at once, its writes are fenced, and a stop gives it back.

Each race here is made on purpose: a subscriber slower than the leases with more work queued than
can run at once, a lease taken over while its first holder is still sending, a SIGTERM while
deliveries are in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from conftest import OWNER_ACCOUNT_ID, make_settings
from processes import accepted, deployment, wait_until, webhook_ids_by_object
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from webhook_service.core.metrics import LEASES_LOST
from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Delivery, DeliveryAttempt, DeliveryStatus, InboxEvent

#: The shortest leases the settings allow, a short timeout, and room for many sends at once.
SHORT_LEASES: dict[str, object] = {
    "processor_lease_seconds": 5,
    "delivery_lease_seconds": 5,
    "delivery_timeout": 3,
    "delivery_concurrency": 64,
    "delivery_poll_interval": 0.1,
}


@pytest.fixture
def settings(database_url, simulator, service_socket):
    return make_settings(database_url, simulator, service_socket, **SHORT_LEASES)


async def _queue(runtime: Runtime, tenant, count: int) -> None:
    """``count`` events for one subscriber, committed at once: a backlog far over the concurrency."""
    now = utcnow()
    resource = get_resource("invoice")
    events = [
        build(
            tenant=tenant,
            resource=resource,
            freshbooks_event={"name": "invoice.update", "object_id": str(n)},
            obj={"id": n, "updated": "2026-11-21 07:00:00", "vis_state": 0},
            origin=ORIGIN_WEBHOOK,
            fallback_time=now,
        )
        for n in range(1, count + 1)
    ]
    async with runtime.db.sessions() as session:
        assert all(await emit.stage_many(session, [(e, tenant.id, None) for e in events], now=now))
        await session.commit()


async def _statuses(runtime: Runtime) -> Counter[str]:
    async with runtime.db.sessions() as session:
        rows = await session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return Counter({status: count for status, count in rows.all()})


async def _attempt_counts(runtime: Runtime) -> Counter[int]:
    """How many deliveries have 1, 2, ... attempts recorded."""
    async with runtime.db.sessions() as session:
        rows = await session.execute(
            select(func.count()).select_from(DeliveryAttempt).group_by(DeliveryAttempt.delivery_id)
        )
        return Counter(count for (count,) in rows.all())


async def test_a_slow_subscriber_gets_every_delivery_exactly_once(settings, runtime, tenant, sink):
    """300 queued, 2 s per answer, leases of 5 + 4 s, two processes' workers claiming in four loops
    each (sharing each process's room and its outcome commits): before, a worker claimed 200 while
    64 could run, and the rest's leases ran out while they waited (a row that waits even one round
    of answers is left 2 s to send, and times out).

    A send claimed fresh has 4 s for its 2 s answer: the margin a loaded machine needs (with 3 s,
    a run beside the rest of the suite once saw twelve fresh sends time out and go twice)."""
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/slow"})
    await _queue(runtime, tenant, 300)
    sink.sink.slow(2.0)
    roomier = settings.model_copy(update={"delivery_timeout": 4})
    async with (
        Runtime.open(roomier, migrate_schema=False) as first,
        Runtime.open(roomier, migrate_schema=False) as second,
    ):
        workers = [
            asyncio.create_task(DeliveryWorker(rt).run_forever(take_handovers=True, loops=4)) for rt in (first, second)
        ]
        try:
            await asyncio.to_thread(sink.sink.wait_for, 300, 120)
            deadline = asyncio.get_running_loop().time() + 60
            while (await _statuses(runtime))[DeliveryStatus.SUCCEEDED.value] < 300:
                assert asyncio.get_running_loop().time() < deadline, await _statuses(runtime)
                await asyncio.sleep(0.1)  # polling the database for the condition, not a delay
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    ids = Counter(request.headers["webhook-id"] for request in sink.sink.received)
    assert len(ids) == 300
    assert [webhook_id for webhook_id, seen in ids.items() if seen > 1] == []
    assert await _attempt_counts(runtime) == Counter({1: 300})


async def test_a_write_whose_lease_was_taken_over_changes_nothing(settings, runtime, tenant, sink):
    """A first worker is still sending when its lease runs out and a second takes the delivery: the
    subscriber answers both, but only the lease holder's attempt is recorded; the other is counted."""
    from test_delivery import Clock

    await subscriptions.create(runtime, {"url": f"{sink.base_url}/held"})
    await _queue(runtime, tenant, 1)
    clock = Clock()  # after the queueing: the delivery is due
    sink.sink.hold()
    first = asyncio.create_task(DeliveryWorker(runtime, clock=clock).run_once())
    await asyncio.to_thread(sink.sink.wait_for, 1)
    clock.now += timedelta(seconds=60)  # the first lease (5 + 3 s) is long gone
    lost_before = LEASES_LOST.labels(kind="delivery")._value.get()
    second = asyncio.create_task(DeliveryWorker(runtime, clock=clock).run_once())
    await asyncio.to_thread(sink.sink.wait_for, 2)
    sink.sink.release()
    assert await asyncio.gather(first, second) == [1, 1]
    assert LEASES_LOST.labels(kind="delivery")._value.get() == lost_before + 1
    [delivery] = [d async for d in _all_deliveries(runtime)]
    assert delivery.status == DeliveryStatus.SUCCEEDED.value and delivery.attempts == 1
    assert await _attempt_counts(runtime) == Counter({1: 1})


async def test_a_fence_keeps_each_row_only_under_its_own_token(runtime, tenant, sink):
    """One statement fences a batch leased under several tokens (hand-overs, claims): a row held
    under one of them that another of them now leases is lost, though its lease's token is in the batch."""
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/x"})
    await _queue(runtime, tenant, 3)
    first, second, third = sorted([d.id async for d in _all_deliveries(runtime)])
    until = utcnow() + timedelta(minutes=5)
    async with runtime.db.sessions() as session:
        for delivery_id, owner in ((first, "me.a"), (second, "me.b"), (third, "me.b")):
            await session.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(lease_owner=owner, lease_until=until)
            )
        await session.commit()
    lost_before = LEASES_LOST.labels(kind="delivery")._value.get()
    async with runtime.db.sessions() as session:
        kept = await claims.fence(session, Delivery, {first: "me.a", second: "me.a", third: "me.b"})
        await session.rollback()
    assert kept == {first, third}
    assert LEASES_LOST.labels(kind="delivery")._value.get() == lost_before + 1


async def _all_deliveries(runtime: Runtime):
    async with runtime.db.sessions() as session:
        for delivery in (await session.execute(select(Delivery))).scalars():
            yield delivery


async def test_an_attempt_number_is_recorded_once(runtime, tenant, sink):
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/x"})
    await _queue(runtime, tenant, 1)
    [delivery] = [d async for d in _all_deliveries(runtime)]
    row = {"delivery_id": delivery.id, "number": 1, "started_at": utcnow()}
    async with runtime.db.sessions() as session:
        session.add(DeliveryAttempt(**row))
        await session.commit()
    with pytest.raises(IntegrityError):
        async with runtime.db.sessions() as session:
            session.add(DeliveryAttempt(**row))
            await session.commit()


def _one_invoice_event(tenant, now):  # type: ignore[no-untyped-def]
    return build(
        tenant=tenant,
        resource=get_resource("invoice"),
        freshbooks_event={"name": "invoice.update", "object_id": "1"},
        obj={"id": 1, "updated": "2026-11-21 07:00:00", "vis_state": 0},
        origin=ORIGIN_WEBHOOK,
        fallback_time=now,
    )


async def test_no_more_deliveries_are_handed_over_than_can_start(settings, runtime, tenant, sink):
    """One event for five subscribers with room for two sends: two are leased and handed over at
    the commit, the other three wait unleased for a claim (no lease runs while nothing sends)."""
    runtime.delivery_capacity.limit = 2
    for n in range(5):
        await subscriptions.create(runtime, {"url": f"{sink.base_url}/{n}"})
    handed: list[object] = []
    runtime.signals.delivery_lane.attach(handed.extend, lease=timedelta(seconds=8), capacity=runtime.delivery_capacity)
    now = utcnow()
    event = _one_invoice_event(tenant, now)
    granted = []

    def lease(count: int):  # type: ignore[no-untyped-def]
        granted.append(runtime.signals.delivery_lane.lease(now, count))
        return granted[-1]

    async with runtime.db.sessions() as session:
        _, items, waiting = await emit.stage_leased(session, [(event, tenant.id, None)], now=now, lease=lease)
        await session.commit()
    [grant] = granted
    assert grant is not None and grant.count == 2 and waiting == 3
    runtime.signals.delivery_lane.hand_over(grant, emit.handed(items))
    leased = [d async for d in _all_deliveries(runtime) if d.lease_owner is not None]
    assert len(handed) == len(leased) == 2 and runtime.delivery_capacity.room == 0
    assert {d.lease_owner for d in leased} == {grant.token}


async def test_a_commit_leaves_the_room_it_does_not_need_to_a_claim(settings, runtime, tenant, sink):
    """The room is asked for once the deliveries are counted: a claim meanwhile (a retry, a
    strict-order delivery the commit leaves for one) finds the rest. Asked for all of it before the
    transaction, as it was, such a claim was turned away by every commit in a row (2.1 s seen)."""
    for n in range(3):
        await subscriptions.create(runtime, {"url": f"{sink.base_url}/{n}"})
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/ordered", "strict_order": True})
    capacity = runtime.delivery_capacity
    lane = runtime.signals.delivery_lane
    lane.attach(lambda items: None, lease=timedelta(seconds=8), capacity=capacity)
    now = utcnow()
    event = _one_invoice_event(tenant, now)
    room_for_claims: list[int] = []

    def lease(count: int):  # type: ignore[no-untyped-def]
        grant = lane.lease(now, count)
        room_for_claims.append(capacity.reserve_for_claim(capacity.limit))  # a claim, while the commit runs
        return grant

    async with runtime.db.sessions() as session:
        _, items, waiting = await emit.stage_leased(session, [(event, tenant.id, None)], now=now, lease=lease)
        await session.commit()
    assert len(items) == 3 and waiting == 1  # the strict-order delivery waits for the claim
    assert room_for_claims == [capacity.limit - 3]


async def test_a_fetch_that_would_outlive_its_lease_is_abandoned_in_time(runtime, tenant, simulator):
    """FreshBooks says "retry after 30 s" to an event whose lease lasts 5: the processor does not
    wait past the lease (another process would take the event meanwhile); it gives the fetch up a
    quarter of the lease early and schedules a retry, its lease given back."""
    from webhook_service.normalize.processor import InboxProcessor
    from webhook_service.storage import callbacks as callback_store
    from webhook_service.storage import inbox

    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    await registrar_sync(runtime, tenant)
    async with runtime.db.sessions() as session:
        [callback] = [c for c in await callback_store.active_for_tenant(session, tenant.id) if c.event == "invoice"]
        fields = {"name": "invoice.update", "object_id": str(invoice["id"])}
        body = f"name=invoice.update&object_id={invoice['id']}".encode()
        arrival = inbox.Arrival(callback.id, tenant.id, fields, body, {}, utcnow())
        await inbox.record_many(session, [arrival], dedupe_window=timedelta(minutes=5))
        await session.commit()
    simulator.state.fail_next(5, 429, "30", f"/accounting/account/{OWNER_ACCOUNT_ID}/invoices")
    simulator.state.reset_logs()

    assert await InboxProcessor(runtime).run_once() == 1
    finished = utcnow()
    async with runtime.db.sessions() as session:
        [row] = (await session.execute(select(InboxEvent))).scalars().all()
    assert row.status == "pending" and row.attempts == 1 and row.lease_owner is None
    assert "time left" in (row.last_error or "")
    assert row.next_attempt_at is not None and row.next_attempt_at > finished
    fetches = [r for r in simulator.state.requests if "/invoices/" in r["path"]]
    assert len(fetches) == 1  # the 30 s wait would outlive the lease: no second try under it


async def registrar_sync(runtime: Runtime, tenant) -> None:
    from webhook_service.inbound import registrar

    report = await registrar.sync_tenant(runtime, tenant)
    assert report.error is None


@pytest.mark.slow
def test_sigterm_mid_burst_leaves_no_lease_held_by_the_stopped_process(database_url, simulator, sink, tmp_path):
    """Long leases, so anything the stopped process kept would wait a minute or more: after SIGTERM
    no row is leased, and a new process delivers everything at once."""
    settings = {"processor_lease_seconds": 300, "delivery_lease_seconds": 300, "shutdown_grace_seconds": 1}
    with deployment(database_url, simulator, sink, tmp_path, **settings) as running:
        ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 80)]
        sink.sink.hold()  # deliveries stay in flight, the rest queue behind them
        victim = running.first

        def stop_mid_burst(count: int) -> None:
            if count == 50:
                victim.stop()  # SIGTERM; returns once the process has exited

        statuses = running.sender.stream(((running.base_url, i) for i in ids), on_accepted=stop_mid_burst)
        acknowledged = accepted(statuses)
        # The stop lets requests already on their way finish, so more than 50 may be acknowledged;
        # what makes it mid-burst is the work in flight: deliveries held at the subscriber.
        assert victim.popen.returncode is not None and len(acknowledged) >= 50
        assert sink.sink.received, "deliveries must have been in flight when the stop came"
        assert asyncio.run(_leased_rows(database_url)) == (0, 0)
        sink.sink.release()

        running.restart("service-2")
        received = sink.sink.wait_until(
            lambda got: acknowledged <= webhook_ids_by_object(got).keys(), 40, "every acknowledged event"
        )
        assert acknowledged <= webhook_ids_by_object(received).keys()
        wait_until(lambda: running.admin.all_succeeded(len(acknowledged)), 40, "every delivery to succeed")


async def _leased_rows(database_url: str) -> tuple[int, int]:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            counts = []
            for model in (InboxEvent, Delivery):
                query = select(func.count()).select_from(model).where(model.lease_owner.is_not(None))
                counts.append((await session.execute(query)).scalar_one())
        return counts[0], counts[1]
    finally:
        await db.dispose()
