"""Retention: what is past its window goes, in batches; nothing in flight is touched; nothing is
emitted twice because of it; the service purges on its own, one replica at a time."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OWNER_ACCOUNT_ID, make_settings
from prometheus_client import REGISTRY
from sqlalchemy import func, inspect, select

from webhook_service.backfill import sweep
from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.inbound import registrar
from webhook_service.maintenance import retention as service_retention
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.normalize.processor import InboxProcessor
from webhook_service.sandbox.sink import Reply
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import inbox, leases
from webhook_service.storage import retention as store
from webhook_service.storage.columns import new_id
from webhook_service.storage.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    InboxEvent,
    Lease,
    ObjectVersion,
    PendingConnection,
)

DAY = timedelta(days=1)


class Clock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment


@pytest.fixture
def overrides() -> dict[str, object]:
    """Settings for one test (parametrize ``overrides`` to change them)."""
    return {}


@pytest.fixture
def settings(database_url, simulator, service_socket, overrides):
    values: dict[str, object] = {
        "retention_days": 30,
        "retention_response_body_days": 7,
        "retention_batch_size": 2,  # every purge below takes several batches
        "delivery_retry_schedule": "0,60",  # dead after two failures
        **overrides,
    }
    return make_settings(database_url, simulator, service_socket, **values)


def _event(tenant, now, resource="invoice", object_id="1", notes=""):
    return build(
        tenant=tenant,
        resource=get_resource(resource),
        freshbooks_event={"name": f"{resource}.update", "object_id": object_id},
        obj={"id": int(object_id), "updated": "2026-11-21 07:00:00", "vis_state": 0, "notes": notes},
        origin=ORIGIN_WEBHOOK,
        fallback_time=now,
        observed_at=now,
    )


async def _emit(runtime, tenant, now, resource="invoice", object_id="1", notes=""):
    event = _event(tenant, now, resource, object_id, notes)
    async with runtime.db.sessions() as session:
        assert await emit.stage(session, event, tenant_id=tenant.id, inbox_event_id=None, now=now)
        await session.commit()
    return event.id


async def _ids(runtime, column, *where) -> set:
    async with runtime.db.sessions() as session:
        return set((await session.execute(select(column).where(*where))).scalars())


async def _counts(runtime) -> dict[str, int]:
    models = (DeliveryAttempt, Delivery, Event, InboxEvent, ObjectVersion, PendingConnection, Lease)
    async with runtime.db.sessions() as session:
        return {
            model.__tablename__: (await session.execute(select(func.count()).select_from(model))).scalar_one()
            for model in models
        }


async def _delivery_of(runtime, event_id) -> Delivery:
    async with runtime.db.sessions() as session:
        return (await session.execute(select(Delivery).where(Delivery.event_id == event_id))).scalar_one()


async def _dry_then_real(runtime, now) -> store.PurgeReport:
    """A dry run counts and changes nothing; the real purge then deletes exactly what it counted."""
    policy = service_retention.policy(runtime.settings)
    before = await _counts(runtime)
    dry = await store.purge(runtime.db, policy, now=now, dry_run=True)
    assert await _counts(runtime) == before
    real = await store.purge(runtime.db, policy, now=now)
    assert (dry.deleted, dry.response_bodies_cleared) == (real.deleted, real.response_bodies_cleared)
    assert dry.dry_run and not real.dry_run
    after = await _counts(runtime)
    assert {table: before[table] - after[table] for table in before} == real.deleted
    return real


async def test_final_states_past_the_window_go_and_whatever_is_in_flight_stays(runtime, tenant, sink):
    t0 = datetime.now(UTC)
    clock = Clock(t0)
    worker = DeliveryWorker(runtime, clock=clock)
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/invoices", "event_types": ["invoice.*"]})
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/clients", "event_types": ["client.*"]})

    # Long ago: two states of invoice 101, both delivered; client 1 failed twice and went dead.
    old_first = await _emit(runtime, tenant, t0, object_id="101", notes="first")
    await worker.run_once()
    old_second = await _emit(runtime, tenant, t0, object_id="101", notes="second")
    await worker.run_once()
    dead_old = await _emit(runtime, tenant, t0, "client", "1")
    sink.sink.script(500, 500)
    await worker.run_once()
    clock.set(t0 + timedelta(minutes=2))
    await worker.run_once()
    # Client 2 failed long ago and went dead two days later: still inside its replay window.
    dead_recent = await _emit(runtime, tenant, t0, "client", "2")
    sink.sink.script(500, Reply(500, body=b"still down"))
    await worker.run_once()
    clock.set(t0 + 2 * DAY)
    await worker.run_once()
    # An estimate nobody subscribes to (no deliveries): an old state, and a recent one.
    estimate_old = await _emit(runtime, tenant, t0, "estimate", "5", notes="old")
    estimate_new = await _emit(runtime, tenant, t0 + 30 * DAY, "estimate", "5", notes="new")
    # Recently delivered.
    recent = await _emit(runtime, tenant, t0 + 30 * DAY, object_id="104")
    clock.set(t0 + 30 * DAY)
    await worker.run_once()
    # Created long ago, still retrying (the first attempt failed, the next is scheduled) ...
    retrying = await _emit(runtime, tenant, t0, object_id="102")
    sink.sink.script(500)
    await worker.run_once()
    # ... or still pending (never attempted).
    pending = await _emit(runtime, tenant, t0, object_id="103")

    states = {e: (await _delivery_of(runtime, e)).status for e in (old_first, old_second, dead_old, dead_recent)}
    states |= {e: (await _delivery_of(runtime, e)).status for e in (recent, retrying, pending)}
    assert states == {
        old_first: "succeeded",
        old_second: "succeeded",
        dead_old: "dead",
        dead_recent: "dead",
        recent: "succeeded",
        retrying: "failed",
        pending: "pending",
    }
    kept_deliveries = {(await _delivery_of(runtime, e)).id for e in (dead_recent, recent, retrying, pending)}
    kept_attempts = await _ids(runtime, DeliveryAttempt.id, DeliveryAttempt.delivery_id.in_(kept_deliveries))
    first_version = await _ids(runtime, ObjectVersion.id, ObjectVersion.event_id.in_([old_first, estimate_old]))

    report = await _dry_then_real(runtime, now=t0 + 31 * DAY)

    assert report.deleted == {
        "delivery_attempts": 4,  # one each for invoice 101's two states, two for client 1
        "deliveries": 3,
        "events": 5,  # and the old estimate, which had none, and the delivery.dead announcing client 1's
        "inbox_events": 0,
        "object_versions": 2,  # the first states of invoice 101 and estimate 5
        "pending_connections": 0,
        "leases": 0,
    }
    assert report.cutoff == t0 + DAY and report.response_body_cutoff == t0 + 24 * DAY
    assert await _ids(runtime, Delivery.id) == kept_deliveries
    assert await _ids(runtime, DeliveryAttempt.id) == kept_attempts
    kept = await _ids(runtime, Event.id)
    assert kept - {dead_recent, estimate_new, recent, retrying, pending} == await _ids(
        runtime, Event.id, Event.type == "delivery.dead", Event.created_at > t0 + DAY
    )  # and the delivery.dead announcing client 2's (two days old)
    assert len(kept) == 6
    ledger = await _ids(runtime, ObjectVersion.id)
    assert not ledger & first_version and len(ledger) == 7  # each object's newest row stays
    # Client 2's attempts are older than the body window: bodies cleared, attempts kept.
    assert report.response_bodies_cleared == 2
    async with runtime.db.sessions() as session:
        bodies = (
            await session.execute(
                select(DeliveryAttempt.response_body).where(
                    DeliveryAttempt.delivery_id == (await _delivery_of(runtime, dead_recent)).id
                )
            )
        ).scalars()
        assert list(bodies) == [None, None]

    again = await store.purge(runtime.db, service_retention.policy(runtime.settings), now=t0 + 31 * DAY)
    assert again.total == 0 and again.response_bodies_cleared == 0


async def test_settled_inbox_events_go_pending_work_and_rechecks_stay(runtime, tenant, simulator):
    t0 = datetime.now(UTC)
    [invoice, other] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 2)
    await registrar.sync_tenant(runtime, tenant)
    async with runtime.db.sessions() as session:
        callback = next(c for c in await callback_store.active_for_tenant(session, tenant.id) if c.event == "invoice")

    def arrival(object_id, at, name="invoice.update"):
        body = f"name={name}&object_id={object_id}&account_id={OWNER_ACCOUNT_ID}".encode()
        fields = {"name": name, "object_id": str(object_id), "account_id": OWNER_ACCOUNT_ID}
        return inbox.Arrival(callback.id, tenant.id, fields, body, {}, at)

    async def record(*arrivals):
        async with runtime.db.sessions() as session:
            rows = await inbox.record_many(session, arrivals, dedupe_window=timedelta(minutes=5))
            await session.commit()
        return [row.id for row in rows]

    # Long ago: processed; a copy in the same batch as its original (a duplicate needing no
    # recheck); a webhook that could not be normalized (failed).
    processed, original, settled_copy, failed = await record(
        arrival(invoice["id"], t0), arrival(other["id"], t0), arrival(other["id"], t0), arrival(9, t0, "widget.update")
    )
    await InboxProcessor(runtime, clock=Clock(t0)).run_once()
    # Recently processed.
    [recent] = await record(arrival(other["id"], t0 + 30 * DAY, "invoice.create"))
    await InboxProcessor(runtime, clock=Clock(t0 + 30 * DAY)).run_once()
    # Long ago and still to do: a redelivery after its original was processed (a recheck), and a
    # webhook not processed yet (its tenant waits for re-authorization, say).
    [recheck] = await record(arrival(invoice["id"], t0 + timedelta(seconds=1)))
    [pending] = await record(arrival(invoice["id"], t0, "invoice.delete"))
    # Expired and live OAuth choices and leases.
    async with runtime.db.sessions() as session:
        session.add(PendingConnection(id=new_id("pc"), token_enc="x", expires_at=t0))
        session.add(live := PendingConnection(id=new_id("pc"), token_enc="x", expires_at=t0 + 32 * DAY))
        await session.commit()
    assert await leases.acquire(runtime.db, "expired", "someone", timedelta(seconds=1), now=t0)
    assert await leases.acquire(runtime.db, "held", "someone", timedelta(hours=1), now=t0 + 31 * DAY)

    async with runtime.db.sessions() as session:
        rows = {row.id: row for row in (await session.execute(select(InboxEvent))).scalars()}
    status = {inbox_id: row.status for inbox_id, row in rows.items()}
    assert status == {
        processed: "processed",
        original: "processed",
        settled_copy: "duplicate",
        failed: "failed",
        recent: "processed",
        recheck: "duplicate",
        pending: "pending",
    }
    assert rows[settled_copy].next_attempt_at is None
    assert rows[recheck].processed_at is None and rows[recheck].next_attempt_at is not None

    report = await _dry_then_real(runtime, now=t0 + 31 * DAY)

    assert report.deleted["inbox_events"] == 4
    assert await _ids(runtime, InboxEvent.id) == {recent, recheck, pending}
    assert (report.deleted["pending_connections"], report.deleted["leases"]) == (1, 1)
    assert await _ids(runtime, PendingConnection.id) == {live.id}
    assert await _ids(runtime, Lease.name) == {"held"}


async def test_a_sweep_after_a_purge_emits_nothing_already_emitted(runtime, tenant, simulator):
    """The judged check: objects emitted long ago, their older ledger rows purged, then a backfill
    over all of them emits none again."""
    state = simulator.state
    invoices = state.seed(OWNER_ACCOUNT_ID, "invoice", 120)  # two pages
    clients = state.seed(OWNER_ACCOUNT_ID, "client", 30)
    since = datetime.now(UTC) - timedelta(days=61)
    resources = ["invoice", "client"]
    first = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    assert first.as_dict()["totals"]["emitted"] == 150
    for obj in invoices[:40]:  # a second state of some, one more inside the same second for a few
        state.update_object(OWNER_ACCOUNT_ID, "invoice", obj["id"], {"notes": "changed"})
    for obj in invoices[:5]:
        with state.same_second(
            get_resource("invoice").updated_at(state.get_object(OWNER_ACCOUNT_ID, "invoice", obj["id"]))
        ):
            state.update_object(OWNER_ACCOUNT_ID, "invoice", obj["id"], {"notes": "changed again"})
    for obj in clients[:10]:
        state.update_object(OWNER_ACCOUNT_ID, "client", obj["id"], {"organization": "Renamed Ltd"})
    second = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    assert second.as_dict()["totals"]["emitted"] == 50
    later = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    assert later.as_dict()["totals"]["emitted"] == 0
    # The ledger: 150 objects, 50 of them with two states (the five changed twice inside one second
    # were read once, in their last state).

    report = await _dry_then_real(runtime, now=datetime.now(UTC) + 31 * DAY)

    assert report.deleted["object_versions"] == 50  # every state but each object's newest
    assert report.deleted["events"] == 200 + 2  # and the two sweeps' backfill.recovered: nothing holds them
    async with runtime.db.sessions() as session:
        per_object = (
            (
                await session.execute(
                    select(func.count())
                    .select_from(ObjectVersion)
                    .group_by(ObjectVersion.resource, ObjectVersion.object_id)
                )
            )
            .scalars()
            .all()
        )
    assert len(per_object) == 150 and set(per_object) == {1}

    after = await sweep.backfill_tenant(runtime, tenant, since=since, resources=resources)
    totals = after.as_dict()["totals"]
    assert (totals["scanned"], totals["known"], totals["emitted"]) == (150, 150, 0)
    assert await _ids(runtime, Event.id) == set()


async def test_old_response_bodies_are_cleared_and_the_attempt_stays_until_its_delivery_goes(runtime, tenant, sink):
    t0 = datetime.now(UTC)
    clock = Clock(t0)
    worker = DeliveryWorker(runtime, clock=clock)
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/chatty"})
    event_id = await _emit(runtime, tenant, t0)
    sink.sink.script(Reply(500, body=b"first" * 1000), Reply(500, body=b"second"))
    await worker.run_once()
    clock.set(t0 + 25 * DAY)
    await worker.run_once()  # the second and last attempt: dead, inside the window
    delivery = await _delivery_of(runtime, event_id)
    assert delivery.status == "dead"

    report = await _dry_then_real(runtime, now=t0 + 26 * DAY)  # bodies before day 19 go

    assert report.response_bodies_cleared == 1 and report.total == 0
    async with runtime.db.sessions() as session:
        attempts = (
            await session.execute(
                select(DeliveryAttempt.number, DeliveryAttempt.response_body, DeliveryAttempt.status_code)
                .where(DeliveryAttempt.delivery_id == delivery.id)
                .order_by(DeliveryAttempt.number)
            )
        ).all()
    assert [tuple(row) for row in attempts] == [(1, None, 500), (2, "second", 500)]

    gone = await store.purge(runtime.db, service_retention.policy(runtime.settings), now=t0 + 56 * DAY)
    deleted = (gone.deleted["deliveries"], gone.deleted["delivery_attempts"], gone.deleted["events"])
    assert deleted == (1, 2, 3)  # the event; delivery.dead, and subscription.disabled after 25 days of failures


async def test_purge_command_dry_run_reports_and_the_real_run_deletes(runtime, tenant, sink, cli_env, tmp_path):
    from test_cli import _run

    long_ago = datetime.now(UTC) - 40 * DAY
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/all"})
    await _emit(runtime, tenant, long_ago)
    await DeliveryWorker(runtime, clock=Clock(long_ago)).run_once()
    await _emit(runtime, tenant, datetime.now(UTC), object_id="2")  # recent, pending

    dry = _run(["purge", "--dry-run", "--json"], cli_env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["deleted"] == {
        "delivery_attempts": 1,
        "deliveries": 1,
        "events": 1,
        "inbox_events": 0,
        "object_versions": 0,
        "pending_connections": 0,
        "leases": 0,
    }
    assert report["total_deleted"] == 3 and report["response_bodies_cleared"] == 0
    cutoffs = {key: datetime.fromisoformat(value) for key, value in report["cutoffs"].items()}
    now = datetime.fromisoformat(report["now"])
    assert now - cutoffs["final_states"] == 30 * DAY and now - cutoffs["response_bodies"] == 7 * DAY
    assert cutoffs["expired"] == now
    assert (await _counts(runtime))["deliveries"] == 2  # nothing deleted

    text = _run(["purge", "--dry-run"], cli_env, cwd=tmp_path)
    assert text.returncode == 0 and "would delete 3 rows" in text.stdout
    real = _run(["purge", "--json"], cli_env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["deleted"] == report["deleted"]
    assert (await _counts(runtime))["deliveries"] == 1
    assert json.loads(_run(["purge", "--dry-run", "--json"], cli_env, cwd=tmp_path).stdout)["total_deleted"] == 0
    assert "purge" in _run(["--help"], cli_env, cwd=tmp_path).stdout


@pytest.mark.parametrize("overrides", [{"retention_interval": 0.05}])
async def test_the_service_purges_on_its_own_one_replica_at_a_time(service, runtime, tenant, monkeypatch):
    """The service's lifespan runs the loop; a second replica (this process) gets no turn while the
    service holds the lease; no two purges ever overlap."""
    real_purge = store.purge
    lock = threading.Lock()
    purgers: list[str] = []
    running = [0, 0]  # now, most at once
    deleted = dict.fromkeys(store.TABLES, 0)
    seen, done = threading.Event(), threading.Event()
    expected = {"events": 2, "object_versions": 1, "pending_connections": 1}

    async def recording_purge(*args, **kwargs):
        with lock:
            purgers.append(asyncio.current_task().get_name())
            running[0] += 1
            running[1] = max(running)
        try:
            report = await real_purge(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1
        with lock:
            for table, rows in report.deleted.items():
                deleted[table] += rows
            if all(deleted[table] >= rows for table, rows in expected.items()):
                done.set()
        seen.set()
        return report

    monkeypatch.setattr(store, "purge", recording_purge)
    assert await asyncio.to_thread(seen.wait, 30), "the service never purged"
    second_replica = asyncio.create_task(service_retention.run_forever(runtime), name="replica-b")
    try:
        before = REGISTRY.get_sample_value("webhook_service_retention_purged_rows_total", {"table": "events"}) or 0
        long_ago = datetime.now(UTC) - 40 * DAY
        old, newer = (_event(tenant, long_ago + timedelta(seconds=n), "estimate", "5", notes=str(n)) for n in (0, 1))
        async with runtime.db.sessions() as session:  # one transaction: a purge sees all of it or none
            assert await emit.stage_many(session, [(old, tenant.id, None), (newer, tenant.id, None)], now=long_ago) == [
                True,
                True,
            ]
            session.add(PendingConnection(id=new_id("pc"), token_enc="x", expires_at=long_ago))
            await session.commit()
        assert await asyncio.to_thread(done.wait, 30), f"the old rows are still there: {deleted}"

        assert await _ids(runtime, Event.id) == set()  # no subscription: no deliveries held them
        assert await _ids(runtime, ObjectVersion.event_id) == {newer.id}
        assert await _ids(runtime, PendingConnection.id) == set()
        after = REGISTRY.get_sample_value("webhook_service_retention_purged_rows_total", {"table": "events"})
        assert after == before + 2  # the service's counter (it runs in this process here)
        assert await service_retention.purge_if_free(runtime, "replica-c") is None  # the lease is held
        with lock:
            assert set(purgers) == {"duty:retention"} and running[1] == 1
    finally:
        second_replica.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second_replica


async def test_a_replica_keeps_the_lease_and_the_indexes_exist(runtime):
    assert await service_retention.purge_if_free(runtime, "replica-a") is not None
    assert await service_retention.purge_if_free(runtime, "replica-b") is None
    assert await service_retention.purge_if_free(runtime, "replica-a") is not None  # the holder goes on

    def indexes(connection) -> dict[str, set[str]]:
        inspector = inspect(connection)
        return {
            table: {index["name"] for index in inspector.get_indexes(table)}
            for table in ("deliveries", "inbox_events", "events", "delivery_attempts")
        }

    async with runtime.db.engine.connect() as connection:
        found = await connection.run_sync(indexes)
    assert "ix_deliveries_completed" in found["deliveries"]
    assert "ix_inbox_events_received" in found["inbox_events"]
    assert "ix_events_created_at" in found["events"]
    assert "ix_delivery_attempts_body_started" in found["delivery_attempts"]
