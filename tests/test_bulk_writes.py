"""The pipeline's bulk writes (``storage.bulk``) store exactly what they are given, on every backend.

They bind their rows through SQL compiled once per table and columns, with the column types'
own processors, instead of through SQLAlchemy's per-call parameter handling: what is read back
must be what SQLAlchemy would have stored (times in UTC, None kept, numbers and text unchanged),
a column a row leaves out still gets its default, and a value no column can take is refused with
nothing written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from webhook_service.delivery import subscriptions
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.storage.asyncpg_direct import DirectConnection
from webhook_service.storage.bulk import insert_rows, update_by_id, write
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Subscription, Tenant
from webhook_service.storage.outbox import delivery_rows, event_row, new_delivery_id

ELSEWHERE = timezone(timedelta(hours=-4))


def _event(tenant: Tenant, now: datetime) -> dict[str, object]:
    """An ``events`` row as the pipeline makes it (a published document), with values that test
    the binding: a time in another zone, an id past 32 bits, no ``received_at``."""
    event = build(
        tenant=tenant,
        resource=get_resource("invoice"),
        freshbooks_event={"name": "invoice.update", "object_id": "42"},
        obj={"id": 42, "updated": "2026-11-21 07:00:00", "vis_state": 0, "amount": {"amount": "1.00", "code": "USD"}},
        origin=ORIGIN_WEBHOOK,
        fallback_time=now,
    )
    document = {**event.document, "data": {**event.document["data"], "sequence": 1}}
    row = event_row(
        document,
        tenant_id=tenant.id,
        resource=event.resource,
        object_id=event.object_id,
        origin=event.origin,
        occurred_at=datetime(2026, 7, 1, 8, 0, 0, 5, tzinfo=ELSEWHERE),  # another zone: kept as its instant
        inbox_event_id=2**40,
        now=now,
    )
    return {**row, "received_at": None}


def _deliveries(
    subscription: Subscription, event: dict[str, object], count: int, tenant: Tenant, now: datetime
) -> list[dict[str, object]]:
    """``count`` deliveries of ``event`` to ``subscription``, as the pipeline makes them (each its own id)."""
    rows = delivery_rows(
        [subscription] * count,
        event_id=str(event["id"]),
        event_type=str(event["type"]),
        tenant_id=tenant.id,
        document=json.loads(str(event["payload"])),
        ordered_as=("", 1),
        now=now,
    )
    return [{**row, "id": new_delivery_id()} for row in rows]


async def test_rows_written_in_bulk_read_back_as_given(runtime, tenant):
    created = await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook"})
    now = utcnow()
    event = _event(tenant, now)
    [delivery] = _deliveries(created.subscription, event, 1, tenant, now)
    attempt = {
        "delivery_id": delivery["id"],
        "number": 1,
        "started_at": now,
        "status_code": 503,
        "latency_ms": 12.75,
        "error": "HTTP 503",
        "response_body": "busy ✓",
    }
    later = datetime(2026, 12, 3, 10, 0, tzinfo=ELSEWHERE)
    async with runtime.db.sessions() as session:
        await insert_rows(session, Event, [event])
        await insert_rows(session, Delivery, [delivery])
        await insert_rows(session, DeliveryAttempt, [attempt])
        await update_by_id(
            session,
            Delivery,
            [{"id": delivery["id"], "status": DeliveryStatus.FAILED.value, "attempts": 1, "next_attempt_at": later}],
        )
        await session.commit()

    async with runtime.db.sessions() as session:
        stored_event = (await session.execute(select(Event))).scalar_one()
        stored_delivery = (await session.execute(select(Delivery))).scalar_one()
        stored_attempt = (await session.execute(select(DeliveryAttempt))).scalar_one()
    assert {key: getattr(stored_event, key) for key in event} == {
        **event,
        "occurred_at": datetime(2026, 7, 1, 12, 0, 0, 5, tzinfo=UTC),
    }
    assert stored_event.occurred_at.tzinfo is UTC
    assert {key: getattr(stored_attempt, key) for key in attempt} == attempt
    assert (stored_delivery.status, stored_delivery.attempts) == (DeliveryStatus.FAILED.value, 1)
    assert stored_delivery.next_attempt_at == later.astimezone(UTC)
    assert stored_delivery.updated_at == now  # a column the update did not name is left alone


async def test_a_column_a_row_leaves_out_gets_its_default(runtime, tenant):
    created = await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook"})
    before = utcnow()
    event = _event(tenant, before)
    bare = {"id": new_delivery_id(), "event_id": event["id"], "subscription_id": created.subscription.id}
    async with runtime.db.sessions() as session:
        await insert_rows(session, Event, [event])
        await insert_rows(session, Delivery, [bare])
        await session.commit()
    async with runtime.db.sessions() as session:
        stored = (await session.execute(select(Delivery))).scalar_one()
    assert (stored.status, stored.attempts, stored.schedule_base) == (DeliveryStatus.PENDING.value, 0, 0)
    assert before <= stored.created_at <= utcnow()


async def test_a_naive_time_is_refused_and_nothing_is_written(runtime, tenant):
    naive = {**_event(tenant, utcnow()), "occurred_at": datetime(2026, 1, 1)}
    with pytest.raises(Exception) as refused:  # the cause is checked below
        async with runtime.db.sessions() as session:
            await insert_rows(session, Event, [_event(tenant, utcnow()), naive])
            await session.commit()
    cause = getattr(refused.value, "orig", refused.value)  # SQLAlchemy's StatementError wraps it
    assert isinstance(cause, ValueError)
    assert "naive" in str(cause)
    async with runtime.db.sessions() as session:
        assert (await session.execute(select(Event))).first() is None


async def test_each_of_many_rows_keeps_its_own_values_and_a_row_updated_twice_keeps_the_last(runtime, tenant):
    """PostgreSQL gets one array per column: a value must land in its own row, None included."""
    created = await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook"})
    now = utcnow()
    event = _event(tenant, now)
    deliveries = _deliveries(created.subscription, event, 3, tenant, now)
    attempts = [
        {
            "delivery_id": row["id"],
            "number": n,
            "started_at": now + timedelta(seconds=n),
            "status_code": None if n == 2 else 500 + n,
            "latency_ms": n / 4,
            "error": None if n == 1 else f"error {n}",
            "response_body": f"body {n}",
        }
        for n, row in enumerate(deliveries, 1)
    ]
    first, second, third = (row["id"] for row in deliveries)
    updates = [
        {"id": first, "status": DeliveryStatus.FAILED.value, "last_error": "one"},
        {"id": second, "status": DeliveryStatus.SUCCEEDED.value, "last_error": None},
        {"id": first, "status": DeliveryStatus.DEAD.value, "last_error": "one, again"},
        {"id": third, "status": DeliveryStatus.FAILED.value, "last_error": "three"},
    ]
    async with runtime.db.sessions() as session:
        await insert_rows(session, Event, [event])
        await insert_rows(session, Delivery, deliveries)
        await insert_rows(session, DeliveryAttempt, attempts)
        await update_by_id(session, Delivery, updates)
        await session.commit()
    async with runtime.db.sessions() as session:
        stored = (await session.execute(select(DeliveryAttempt).order_by(DeliveryAttempt.number))).scalars().all()
        by_id = {d.id: d for d in (await session.execute(select(Delivery))).scalars()}
    assert [{key: getattr(row, key) for key in attempts[0]} for row in stored] == attempts
    assert [(by_id[i].status, by_id[i].last_error) for i in (first, second, third)] == [
        (DeliveryStatus.DEAD.value, "one, again"),  # named twice: the later values
        (DeliveryStatus.SUCCEEDED.value, None),
        (DeliveryStatus.FAILED.value, "three"),
    ]


async def test_several_tables_written_together_store_what_each_stores_alone(runtime, tenant, monkeypatch):
    """``write`` sends distinct tables as one statement on PostgreSQL (a delivery and the event it
    references among them: the key is checked once every row is in), and a table written twice, a
    statement at a time, in order: the second sees the first's rows."""
    sent: list[str] = []
    to_driver = DirectConnection.fetch_all

    async def fetch_all(self, sql, parameters):  # type: ignore[no-untyped-def]
        sent.append(sql)
        return await to_driver(self, sql, parameters)

    monkeypatch.setattr(DirectConnection, "fetch_all", fetch_all)
    created = await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook"})
    now = utcnow()
    event = _event(tenant, now)
    first, second = _deliveries(created.subscription, event, 2, tenant, now)
    attempt = {"delivery_id": first["id"], "number": 1, "started_at": now, "status_code": 500, "latency_ms": 1.5}
    async with runtime.db.sessions() as session:
        await write(session, [("insert", Event, [event]), ("insert", Delivery, [first, second])])
        together = len(sent)
        await write(
            session,
            [
                ("insert", DeliveryAttempt, [attempt]),
                ("update", Delivery, [{"id": first["id"], "status": DeliveryStatus.FAILED.value, "attempts": 1}]),
                ("update", Delivery, [{"id": first["id"], "status": DeliveryStatus.DEAD.value}]),
            ],
        )
        await session.commit()
    async with runtime.db.sessions() as session:
        stored = {d.id: (d.status, d.attempts) for d in (await session.execute(select(Delivery))).scalars()}
        [stored_attempt] = (await session.execute(select(DeliveryAttempt))).scalars().all()
    assert stored == {first["id"]: (DeliveryStatus.DEAD.value, 1), second["id"]: (DeliveryStatus.PENDING.value, 0)}
    assert {key: getattr(stored_attempt, key) for key in attempt} == attempt
    if runtime.db.engine.dialect.name == "postgresql":
        assert together == 1  # two tables, one round trip
        assert len(sent) == 1 + 3  # the deliveries twice: each update alone, the attempt too
