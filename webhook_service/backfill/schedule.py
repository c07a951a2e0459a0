"""The scheduled sweep inside the service: every tenant, every ``BACKFILL_INTERVAL``, from its watermark.

Each tenant's sweep is claimed with a lease lasting most of the interval and not released, so across
replicas a tenant is swept once per interval, whichever replica gets there first.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

from webhook_service.backfill.sweep import backfill_tenant
from webhook_service.core.logs import get_logger
from webhook_service.runtime import Runtime
from webhook_service.storage import leases
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import TenantStatus

log = get_logger(__name__)


async def sweep_due_tenants(runtime: Runtime, owner: str) -> int:
    """Sweep every active tenant whose lease is free; returns how many were swept."""
    interval = runtime.settings.backfill_interval
    async with runtime.db.sessions() as session:
        tenants = await tenant_store.list_all(session, status=TenantStatus.ACTIVE.value)
    swept = 0
    for tenant in tenants:
        if not await leases.acquire(runtime.db, f"backfill:{tenant.id}", owner, timedelta(seconds=interval * 0.9)):
            continue
        report = await backfill_tenant(runtime, tenant)
        swept += 1
        emitted = sum(part.emitted for part in report.resources)
        log.info("backfill_swept", tenant_id=tenant.id, emitted=emitted, failed=report.failed)
    return swept


async def run_forever(runtime: Runtime) -> None:
    owner = f"sweep-{secrets.token_hex(6)}"
    while True:
        try:
            await sweep_due_tenants(runtime, owner)
        except Exception:
            log.exception("backfill_sweep_failed")
        await asyncio.sleep(runtime.settings.backfill_interval)
