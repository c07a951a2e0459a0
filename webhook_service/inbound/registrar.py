"""Reconciling a tenant's FreshBooks callbacks with what the service wants.

Idempotent: list every callback FreshBooks has for the account, create what is missing (one
noun-level callback per configured event, each at its own unguessable URI), ask FreshBooks to resend
verification where it is pending, replace callbacks FreshBooks dropped or disabled, delete the
service's own stale ones (URI under ``PUBLIC_BASE_URL`` but unknown or superseded), and leave every
other callback alone. One replica at a time per tenant (a lease).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from webhook_service.contract import operational
from webhook_service.core.logs import get_logger
from webhook_service.core.pacing import spread
from webhook_service.freshbooks.callbacks import CallbacksAPI, RemoteCallback
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.inbound import verification
from webhook_service.runtime import Runtime
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import leases, outbox
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.storage.models import Callback, CallbackStatus, Tenant, TenantStatus

log = get_logger(__name__)

SYNC_LEASE = timedelta(minutes=5)


@dataclass
class SyncReport:
    tenant_id: str
    created: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def sync_all(runtime: Runtime, *, over: float = 0.0, limit: int = 1, wait: bool = True) -> list[SyncReport]:
    """Every active tenant, in order; ``over`` seconds: spread over them, ``limit`` at once (the
    periodic duty), so a sync costs FreshBooks a steady trickle and not one burst per interval.
    ``wait``: see :func:`sync_tenant`."""
    async with runtime.db.sessions() as session:
        tenants = await tenant_store.list_all(session, status=TenantStatus.ACTIVE.value)
    reports: list[SyncReport] = []

    async def sync(tenant: Tenant) -> None:
        reports.append(await sync_tenant(runtime, tenant, wait=wait))

    await spread(tenants, over, sync, limit=limit)
    return reports


async def sync_tenant(runtime: Runtime, tenant: Tenant, *, wait: bool = True) -> SyncReport:
    """Reconcile ``tenant``'s callbacks, one process at a time. While another holds the tenant's
    sync, ``wait`` (someone asked for this sync: an operator, a connection) waits for it to end
    (never longer than its lease) and then syncs; without it (the periodic duty) the tenant is
    left to that sync."""
    report = SyncReport(tenant.id)
    lease_name, owner = f"callbacks-sync:{tenant.id}", secrets.token_hex(6)
    if not await _take_sync(runtime, lease_name, owner, wait=wait):
        report.error = "another process is syncing this tenant"
        return report
    try:
        await _reconcile(runtime, tenant, report)
    except (FreshBooksError, TenantUnavailable) as exc:
        report.error = str(exc)
        log.warning("callbacks_sync_failed", tenant_id=tenant.id, error=str(exc))
    finally:
        await leases.release(runtime.db, lease_name, owner)
    if not report.error:
        log.info(
            "callbacks_synced",
            tenant_id=tenant.id,
            created=len(report.created),
            resent=len(report.resent),
            replaced=len(report.replaced),
            deleted=len(report.deleted),
        )
    return report


async def _take_sync(runtime: Runtime, lease_name: str, owner: str, *, wait: bool) -> bool:
    deadline = time.monotonic() + SYNC_LEASE.total_seconds()
    delay = 0.05
    while not await leases.acquire(runtime.db, lease_name, owner, SYNC_LEASE):
        if not wait or time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    return True


async def remove_all(runtime: Runtime, tenant: Tenant) -> SyncReport:
    """Delete the service's callbacks at FreshBooks and retire them here (before a disconnect)."""
    report = SyncReport(tenant.id)
    api = CallbacksAPI(runtime.freshbooks)
    ours = runtime.settings.webhook_base_url
    try:
        for remote in await api.list_all(tenant):
            if remote.uri.startswith(ours):
                await api.delete(tenant, remote.callback_id)
                report.deleted.append(remote.callback_id)
    except (FreshBooksError, TenantUnavailable) as exc:
        report.error = str(exc)
    async with runtime.db.sessions() as session:
        report.retired.extend(callback.event for callback in await callback_store.retire_active(session, tenant.id))
        await session.commit()
    return report


