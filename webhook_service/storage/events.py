"""Queries on normalized events."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import Event
from webhook_service.storage.paging import Position, older_than


async def get(session: AsyncSession, event_id: str) -> Event | None:
    return await session.get(Event, event_id)


async def list_events(
    session: AsyncSession,
    *,
    tenant_id: str | None = None,
    event_type: str | None = None,
    origin: str | None = None,
    limit: int = 100,
    before: Position | None = None,
) -> list[Event]:
    """Newest first; ``before``: the page after the event at that position (see ``paging``)."""
    query = select(Event).order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)
    if before is not None:
        query = query.where(older_than(Event.created_at, Event.id, before))
    if origin is not None:
        query = query.where(Event.origin == origin)
    if tenant_id is not None:
        query = query.where(Event.tenant_id == tenant_id)
    if event_type is not None:
        query = query.where(Event.type == event_type)
    return list((await session.execute(query)).scalars())
