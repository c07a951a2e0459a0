"""Queries on ``backfill_jobs``: the backfills operators start, and how far each has got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import BackfillJob
from webhook_service.storage.session import conflicts


async def add(session: AsyncSession, job_id: str, tenant_id: str, resources: list[str], now: datetime) -> BackfillJob:
    """A running job (flushed, not committed). A tenant has one running job at most (a partial
    unique index): a second one, however the two requests interleave, raises ``Conflict``."""
    job = BackfillJob(
        id=job_id,
        tenant_id=tenant_id,
        status="running",
        resources=",".join(resources),
        resources_done=0,
        scanned=0,
        emitted=0,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    with conflicts():
        await session.flush()
    return job


async def abandon_silent(session: AsyncSession, tenant_id: str, *, heard_before: datetime, now: datetime) -> None:
    """Mark the tenant's running jobs nobody has updated since ``heard_before`` abandoned (their
    process stopped), so a new one may start (not committed)."""
    await session.execute(
        update(BackfillJob)
        .where(
            BackfillJob.tenant_id == tenant_id,
            BackfillJob.status == "running",
            BackfillJob.updated_at < heard_before,
        )
        .values(status="abandoned", error="the process running it stopped", finished_at=now)
        .execution_options(synchronize_session=False)
    )


async def get(session: AsyncSession, job_id: str) -> BackfillJob | None:
    return await session.get(BackfillJob, job_id)


async def running_for(session: AsyncSession, tenant_id: str, *, heard_since: datetime) -> BackfillJob | None:
    """The tenant's job still running and heard from since ``heard_since`` (one a process that died
    left behind stops counting once it is silent)."""
    rows = await session.execute(
        select(BackfillJob)
        .where(
            BackfillJob.tenant_id == tenant_id,
            BackfillJob.status == "running",
            BackfillJob.updated_at >= heard_since,
        )
        .order_by(BackfillJob.created_at.desc())
        .limit(1)
    )
    return rows.scalar_one_or_none()


async def latest_for(session: AsyncSession, tenant_id: str) -> BackfillJob | None:
    rows = await session.execute(
        select(BackfillJob).where(BackfillJob.tenant_id == tenant_id).order_by(BackfillJob.created_at.desc()).limit(1)
    )
    return rows.scalar_one_or_none()


async def record(session: AsyncSession, job_id: str, **values: Any) -> None:
    """Write progress or the outcome (not committed); only a running job changes."""
    await session.execute(
        update(BackfillJob)
        .where(BackfillJob.id == job_id, BackfillJob.status == "running")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