async def _reconcile(runtime: Runtime, tenant: Tenant, report: SyncReport) -> None:
    api = CallbacksAPI(runtime.freshbooks)
    remote = await api.list_all(tenant)
    wanted = runtime.events
    async with runtime.db.sessions() as session:
        active = await callback_store.active_for_tenant(session, tenant.id)
    local: dict[str, Callback] = {}
    for row in active:
        if row.event in wanted and row.event not in local:
            local[row.event] = row
        else:
            await _save_retired(runtime, row)
            report.retired.append(row.event)

    keep_ids: set[int] = set()
    for event in wanted:
        callback = local.get(event)
        matches = [r for r in remote if callback is not None and r.uri == callback.uri and r.event == event]
        if callback is None or not matches:
            if callback is not None:  # FreshBooks dropped it: start again at a new URI
                report.replaced.append(event)
            else:
                report.created.append(event)
            created = await _create(runtime, api, tenant, event, replacing=callback)
            keep_ids.add(created)
            continue
        keep = next((r for r in matches if r.verified), matches[0])
        keep_ids.add(keep.callback_id)
        if callback.freshbooks_callback_id != keep.callback_id:  # a sync that changes nothing writes nothing
            await _update(runtime, callback.id, freshbooks_callback_id=keep.callback_id)
        if keep.verified and callback.verifier_enc:
            if callback.status != CallbackStatus.VERIFIED.value:
                await _update(runtime, callback.id, status=CallbackStatus.VERIFIED.value)
            report.unchanged.append(event)
        else:  # pending, failed, disabled by FreshBooks, or verified there without our having the verifier
            if callback.status == CallbackStatus.VERIFIED.value and not keep.verified:
                await _announce_disabled(runtime, callback)
            await _update(runtime, callback.id, status=CallbackStatus.PENDING_VERIFICATION.value)
            await api.resend_verification(tenant, keep.callback_id)
            report.resent.append(event)

    ours = runtime.settings.webhook_base_url
    for stale in remote:
        if stale.uri.startswith(ours) and stale.callback_id not in keep_ids:
            await api.delete(tenant, stale.callback_id)
            report.deleted.append(stale.callback_id)


async def _create(
    runtime: Runtime, api: CallbacksAPI, tenant: Tenant, event: str, *, replacing: Callback | None = None
) -> int:
    """Commit the local row first: FreshBooks POSTs the verification before create even returns.

    ``replacing``: the callback FreshBooks dropped, retired in the same transaction, which also
    commits ``callback.replaced``.
    """
    key = secrets.token_urlsafe(32)
    now = utcnow()
    callback = Callback(
        id=new_id("cb"),
        tenant_id=tenant.id,
        event=event,
        endpoint_key=key,
        uri=f"{runtime.settings.webhook_base_url}{key}",
        status=CallbackStatus.PENDING_VERIFICATION.value,
        active=True,
        created_at=now,
        updated_at=now,
    )
    async with runtime.db.sessions() as session:
        if replacing is not None and await callback_store.retire(session, replacing.id) is not None:
            reason = "FreshBooks no longer lists it (dropped or deleted there)"
            replaced = operational.callback_replaced(replacing, replacement_id=callback.id, reason=reason, at=now)
            await outbox.emit(session, replaced, now=now)
        callback_store.add(session, callback)
        await session.commit()
    try:
        remote: RemoteCallback = await api.create(tenant, event, callback.uri)
    except FreshBooksError as exc:
        await verification.record_failure(runtime, callback.id, f"create failed: {exc}")
        raise
    await _update(runtime, callback.id, freshbooks_callback_id=remote.callback_id)
    return remote.callback_id


async def _announce_disabled(runtime: Runtime, callback: Callback) -> None:
    """A verified callback FreshBooks now reports unverified (it disables one whose URI kept
    failing): ``callback.failed``, committed with the status that takes it out of service."""
    now = utcnow()
    reason = "FreshBooks disabled it (it reports the callback unverified); verification resent"
    async with runtime.db.sessions() as session:
        current = await callback_store.get(session, callback.id, lock=True)
        if current is not None and current.status == CallbackStatus.VERIFIED.value:  # once per change
            await callback_store.update(
                session, callback.id, status=CallbackStatus.PENDING_VERIFICATION.value, last_error=reason
            )
            await outbox.emit(session, operational.callback_failed(current, reason=reason, at=now), now=now)
            await session.commit()


async def _update(runtime: Runtime, callback_id: str, **values: Any) -> None:
    async with runtime.db.sessions() as session:
        if await callback_store.update(session, callback_id, **values) is not None:
            await session.commit()


async def _save_retired(runtime: Runtime, callback: Callback) -> None:
    async with runtime.db.sessions() as session:
        if await callback_store.retire(session, callback.id) is not None:
            await session.commit()
