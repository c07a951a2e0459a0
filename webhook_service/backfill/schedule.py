"""The scheduled sweep inside the service: every tenant, every ``BACKFILL_INTERVAL``, from its watermark.

One worker runs it at a time (the backfill duty, :mod:`~webhook_service.duties`); the tenants' sweeps
are spread over the interval, each tenant's requests paced (``FRESHBOOKS_BACKGROUND_RATE``).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from webhook_service.backfill.sweep import backfill_tenant
from webhook_service.core.logs import get_logger
from webhook_service.core.pacing import every, spread
from webhook_service.runtime import Runtime
from webhook_service.storage import leases
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import Tenant, TenantStatus

log = get_logger(__name__)


async def sweep_due_tenants(runtime: Runtime, *, over: float = 0.0) -> int:
    """Sweep every active tenant whose turn has come, spread over ``over`` seconds; returns how many
    were swept.

    A tenant's turn is a lease lasting most of the interval, stamped with an owner nobody else has
    and never released: it marks when the tenant was last swept, so across replicas (and across a
    restart, or a duty moving to another worker) a tenant is swept once per interval.
    """
    settings = runtime.settings
    turn = timedelta(seconds=settings.backfill_interval * 0.9)
    async with runtime.db.sessions() as session:
        tenants = await tenant_store.list_all(session, status=TenantStatus.ACTIVE.value)
    swept = 0

    async def sweep(tenant: Tenant) -> None:
        nonlocal swept
        if not await leases.acquire(runtime.db, f"backfill:{tenant.id}", f"turn-{secrets.token_hex(6)}", turn):
            return
        report = await backfill_tenant(runtime, tenant)
        swept += 1
        emitted = sum(part.emitted for part in report.resources)
        log.info("backfill_swept", tenant_id=tenant.id, emitted=emitted, failed=report.failed)

    await spread(tenants, over, sweep, limit=settings.duty_concurrency)
    return swept


async def run_forever(runtime: Runtime) -> None:
    """The backfill duty (:mod:`~webhook_service.duties`): one cycle per ``BACKFILL_INTERVAL``, its
    sweeps spread over it."""
    interval = runtime.settings.backfill_interval
    await every(interval, lambda: sweep_due_tenants(runtime, over=interval), failure="backfill_sweep_failed")
