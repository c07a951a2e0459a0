"""The console's signed-in sessions: one row each, read on every console page."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import ConsoleSession

KEPT_AFTER_END = timedelta(days=1)
"""How long an ended or expired session's row stays (for a look at who was signed in)."""


async def start(session: AsyncSession, session_id: str, *, now: datetime, lifetime: timedelta) -> None:
    """Record a sign-in (not committed), and forget sessions long over: signing in is rare."""
    await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now - KEPT_AFTER_END))
    session.add(ConsoleSession(id=session_id, created_at=now, expires_at=now + lifetime))


async def is_live(session: AsyncSession, session_id: str, *, now: datetime) -> bool:
    row = (
        await session.execute(
            select(ConsoleSession.id).where(
                ConsoleSession.id == session_id, ConsoleSession.ended_at.is_(None), ConsoleSession.expires_at > now
            )
        )
    ).first()
    return row is not None


async def end(session: AsyncSession, session_id: str, *, now: datetime) -> None:
    """Sign out (not committed)."""
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
    )
