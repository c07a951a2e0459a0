"""Object versions are content: every state reaches the subscriber, each state exactly once.

FreshBooks stamps ``updated`` to the second; the simulator's frozen clock (``same_second``) makes
two changes of one object share that second on purpose, as an invoice sent and then paid does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from alembic import command
from conftest import ON_POSTGRES, OWNER_ACCOUNT_ID
from sqlalchemy import func, select, text
from standardwebhooks.webhooks import Webhook

from webhook_service.backfill import sweep
from webhook_service.delivery import subscriptions
from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.normalize import emit
from webhook_service.normalize.events import build, normalize_object
from webhook_service.normalize.versions import content_version
from webhook_service.storage import ledger, migrate
from webhook_service.storage.database import Database
from webhook_service.storage.models import Event, InboxEvent, InboxStatus, ObjectVersion

SENT = {"status": 2, "v3_status": "sent"}
PAID = {"status": 4, "v3_status": "paid"}
SINCE = timedelta(days=61)  # seeded objects were last changed within 60 days


def _events(sink, secret) -> list[dict]:
    return [Webhook(secret).verify(r.body, r.headers) for r in sink.sink.received]


def _by_object(payloads: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for payload in payloads:
        found.setdefault(payload["data"]["object_id"], []).append(payload)
    return found


async def _count(runtime, model) -> int:
    async with runtime.db.sessions() as session:
        return (await session.execute(select(func.count()).select_from(model))).scalar_one()


async def test_sent_then_paid_inside_one_second_reaches_the_subscriber_by_webhook(
    service, runtime, connected, simulator, sink
):
    state = simulator.state
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/invoices"})
    ids = [str(invoice["id"]) for invoice in state.seed(OWNER_ACCOUNT_ID, "invoice", 15)]
    with state.same_second() as second:
        for object_id in ids:
            state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, SENT)
        await asyncio.to_thread(service.settle)  # the service fetched every invoice in its sent state
        assert len(sink.sink.received) == 15
        for object_id in ids:
            state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, PAID)
        await asyncio.to_thread(service.settle)

    stamp = second.strftime("%Y-%m-%dT%H:%M:%SZ")
    events = _by_object(_events(sink, created.secret))
    assert set(events) == set(ids)
    for object_id in ids:
        sent, paid = events[object_id]  # two states, in the order they happened
        assert (sent["data"]["object"]["v3_status"], paid["data"]["object"]["v3_status"]) == ("sent", "paid")
        assert sent["data"]["object"]["updated"] == paid["data"]["object"]["updated"] == stamp
        assert sent["timestamp"] == paid["timestamp"] == stamp
        assert sent["data"]["version"] != paid["data"]["version"]


async def test_the_sweep_alone_heals_a_same_second_state_whose_webhook_was_dropped(
    service, runtime, connected, simulator, sink
):
    state = simulator.state
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/invoices"})
    ids = [str(invoice["id"]) for invoice in state.seed(OWNER_ACCOUNT_ID, "invoice", 15)]
    since = datetime.now(UTC) - timedelta(seconds=5)
    with state.same_second():
        for object_id in ids:
            state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, SENT)
        await asyncio.to_thread(service.settle)
        state.delivery_drop_rate = 1.0  # FreshBooks loses every "paid" webhook
        for object_id in ids:
            state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, PAID)
        state.flush_deliveries()
        state.delivery_drop_rate = 0.0

    report = await sweep.backfill_tenant(runtime, connected, since=since, resources=["invoice"])
    [part] = report.resources
    assert (part.scanned, part.known, part.emitted) == (15, 0, 15)
    await asyncio.to_thread(service.settle)
    events = _by_object(_events(sink, created.secret))
    for object_id in ids:
        assert [e["data"]["origin"] for e in events[object_id]] == ["webhook", "backfill"]
        last = events[object_id][-1]
        assert last["type"] == "invoice.updated" and last["data"]["object"]["v3_status"] == "paid"

    again = await sweep.backfill_tenant(runtime, connected, since=since, resources=["invoice"])
    assert (again.resources[0].known, again.resources[0].emitted) == (15, 0)


async def test_one_state_seen_by_webhook_and_by_the_sweep_is_one_event(service, runtime, connected, simulator, sink):
    state = simulator.state
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/all"})
    invoices = state.seed(OWNER_ACCOUNT_ID, "invoice", 20)  # with lines: the catalogue includes them
    clients = state.seed(OWNER_ACCOUNT_ID, "client", 5)
    since = datetime.now(UTC) - timedelta(seconds=5)
    with state.same_second():
        for invoice in invoices:
            state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "changed"})
        for client in clients:
            state.update_object(OWNER_ACCOUNT_ID, "client", client["id"], {"organization": "Changed Ltd"})
        await asyncio.to_thread(service.settle)
    assert len(sink.sink.received) == 25

    report = await sweep.backfill_tenant(runtime, connected, since=since, resources=["invoice", "client"])
    assert [(r.scanned, r.known, r.emitted) for r in report.resources] == [(20, 20, 0), (5, 5, 0)]
    await asyncio.to_thread(service.settle)
    events = _events(sink, created.secret)
    assert len(events) == 25 and {e["data"]["origin"] for e in events} == {"webhook"}
    assert all(e["data"]["object"]["lines"] for e in events if e["data"]["resource"] == "invoice")


async def test_a_list_page_and_a_single_get_give_every_resource_the_same_version(runtime, tenant, simulator):
    """Where a list page and a single GET could differ (key order, includes, zones), the version agrees."""
    client = runtime.freshbooks
    for name, resource in CATALOGUE.items():
        simulator.state.seed(OWNER_ACCOUNT_ID, name, 3)
        listed = [obj async for obj in client.iterate(tenant, resource)]
        assert len(listed) == 3, name
        for obj in listed:
            single = await client.get(tenant, resource, obj["id"])
            assert single == obj, name  # the simulator answers one object the same both ways
            versions = {content_version(resource, normalize_object(resource, o)) for o in (obj, single)}
            assert len(versions) == 1, name
            shuffled = dict(reversed(list(single.items())))  # FreshBooks promises no key order
            assert content_version(resource, normalize_object(resource, shuffled)) in versions


async def test_an_object_without_an_updated_stamp_is_a_new_version_when_its_content_changes(
    service, runtime, connected, simulator, sink
):
    state = simulator.state
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/services"})
    [service_object] = state.seed(439000, "service", 1)
    assert "updated" not in service_object and "updated_at" not in service_object
    first = await sweep.backfill_tenant(runtime, connected, resources=["service"])
    assert first.resources[0].emitted == 1
    await asyncio.to_thread(service.settle)
    assert (await sweep.backfill_tenant(runtime, connected, resources=["service"])).resources[0].emitted == 0

    state.update_object(439000, "service", service_object["id"], {"name": "Renamed by webhook"})
    await asyncio.to_thread(service.settle)
    state.delivery_drop_rate = 1.0
    state.update_object(439000, "service", service_object["id"], {"billable": not service_object["billable"]})
    state.flush_deliveries()
    state.delivery_drop_rate = 0.0
    healed = await sweep.backfill_tenant(runtime, connected, resources=["service"])
    assert healed.resources[0].emitted == 1
    await asyncio.to_thread(service.settle)

    events = _events(sink, created.secret)
    assert [e["data"]["origin"] for e in events] == ["backfill", "webhook", "backfill"]
    assert events[1]["data"]["object"]["name"] == "Renamed by webhook"
    assert events[2]["data"]["object"]["billable"] is not service_object["billable"]
    assert len({e["data"]["version"] for e in events}) == 3


async def test_a_repeat_webhook_arriving_while_the_first_is_being_fetched_is_rechecked(
    service, runtime, connected, simulator, sink
):
    """The second change lands after the first webhook's fetch but before its event is committed.
    Its webhook, byte for byte the first one, must not be taken for a redelivery of work in
    progress; and the first fetch's older state, committed last, must not be sent after the newer."""
    from test_inbound import _callbacks, _event, _post, _signed

    state = simulator.state
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/invoices"})
    [invoice] = state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    callback = (await _callbacks(runtime, connected.id))["invoice"]
    body, signature = _signed(simulator, callback, _event(object_id=str(invoice["id"])))
    client = service.runtime.freshbooks
    real_get = client.get
    fetched, release = threading.Event(), threading.Event()

    async def held_get(*args, **kwargs):
        obj = await real_get(*args, **kwargs)
        if not fetched.is_set():  # the first fetch: its answer is slow to come back
            fetched.set()
            await asyncio.to_thread(release.wait, 30)
        return obj

    state.delivery_drop_rate = 1.0  # this test plays FreshBooks' webhooks itself
    client.get = held_get
    try:
        with state.same_second():
            state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], SENT)
            assert _post(service, callback, body, signature).json()["status"] == "accepted"
            assert await asyncio.to_thread(fetched.wait, 30)  # "sent" read, not yet committed
            state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], PAID)
            assert _post(service, callback, body, signature).json()["status"] == "duplicate"
            [first] = await asyncio.to_thread(sink.sink.wait_for, 1)  # the recheck, while "sent" is held
    finally:
        release.set()
        client.get = real_get
    await asyncio.to_thread(service.settle)

    events = _events(sink, created.secret)
    assert [e["data"]["object"]["v3_status"] for e in events] == ["paid"]
    async with runtime.db.sessions() as session:
        statuses = (await session.execute(select(InboxEvent.status).order_by(InboxEvent.id))).scalars().all()
    assert statuses == [InboxStatus.PROCESSED.value, InboxStatus.DUPLICATE.value]
    later = await sweep.backfill_tenant(runtime, connected, since=datetime.now(UTC) - SINCE, resources=["invoice"])
    assert later.resources[0].emitted == 0  # "paid" is known; "sent" was overtaken


