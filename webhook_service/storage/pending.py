"""Queries on ``pending_connections``: token pairs held while a connection is being completed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import PendingConnection


async def hold(session: AsyncSession, pending: PendingConnection, *, now: datetime) -> None:
    """Add ``pending`` and drop the held pairs that expired before ``now``."""
    session.add(pending)
    await session.execute(delete(PendingConnection).where(PendingConnection.expires_at < now))


async def get(session: AsyncSession, pending_id: str) -> PendingConnection | None:
    return await session.get(PendingConnection, pending_id)


async def drop(session: AsyncSession, pending_id: str) -> None:
    """Forget the held pair (its connection is complete)."""
    await session.execute(delete(PendingConnection).where(PendingConnection.id == pending_id))
