"""Named, expiring claims on periodic work, shared by every replica through the database.

Acquiring is one compare-and-swap (insert, or update when expired or already ours), so it works the
same on SQLite and PostgreSQL. A crashed holder's claim simply runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Lease


async def acquire(db: Database, name: str, owner: str, ttl: timedelta, *, now: datetime | None = None) -> bool:
    now = now or utcnow()
    async with db.sessions() as session:
        result = await session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.until < now, Lease.owner == owner))
            .values(owner=owner, until=now + ttl)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await session.commit()
            return True
        session.add(Lease(name=name, owner=owner, until=now + ttl))
        try:
            await session.commit()
        except IntegrityError:
            return False  # someone else holds it
        return True


async def release(db: Database, name: str, owner: str) -> None:
    async with db.sessions() as session:
        await session.execute(delete(Lease).where(Lease.name == name, Lease.owner == owner))
        await session.commit()


async def touch(session: AsyncSession, name: str) -> None:
    """Write the named lease row (the readiness probe's write), expired at once: nobody holds it."""
    now = utcnow()
    await session.execute(delete(Lease).where(Lease.name == name))
    await session.execute(insert(Lease).values(name=name, owner="probe", until=now))
