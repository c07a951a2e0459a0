"""Queries on ``backfill_state``: each tenant's and resource's watermark and last run."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import BackfillState


async def get(session: AsyncSession, tenant_id: str, resource: str) -> BackfillState | None:
    return await session.get(BackfillState, (tenant_id, resource))


async def of_tenant(session: AsyncSession, tenant_id: str) -> dict[str, BackfillState]:
    """Every resource's state for one tenant, by resource: one read per sweep, not one per resource."""
    rows = await session.execute(select(BackfillState).where(BackfillState.tenant_id == tenant_id))
    return {state.resource: state for state in rows.scalars()}


async def list_all(session: AsyncSession) -> list[BackfillState]:
    rows = await session.execute(select(BackfillState).order_by(BackfillState.tenant_id, BackfillState.resource))
    return list(rows.scalars())


async def record_run(
    session: AsyncSession,
    tenant_id: str,
    resource: str,
    *,
    at: datetime,
    error: str | None,
    scanned: int,
    emitted: int,
    watermark: datetime | None,
) -> None:
    """Record a run of the resource's backfill (its row is created on the first); the watermark
    moves to ``watermark`` if given and later, never back."""
    state = await get(session, tenant_id, resource)
    if state is None:
        state = BackfillState(tenant_id=tenant_id, resource=resource, recovered_total=0)
        session.add(state)
    if watermark is not None and (state.watermark is None or watermark > state.watermark):
        state.watermark = watermark
    state.last_run_at = at
    state.last_run_status = "failed" if error else "ok"
    state.last_error = error
    state.last_scanned = scanned
    state.last_emitted = emitted
    state.recovered_total = (state.recovered_total or 0) + emitted
