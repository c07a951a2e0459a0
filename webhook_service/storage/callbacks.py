"""Queries on the ``callbacks`` table."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import Callback


async def by_endpoint_key(session: AsyncSession, endpoint_key: str) -> Callback | None:
    result = await session.execute(
        select(Callback).where(Callback.endpoint_key == endpoint_key, Callback.active.is_(True))
    )
    return result.scalar_one_or_none()


async def active_for_tenant(session: AsyncSession, tenant_id: str) -> list[Callback]:
    result = await session.execute(
        select(Callback)
        .where(Callback.tenant_id == tenant_id, Callback.active.is_(True))
        .order_by(Callback.event, Callback.created_at)
    )
    return list(result.scalars())


async def list_all(
    session: AsyncSession, *, tenant_id: str | None = None, include_retired: bool = False
) -> list[Callback]:
    query = select(Callback).order_by(Callback.tenant_id, Callback.event, Callback.created_at)
    if tenant_id is not None:
        query = query.where(Callback.tenant_id == tenant_id)
    if not include_retired:
        query = query.where(Callback.active.is_(True))
    return list((await session.execute(query)).scalars())