async def test_two_transactions_staging_states_of_one_object_at_once_cannot_miss_each_other(
    runtime, tenant, simulator, database_url
):
    """Transaction A has read the ledger for a newer state and not yet written; B, in another
    process (here a thread with its own connection), stages an older state of the same object.
    B must wait for A's lock, then find A's state newer: without the lock it would read an empty
    ledger and commit the older state after the newer one."""
    resource = CATALOGUE["invoice"]
    [raw] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    t0 = datetime.now(UTC)
    older = _built(tenant, resource, {**raw, **SENT}, observed_at=t0)
    newer = _built(tenant, resource, {**raw, **PAID}, observed_at=t0 + timedelta(milliseconds=50))
    real_emitted = ledger.emitted
    a_has_read, a_may_write = asyncio.Event(), asyncio.Event()
    b_thread: list[int] = []

    async def pausing_emitted(session, keys):
        found = await real_emitted(session, keys)
        if not a_has_read.is_set():  # transaction A, the first caller
            a_has_read.set()
            await a_may_write.wait()
        return found

    async def stage_and_commit(db, event) -> bool:
        async with db.sessions() as session:
            [added] = await emit.stage_many(session, [(event, tenant.id, None)], now=datetime.now(UTC))
            await session.commit()
            return added

    async def in_another_process(event) -> bool:
        b_thread.append(threading.get_ident())
        other = Database(database_url)
        try:
            return await stage_and_commit(other, event)
        finally:
            await other.dispose()

    ledger.emitted = pausing_emitted
    try:
        a = asyncio.create_task(stage_and_commit(runtime.db, newer))
        await asyncio.wait_for(a_has_read.wait(), 10)
        b = asyncio.create_task(asyncio.to_thread(asyncio.run, in_another_process(older)))
        await _until_b_waits_for_the_lock(runtime.db, b, b_thread)
        a_may_write.set()
        assert await a is True
        assert await b is False  # superseded: A's state was read later
    finally:
        ledger.emitted = real_emitted
        a_may_write.set()
    async with runtime.db.sessions() as session:
        assert (await session.execute(select(ObjectVersion.version))).scalars().all() == [newer.version]


