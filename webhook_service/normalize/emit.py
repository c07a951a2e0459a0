"""Committing a normalized event: the ledger, the event and its deliveries in one transaction.

The webhook path and the polling backfill both come through here, so a version emitted by one is
never emitted again by the other.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.delivery.fanout import add_deliveries
from webhook_service.normalize.events import NormalizedEvent
from webhook_service.storage.models import Event, ObjectVersion


async def version_known(session: AsyncSession, tenant_id: str, resource: str, object_id: str, version: str) -> bool:
    found = await session.execute(
        select(ObjectVersion.id).where(
            ObjectVersion.tenant_id == tenant_id,
            ObjectVersion.resource == resource,
            ObjectVersion.object_id == object_id,
            ObjectVersion.version == version,
        )
    )
    return found.first() is not None


async def stage(
    session: AsyncSession, event: NormalizedEvent, *, tenant_id: str, inbox_event_id: int | None, now: datetime
) -> bool:
    """Add the event (and its ledger row and deliveries) unless its version was already emitted.

    Returns False when the version is known; the caller commits. A concurrent writer of the same
    version makes the commit fail with ``IntegrityError`` on the ledger, which means the same.
    """
    if event.version is not None:
        if await version_known(session, tenant_id, event.resource, event.object_id, event.version):
            return False
        session.add(
            ObjectVersion(
                tenant_id=tenant_id,
                resource=event.resource,
                object_id=event.object_id,
                version=event.version,
                event_id=event.id,
                origin=event.origin,
                seen_at=now,
            )
        )
    session.add(
        Event(
            id=event.id,
            tenant_id=tenant_id,
            type=event.type,
            resource=event.resource,
            object_id=event.object_id,
            origin=event.origin,
            occurred_at=event.occurred_at,
            payload=event.payload,
            inbox_event_id=inbox_event_id,
            created_at=now,
        )
    )
    await session.flush()  # the event row must exist before deliveries reference it
    await add_deliveries(session, event_id=event.id, event_type=event.type, tenant_id=tenant_id, now=now)
    return True
