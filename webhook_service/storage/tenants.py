"""Queries on the ``tenants`` table.

The refresh-lease functions are compare-and-swap ``UPDATE``s: they work identically on SQLite and
PostgreSQL and across processes, which is what lets one process at a time spend a refresh token.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import Tenant, TenantStatus


async def get(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id, populate_existing=True)


async def get_by_business(session: AsyncSession, business_id: int) -> Tenant | None:
    result = await session.execute(select(Tenant).where(Tenant.business_id == business_id))
    return result.scalar_one_or_none()


async def list_all(session: AsyncSession, *, status: str | None = None) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.created_at, Tenant.id)
    if status is not None:
        query = query.where(Tenant.status == status)
    return list((await session.execute(query)).scalars())


async def try_acquire_refresh_lease(
    session: AsyncSession, tenant_id: str, *, version: int, owner: str, now: datetime, until: datetime
) -> bool:
    """Take the right to refresh ``version``'s token, if nobody holds it and nobody rotated it."""
    result = await session.execute(
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            Tenant.token_version == version,
            Tenant.status == TenantStatus.ACTIVE.value,
            or_(Tenant.refresh_lease_until.is_(None), Tenant.refresh_lease_until < now),
        )
        .values(refresh_lease_owner=owner, refresh_lease_until=until)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


async def release_refresh_lease(session: AsyncSession, tenant_id: str, *, owner: str) -> None:
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.refresh_lease_owner == owner)
        .values(refresh_lease_owner=None, refresh_lease_until=None)
        .execution_options(synchronize_session=False)
    )


async def store_rotated_pair(
    session: AsyncSession,
    tenant_id: str,
    *,
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    now: datetime,
) -> None:
    """Record a rotation: bump the version and drop the lease in the same statement."""
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(
            access_token_enc=access_token_enc,
            refresh_token_enc=refresh_token_enc,
            access_expires_at=expires_at,
            token_version=Tenant.token_version + 1,
            refresh_lease_owner=None,
            refresh_lease_until=None,
            last_refreshed_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


async def set_status(
    session: AsyncSession, tenant_id: str, status: TenantStatus, reason: str | None, *, now: datetime
) -> None:
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(status=status.value, status_reason=reason, updated_at=now)
        .execution_options(synchronize_session=False)
    )
