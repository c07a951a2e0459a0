"""The refresh lease: which process may spend a tenant's refresh token, and for how long.

A refresh token is single-use, so at most one process may send it. The lease is a compare-and-swap
on the tenant row (owner, until), for one ``token_version``; the same SQL on SQLite and PostgreSQL
(:mod:`webhook_service.storage.tenants`). A lease is a promise: work done under it either finishes
while it is held or its writes change nothing (every write is fenced on owner and version).

Whoever waits for a refresh waits for its outcome however long it takes, because the lease outlives
the call: its holder renews it (the heartbeat, every third of ``TOKEN_REFRESH_LEASE_SECONDS``) from
before the call until just before the commit, so a token endpoint slower than the lease never makes
it look abandoned. Only a holder that stopped renewing (crashed, or cut off from the database) loses
its lease to a waiter; each loss is logged ``lease_lost`` and counted in
``webhook_service_leases_lost_total{kind="token_refresh"}``.

What the holder does with its lease (the call and the commit) is :mod:`.token_rotation`'s.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhook_service.config import Settings
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import LEASES_LOST
from webhook_service.freshbooks.token_rows import TOKENS_LOGGER
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant, TenantStatus

log = get_logger(TOKENS_LOGGER)

#: Polling for another holder's outcome: the first wait, doubled up to the last.
LEASE_POLL_START = 0.02
LEASE_POLL_MAX = 0.25


@dataclass(eq=False)
class Lease:
    """Our refresh lease on one tenant row, for one ``token_version``, and its heartbeat."""

    tenant: Tenant
    version: int
    #: Another owner whose lease had run out unreleased when we took it: its call may be in flight.
    took_over_from: str | None
    lost: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    keeper: asyncio.Task[None] | None = None


class RefreshLeases:
    """This process's refresh leases: taking one, keeping it alive, giving it back, noticing its loss."""

    def __init__(self, db: Database, settings: Settings, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        #: This process's name on the leases it holds.
        self.owner = secrets.token_hex(6)

    def _until(self) -> datetime:
        return self._clock() + timedelta(seconds=self._settings.token_refresh_lease_seconds)

    async def acquire(self, tenant: Tenant) -> Lease | None:
        """Our lease on ``tenant`` at the version read, or None while another owner's is live."""
        holder = tenant.refresh_lease_owner
        async with self._db.sessions() as session:
            acquired = await tenant_store.try_acquire_refresh_lease(
                session,
                tenant.id,
                version=tenant.token_version,
                owner=self.owner,
                holder=holder,
                now=self._clock(),
                until=self._until(),
            )
            await session.commit()
        if not acquired:
            return None
        took_over_from = holder if holder not in (None, self.owner) else None
        log.debug(
            "token_lease_acquired", tenant_id=tenant.id, token_version=tenant.token_version, took_over=took_over_from
        )
        return Lease(tenant, tenant.token_version, took_over_from)

    # -- the heartbeat --------------------------------------------------------------------------
    def start_keeping(self, lease: Lease) -> None:
        lease.keeper = asyncio.get_running_loop().create_task(self._keep(lease), name=f"token-lease:{lease.tenant.id}")

    async def stop_keeping(self, lease: Lease) -> None:
        """Stop the heartbeat and wait for a renewal under way, so it cannot race what follows."""
        lease.stop.set()
        if lease.keeper is not None:
            await asyncio.wait({lease.keeper})

    async def _keep(self, lease: Lease) -> None:
        """The heartbeat: renew every third of the lease until stopped or the lease is lost.

        A renewal that fails on a database error is retried at the next beat (two more fit in the
        lease). Never raises.
        """
        interval = self._settings.token_refresh_lease_seconds / 3
        while True:
            try:
                await asyncio.wait_for(lease.stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                renewed = await self._renew(lease)
                ended = not renewed and await self._version_moved(lease)
            except Exception as exc:
                log.warning("token_lease_renewal_failed", tenant_id=lease.tenant.id, error=type(exc).__name__)
                continue
            if renewed:
                log.debug("token_lease_renewed", tenant_id=lease.tenant.id, token_version=lease.version)
                continue
            if ended:  # a pair was stored (or the tenant reconnected): nothing left to hold
                log.debug("token_lease_ended", tenant_id=lease.tenant.id, token_version=lease.version)
            else:
                self.lost(lease, during="renewal")
            return

    async def _renew(self, lease: Lease) -> bool:
        async with self._db.sessions() as session:
            renewed = await tenant_store.renew_refresh_lease(
                session, lease.tenant.id, version=lease.version, owner=self.owner, until=self._until()
            )
            await session.commit()
        return renewed

    async def _version_moved(self, lease: Lease) -> bool:
        async with self._db.sessions() as session:
            current = await tenant_store.get(session, lease.tenant.id)
        return current is None or current.token_version != lease.version

    # -- the end of a lease ---------------------------------------------------------------------
    def lost(self, lease: Lease, *, during: str) -> None:
        """A fenced write matched nothing while the version had not moved: another owner took it."""
        if lease.lost:
            return  # one loss, counted once
        lease.lost = True
        LEASES_LOST.labels(kind="token_refresh").inc()
        log.warning(
            "lease_lost", kind="token_refresh", tenant_id=lease.tenant.id, token_version=lease.version, during=during
        )

    async def release(self, tenant_id: str) -> None:
        """Give the lease back so a waiter need not wait for it to run out; best effort."""
        try:
            async with self._db.sessions() as session:
                await tenant_store.release_refresh_lease(session, tenant_id, owner=self.owner)
                await session.commit()
        except Exception as exc:
            log.warning("token_lease_release_failed", tenant_id=tenant_id, error=type(exc).__name__)
            return
        log.debug("token_lease_released", tenant_id=tenant_id)

    # -- other holders --------------------------------------------------------------------------
    async def outcome_elsewhere(self, lease: Lease) -> Tenant | None:
        """After ``invalid_grant``: the row once no other refresh of ``lease.version`` can succeed.

        Returns at once when the version moved, the tenant left ``active``, or no lease but ours is
        held by anyone with a call in flight. Waits without limit while another owner's lease is
        live (it is renewed while its call runs), and up to ``FRESHBOOKS_TIMEOUT`` +
        ``TOKEN_REFRESH_LEASE_SECONDS`` on a holder whose lease ran out unreleased (the one we took
        over, or another that stopped renewing): its answer may still come and be stored.
        """
        loop = asyncio.get_running_loop()
        grace = self._settings.freshbooks_timeout + self._settings.token_refresh_lease_seconds
        deadline = loop.time() + grace if lease.took_over_from is not None else None
        delay = LEASE_POLL_START
        waiting = False
        while True:
            async with self._db.sessions() as session:
                current = await tenant_store.get(session, lease.tenant.id)
            if current is None or current.token_version != lease.version:
                return current
            if current.status != TenantStatus.ACTIVE.value:
                return current
            holder = current.refresh_lease_owner
            if holder is None:
                return current  # released without a new pair: nobody is refreshing
            if holder != self.owner:
                until = current.refresh_lease_until
                if until is not None and until >= self._clock():
                    deadline = None  # live: its outcome decides, however long it takes
                elif deadline is None:
                    deadline = loop.time() + grace
            elif deadline is None:
                return current  # our own lease, taken from nobody: nobody else is refreshing
            if deadline is not None and loop.time() >= deadline:
                return current
            if not waiting:
                waiting = True
                log.debug(
                    "token_refresh_invalid_grant_waiting",
                    tenant_id=lease.tenant.id,
                    token_version=lease.version,
                    holder=holder,
                    bounded=deadline is not None,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, LEASE_POLL_MAX)