def _built(tenant, resource, obj: dict, *, observed_at: datetime):
    return build(
        tenant=tenant,
        resource=resource,
        freshbooks_event={"name": "invoice.update", "object_id": str(obj["id"])},
        obj=obj,
        origin="webhook",
        fallback_time=observed_at,
        observed_at=observed_at,
    )


async def _until_b_waits_for_the_lock(db, b: asyncio.Future, b_thread: list[int]) -> None:
    """Until B is blocked on A's lock: on PostgreSQL a backend waits for an advisory lock; on
    SQLite a thread is inside SQLite's busy handler, taking the write lock for B (its connection
    waits on a worker thread, never on its event loop). Fails if B finishes without having waited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not b.done() and loop.time() < deadline:
        if ON_POSTGRES:
            async with db.sessions() as session:
                query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                if (await session.execute(text(query))).scalar_one():
                    return
        elif b_thread and _waiting_for_a_lock():
            return
        await asyncio.sleep(0.005)  # the condition lives in another thread or backend: poll it
    raise AssertionError(f"B {'went ahead without waiting for' if b.done() else 'never reached'} A's lock")


def _waiting_for_a_lock() -> bool:
    """Whether some thread is in the inline SQLite connection's lock wait (the busy wait is in C)."""
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_waiting" and frame.f_code.co_filename.endswith("sqlite_inline.py"):
                return True
            frame = frame.f_back
    return False


