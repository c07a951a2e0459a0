"""A write that collides with a row already there raises storage's ``Conflict``, with the driver's
``IntegrityError`` as its cause: what the inbox processor, the delivery worker and the backfill
catch (or split their group commits on) without importing SQLAlchemy."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from test_delivery import _emit

from webhook_service.delivery import subscriptions
from webhook_service.storage import delivery_records, ledger
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import ObjectVersion
from webhook_service.storage.session import Conflict


async def test_a_version_already_in_the_ledger_is_a_conflict(runtime, tenant):
    await _emit(runtime, tenant, utcnow())
    async with runtime.db.sessions() as session:
        [entry] = (await session.execute(select(ObjectVersion))).scalars()
    again = {column.key: getattr(entry, column.key) for column in ObjectVersion.__table__.columns if column.key != "id"}
    with pytest.raises(Conflict) as conflict:
        async with runtime.db.sessions() as session:
            await ledger.record(session, versions=[again], events=[], deliveries=[])
    assert isinstance(conflict.value.__cause__, IntegrityError)


async def test_an_attempt_number_already_recorded_is_a_conflict(runtime, tenant):
    await subscriptions.create(runtime, {"url": "http://127.0.0.1:9/hook"})
    await _emit(runtime, tenant, utcnow())
    async with runtime.db.sessions() as session:
        [delivery] = await delivery_records.list_deliveries(session)
    attempt = {"delivery_id": delivery.id, "number": 1, "started_at": utcnow()}
    async with runtime.db.sessions() as session:
        await delivery_records.record_outcomes(session, [{"id": delivery.id, "attempts": 1}], [attempt])
        await session.commit()
    with pytest.raises(Conflict) as conflict:
        async with runtime.db.sessions() as session:
            await delivery_records.record_outcomes(session, [], [attempt])
    assert isinstance(conflict.value.__cause__, IntegrityError)
    async with runtime.db.sessions() as session:
        assert [a.number for a in await delivery_records.attempts(session, delivery.id)] == [1]
