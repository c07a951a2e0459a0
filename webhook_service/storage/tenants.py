"""Queries on the ``tenants`` table.

The refresh-lease functions are compare-and-swap ``UPDATE``s: they work identically on SQLite and
PostgreSQL and across processes, which is what lets one process at a time spend a refresh token.
Each one that acts on a held lease is fenced on the owner *and* the ``token_version`` it was taken
for, and returns whether it matched: a ``False`` means the lease was lost (see
:mod:`webhook_service.freshbooks.tokens` for what the caller does then).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.columns import new_id
from webhook_service.storage.lists import one_of
from webhook_service.storage.models import Tenant, TenantStatus
from webhook_service.storage.paging import Position, newer_than


async def get(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id, populate_existing=True)


async def get_by_business(session: AsyncSession, business_id: int) -> Tenant | None:
    result = await session.execute(select(Tenant).where(Tenant.business_id == business_id))
    return result.scalar_one_or_none()


async def by_ids(session: AsyncSession, tenant_ids: Iterable[str], *, active: bool = False) -> dict[str, Tenant]:
    """The tenants of these ids that exist (``active``: that are active), by id.

    Every inbox group commit that hands events over reads them, and every inbox claim: the
    statement is built once, its list one parameter (:func:`~webhook_service.storage.lists.one_of`):
    built per call, with an expanding ``IN``, it cost 300 µs more Python a read.
    """
    found = await session.execute(_by_ids(active), {"ids": list(set(tenant_ids))})
    return {tenant.id: tenant for tenant in found.scalars()}


@functools.cache
def _by_ids(active: bool) -> Select[Tenant]:
    query = select(Tenant).where(one_of(Tenant.id, "ids"))
    return query.where(Tenant.status == TenantStatus.ACTIVE.value) if active else query


async def for_business(session: AsyncSession, business_id: int, *, now: datetime) -> Tenant:
    """The business's tenant with its ``token_version`` moved on, to be given a new grant: the one
    there is, or a new one (version 1, added to the session). The caller fills in the rest."""
    tenant = await get_by_business(session, business_id)
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), business_id=business_id, token_version=1, created_at=now)
        session.add(tenant)
    else:
        tenant.token_version = tenant.token_version + 1
    return tenant


async def list_all(session: AsyncSession, *, status: str | None = None) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.created_at, Tenant.id)
    if status is not None:
        query = query.where(Tenant.status == status)
    return list((await session.execute(query)).scalars())


async def list_page(session: AsyncSession, *, after: Position | None = None, limit: int = 50) -> list[Tenant]:
    """Tenants oldest first, from just after ``after`` (a tenant's ``created_at`` and ``id``)."""
    query = select(Tenant).order_by(Tenant.created_at, Tenant.id).limit(limit)
    if after is not None:
        query = query.where(newer_than(Tenant.created_at, Tenant.id, after))
    return list((await session.execute(query)).scalars())


async def expiring(session: AsyncSession, *, before: datetime) -> list[Tenant]:
    """Active tenants whose access token expires before ``before``, soonest first: the proactive
    refresh reads these, not every tenant, every ``TOKEN_CHECK_INTERVAL``."""
    query = (
        select(Tenant)
        .where(Tenant.status == TenantStatus.ACTIVE.value, Tenant.access_expires_at < before)
        .order_by(Tenant.access_expires_at, Tenant.id)
    )
    return list((await session.execute(query)).scalars())


async def try_acquire_refresh_lease(
    session: AsyncSession,
    tenant_id: str,
    *,
    version: int,
    owner: str,
    holder: str | None,
    now: datetime,
    until: datetime,
) -> bool:
    """Take the right to refresh ``version``'s token, if nobody rotated it and no live lease blocks.

    ``holder`` is the lease owner the caller last read (None: no lease). Swapping on it makes the
    caller know exactly whose lease it took over: a holder whose lease ran out unreleased may still
    have its refresh call in flight, which matters if our own call then gets ``invalid_grant``.
    A lease already ours may be retaken before it runs out (no call of ours is in flight then).
    """
    held_by = Tenant.refresh_lease_owner.is_(None) if holder is None else Tenant.refresh_lease_owner == holder
    result = await session.execute(
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            Tenant.token_version == version,
            Tenant.status == TenantStatus.ACTIVE.value,
            held_by,
            or_(
                Tenant.refresh_lease_until.is_(None),
                Tenant.refresh_lease_until < now,
                Tenant.refresh_lease_owner == owner,
            ),
        )
        .values(refresh_lease_owner=owner, refresh_lease_until=until)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


async def renew_refresh_lease(
    session: AsyncSession, tenant_id: str, *, version: int, owner: str, until: datetime
) -> bool:
    """Extend our lease on ``version`` (the heartbeat); False if it is no longer ours to extend."""
    result = await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.refresh_lease_owner == owner, Tenant.token_version == version)
        .values(refresh_lease_until=until)
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
    version: int,
    owner: str | None,
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    now: datetime,
) -> bool:
    """Record the rotation of ``version``: bump the version and drop the lease in one statement.

    Fenced on ``version`` and, unless ``owner`` is None, on the lease still being ``owner``'s.
    False when the fence matched nothing. ``owner=None`` is only for keeping a successor pair whose
    lease was lost (the version fence alone still refuses to overwrite a newer or reconnected pair).
    """
    fence = [Tenant.id == tenant_id, Tenant.token_version == version]
    if owner is not None:
        fence.append(Tenant.refresh_lease_owner == owner)
    result = await session.execute(
        update(Tenant)
        .where(*fence)
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
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


async def leave_active(
    session: AsyncSession, tenant_id: str, status: TenantStatus, reason: str, *, now: datetime
) -> Tenant | None:
    """Move an active tenant to ``status``; returns it when this call moved it, None when it was
    not active (so what announces the change happens once)."""
    changed = await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.status == TenantStatus.ACTIVE.value)
        .values(status=status.value, status_reason=reason, updated_at=now)
        .returning(Tenant.id)
        .execution_options(synchronize_session=False)
    )
    if changed.scalar_one_or_none() is None:
        return None
    return await session.get(Tenant, tenant_id, populate_existing=True)