def _main_version(resource, obj: dict | None) -> str:
    """The version main wrote before content versions: the stamp and ``vis_state`` only."""
    if obj is None:
        return "gone"
    stamp = obj.get(resource.updated_field) if resource.updated_field else None
    stamp = stamp or json.dumps(obj, sort_keys=True, default=str)[:100]
    return f"{stamp}|{obj.get('vis_state', '')}"


async def _as_main_wrote_it(runtime) -> dict[int, str]:
    """Rewrite the ledger and the payloads as main would have left them, schema at 0005; the old versions."""
    await _downgrade(runtime, "0006")  # the later migrations' own downgrades; 0006 is undone by hand below
    old: dict[int, str] = {}
    async with runtime.db.sessions() as session:
        rows = await session.execute(
            select(ObjectVersion.id, ObjectVersion.resource, Event.id, Event.payload).join(
                Event, Event.id == ObjectVersion.event_id
            )
        )
        for row_id, resource, event_id, payload in rows.all():
            document = json.loads(payload)
            document["data"].pop("version")  # main's events had none
            old[row_id] = _main_version(CATALOGUE[resource], document["data"]["object"])
            await session.execute(
                text("UPDATE events SET payload = :payload WHERE id = :id"),
                {"payload": json.dumps(document), "id": event_id},
            )
            await session.execute(
                text("UPDATE object_versions SET version = :version WHERE id = :id"),
                {"version": old[row_id], "id": row_id},
            )
        await session.execute(text("ALTER TABLE object_versions DROP COLUMN observed_at"))  # 0006 added it
        await session.execute(text("UPDATE alembic_version SET version_num = '0005'"))
        await session.commit()
    return old


async def _ledger(runtime) -> dict[int, str]:
    async with runtime.db.sessions() as session:
        return dict((await session.execute(select(ObjectVersion.id, ObjectVersion.version))).all())


