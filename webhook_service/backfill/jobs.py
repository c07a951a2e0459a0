"""Backfill jobs: a tenant's backfill started on request (the admin API, the console), run in the
background of the process that was asked, with its progress in the database for anyone to poll.

One job per tenant at a time (the database holds to it: a partial unique index on running jobs):
asking again while one runs answers with that one. A job writes its progress every second
(``HEARTBEAT``); one silent for ``ABANDONED_AFTER`` was left by a process that stopped, reads as
``abandoned``, and is marked so when a new one starts. A job
that a stopping process cancels says so (``failed``, "stopped with the process"); the scans it
finished are kept, as after any backfill (watermarks only move over what was committed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from webhook_service.backfill.sweep import backfill_tenant
from webhook_service.core.logs import get_logger
from webhook_service.freshbooks.catalogue import CATALOGUE, Page
from webhook_service.runtime import Runtime
from webhook_service.storage import backfill_jobs
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.storage.models import BackfillJob, TenantStatus
from webhook_service.storage.session import Conflict

log = get_logger(__name__)

HEARTBEAT = 1.0
ABANDONED_AFTER = timedelta(seconds=60)


class TenantNotFound(LookupError):
    pass


class TenantNotActive(ValueError):
    pass


async def start(runtime: Runtime, tenant_id: str) -> tuple[BackfillJob, bool]:
    """The tenant's running job, or a new one started now; True when it is new."""
    now = utcnow()
    async with runtime.db.sessions() as session:
        tenant = await tenant_store.get(session, tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        if tenant.status != TenantStatus.ACTIVE.value:
            raise TenantNotActive(f"tenant {tenant_id} is {tenant.status}: FreshBooks cannot be asked for it")
        running = await backfill_jobs.running_for(session, tenant_id, heard_since=now - ABANDONED_AFTER)
        if running is not None:
            return running, False
        await backfill_jobs.abandon_silent(session, tenant_id, heard_before=now - ABANDONED_AFTER, now=now)
        try:
            job = await backfill_jobs.add(session, new_id("bfj"), tenant_id, list(CATALOGUE), now)
        except Conflict:  # another request (here or on another replica) started one since the look
            await session.rollback()
            running = await backfill_jobs.running_for(session, tenant_id, heard_since=now - ABANDONED_AFTER)
            if running is None:
                raise
            return running, False
        await session.commit()
    runtime.tasks.spawn(_run(runtime, job.id, tenant_id), name=f"backfill-job:{job.id}")
    log.info("backfill_job_started", job_id=job.id, tenant_id=tenant_id)
    return job, True


async def get(runtime: Runtime, job_id: str) -> BackfillJob | None:
    async with runtime.db.sessions() as session:
        return await backfill_jobs.get(session, job_id)


async def latest(runtime: Runtime, tenant_id: str) -> BackfillJob | None:
    async with runtime.db.sessions() as session:
        return await backfill_jobs.latest_for(session, tenant_id)


def state(job: BackfillJob, now: datetime) -> str:
    """``running``, ``succeeded`` or ``failed``; ``abandoned`` for a running job nobody updates."""
    if job.status == "running" and job.updated_at < now - ABANDONED_AFTER:
        return "abandoned"
    return job.status


@dataclass
class _Progress:
    """What the scan has reported so far (kept in memory; :func:`_beat` writes it)."""

    resources: list[str]
    current: str | None = None
    scanned: int = 0
    emitted: dict[str, int] = field(default_factory=dict)

    def update(self, _: str, resource: str, page: Page, emitted: int) -> None:
        self.current = resource
        self.scanned += len(page.items)
        self.emitted[resource] = emitted

    def values(self) -> dict[str, Any]:
        done = self.resources.index(self.current) if self.current in self.resources else 0
        return {
            "current_resource": self.current,
            "resources_done": done,
            "scanned": self.scanned,
            "emitted": sum(self.emitted.values()),
        }


async def _run(runtime: Runtime, job_id: str, tenant_id: str) -> None:
    progress = _Progress(list(CATALOGUE))

    outcome: dict[str, Any] = {"status": "failed", "error": "stopped with the process"}
    try:
        async with runtime.db.sessions() as session:
            tenant = await tenant_store.get(session, tenant_id)
        if tenant is None:
            outcome = {"status": "failed", "error": "the tenant is gone"}
            return
        heartbeat = asyncio.get_running_loop().create_task(_beat(runtime, job_id, progress))
        try:
            report = await backfill_tenant(runtime, tenant, progress=progress.update)
        finally:
            heartbeat.cancel()
        errors = [f"{part.resource}: {part.error}" for part in report.resources if part.error]
        outcome = {
            "status": "failed" if report.failed else "succeeded",
            "error": report.error or ("; ".join(errors)[:2000] if errors else None),
            "scanned": sum(part.scanned for part in report.resources),
            "emitted": sum(part.emitted for part in report.resources),
            "resources_done": len(report.resources),
            "current_resource": None,
        }
    except Exception as exc:  # a job that fails says so; the service goes on
        log.exception("backfill_job_failed", job_id=job_id)
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        await asyncio.shield(_write(runtime, job_id, {**outcome, "finished_at": utcnow()}))
        log.info("backfill_job_finished", job_id=job_id, status=outcome["status"])


async def _beat(runtime: Runtime, job_id: str, progress: _Progress) -> None:
    """A write every ``HEARTBEAT`` while the job runs, pages or not: a long listing is not silence."""
    while True:
        await asyncio.sleep(HEARTBEAT)
        await _write(runtime, job_id, progress.values())


async def _write(runtime: Runtime, job_id: str, values: dict[str, Any]) -> None:
    try:
        async with runtime.db.sessions() as session:
            await backfill_jobs.record(session, job_id, updated_at=utcnow(), **values)
            await session.commit()
    except Exception:  # progress is best effort; the outcome is written again at the end
        log.warning("backfill_job_progress_not_written", job_id=job_id, exc_info=True)