@pytest.mark.unvalidated_events  # it rewrites payloads as releases before data.version wrote them, on purpose
async def test_an_upgraded_database_sweeps_without_flooding_and_heals_what_the_old_scheme_left_stale(
    runtime, tenant, simulator
):
    state = simulator.state
    await subscriptions.create(runtime, {"url": "https://hooks.example.com/all"})
    invoices = state.seed(OWNER_ACCOUNT_ID, "invoice", 120)  # two pages
    state.seed(OWNER_ACCOUNT_ID, "client", 30)
    state.seed(439000, "service", 4)  # no updated stamp
    since = datetime.now(UTC) - SINCE
    resources = ["invoice", "client", "service"]
    first = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    assert first.as_dict()["totals"]["emitted"] == 154
    old = await _as_main_wrote_it(runtime)
    # The bug this upgrade fixes: a change inside the second of the emitted state. The old scheme
    # calls it known; it must be emitted once after the upgrade.
    stale = invoices[7]
    with state.same_second(CATALOGUE["invoice"].updated_at(stale)):
        state.update_object(OWNER_ACCOUNT_ID, "invoice", stale["id"], {"notes": "paid in the same second"})

    await migrate.upgrade(runtime.db)
    assert await migrate.pending_revisions(runtime.db) == []
    upgraded = await _ledger(runtime)
    assert all(upgraded[row_id] != version for row_id, version in old.items())  # every row rewritten

    events_before = await _count(runtime, Event)
    after = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    totals = after.as_dict()["totals"]
    assert (totals["scanned"], totals["known"], totals["emitted"]) == (154, 153, 1)
    assert await _count(runtime, Event) == events_before + 2  # the healed version and its backfill.recovered
    async with runtime.db.sessions() as session:
        payloads = (await session.execute(select(Event.payload).where(Event.object_id == str(stale["id"])))).all()
    notes = sorted(json.loads(payload)["data"]["object"]["notes"] for (payload,) in payloads)
    assert notes == ["", "paid in the same second"]

    # Downgrading gives main's ledger back: the two states that share a second become one row again.
    await _downgrade(runtime, "0005")
    assert await _ledger(runtime) == old


async def _downgrade(runtime, revision: str) -> None:
    config = migrate.alembic_config(runtime.db.url)

    def run(connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with runtime.db.engine.begin() as connection:
        await connection.run_sync(run)


def test_the_simulator_freezes_its_clock_over_http(simulator):
    base = simulator.base_url
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    item = f"{base}/_sim/objects/{OWNER_ACCOUNT_ID}/invoice/{invoice['id']}"
    frozen = httpx.post(f"{base}/_sim/clock", json={"frozen_at": "2026-11-21T15:04:05.700Z"}).json()
    assert frozen == {"frozen": True, "now": "2026-11-21T15:04:05Z"}
    sent = httpx.put(item, json=SENT).json()
    paid = httpx.put(item, json=PAID).json()
    assert sent["updated"] == paid["updated"] == "2026-11-21 10:04:05"  # US/Eastern, to the second
    assert (sent["v3_status"], paid["v3_status"]) == ("sent", "paid")
    assert httpx.post(f"{base}/_sim/clock", json={"frozen": False}).json()["frozen"] is False
    assert httpx.put(item, json={"notes": "later"}).json()["updated"] != paid["updated"]
    refused = httpx.post(f"{base}/_sim/clock", json={"frozen": "yes"})
    assert refused.status_code == 400 and "frozen must be true or false" in refused.json()["error"]


def test_a_version_is_its_content_in_any_key_order_and_big_integers_do_not_break_it():
    resource = CATALOGUE["service"]  # no updated stamp: the digest is all there is
    obj = {"id": 1500001, "name": "Audit", "billable": True, "rate": 2**70}
    version = content_version(resource, obj)
    assert version == content_version(resource, dict(reversed(list(obj.items()))))
    assert version.startswith("-|") and version != content_version(resource, {**obj, "billable": False})
    assert content_version(resource, None) == "gone"
