"""The token manager: the only code that spends a refresh token.

FreshBooks refresh tokens are single-use and rotate on every refresh. Spending one twice, or losing
the pair it returns, disconnects the customer. So:

* one refresh at a time per tenant: an ``asyncio.Lock`` inside the process, a compare-and-swap
  lease on the tenant row across processes (same SQL on SQLite and PostgreSQL). Whoever waits for
  a refresh waits for its outcome however long it takes, because the lease outlives the call: its
  holder renews it (a heartbeat every third of ``TOKEN_REFRESH_LEASE_SECONDS``, fenced on owner and
  ``token_version``) from before the call until just before the commit, so a token endpoint slower
  than the lease never makes it look abandoned. Only a holder that stopped renewing (crashed, or
  cut off from the database) loses its lease to a waiter.
* the call and the commit run as a task the manager owns; callers await it through
  ``asyncio.shield``, so a cancelled caller (a worker stopped at shutdown) never abandons a call
  whose answer can still arrive. :meth:`TokenManager.close` waits for such tasks, bounded by
  ``FRESHBOOKS_TIMEOUT`` plus a margin.
* the new pair is committed before anyone uses it, fenced on our lease and on the version it
  replaces. If that fence matches nothing our lease was lost (renewals failed and another process
  took it over) while we hold the only valid successor pair: the token is single-use, so of two
  spenders at most one got a pair, and it is us. Dropping it would disconnect the customer, so it
  is stored fenced on the version alone, logged ``token_stored_without_lease`` at critical level
  and counted in ``webhook_service_leases_lost_total{kind="token_refresh"}`` (as is every lease
  loss, logged ``lease_lost`` at warning). The version fence still never overwrites a newer pair (a
  reconnect or a disconnect happened meanwhile: our pair is then dropped, logged at error). The
  other spender got ``invalid_grant`` and, by the next rule, finds and uses our pair.
* if the commit itself fails the tenant is flagged, the failure is logged loudly, and this process
  never sends the spent token again;
* ``invalid_grant`` marks the tenant ``reauth_required`` only when no refresh by anyone is in
  flight or has just succeeded. The row is read again: a newer version is used; another owner's
  live lease is waited out, then looked at again; a lease we took over from an owner whose lease
  ran out unreleased (its call may still be answered, then committed by the rule above) gets
  ``FRESHBOOKS_TIMEOUT`` + ``TOKEN_REFRESH_LEASE_SECONDS`` for the version to move. Only then is it a
  real ``invalid_grant``: the tenant is marked once, and no request is made for it until it is
  reconnected.

This module is the facade callers use (:class:`TokenManager`) and the wait for a refresh in flight;
the parts live beside it, one concept each:

* :mod:`.token_rows`: the token columns of the tenant row, read as a usable token (the per-tenant
  hint, the spent versions, ``reauth_required``) and written fenced; and the names callers catch
  (:class:`TenantUnavailable`, :class:`TokenPersistError`), still importable from here;
* :mod:`.token_lease`: the lease and its heartbeat, and waiting out another holder;
* :mod:`.token_rotation`: the call and the fenced commit, as a task that outlives its caller.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta

from webhook_service.config import Settings
from webhook_service.core.crypto import SecretBox
from webhook_service.core.logs import get_logger
from webhook_service.core.pacing import Pace, spread
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.oauth import OAuthClient
from webhook_service.freshbooks.token_lease import LEASE_POLL_MAX, LEASE_POLL_START, Lease, RefreshLeases
from webhook_service.freshbooks.token_rotation import Rotations
from webhook_service.freshbooks.token_rows import (
    TOKENS_LOGGER,
    AccessToken,
    TenantUnavailable,
    TokenPersistError,
    TokenRows,
)
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant

__all__ = ["AccessToken", "TenantUnavailable", "TokenManager", "TokenPersistError"]

log = get_logger(TOKENS_LOGGER)


class TokenManager:
    def __init__(
        self,
        db: Database,
        oauth: OAuthClient,
        box: SecretBox,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        pace: Pace | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._pace = pace or Pace()
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._rows = TokenRows(db, box, clock, reconnect_url=settings.reconnect_url)
        self._leases = RefreshLeases(db, settings, clock)
        self._rotations = Rotations(oauth, settings, rows=self._rows, leases=self._leases)

    # -- public ---------------------------------------------------------------------------------
    async def access_token(self, tenant_id: str) -> AccessToken:
        """A usable access token, refreshed first when it expires within the tenant's margin."""
        cached = self._rows.cached(tenant_id)
        if cached is not None and cached.expires_at - self._clock() > self.refresh_margin(tenant_id, cached.version):
            return cached
        tenant = await self._rows.load_usable(tenant_id)
        if tenant.access_expires_at - self._clock() > self.refresh_margin(tenant.id, tenant.token_version):
            return self._rows.token_of(tenant)
        return await self.refresh(tenant_id, stale_version=tenant.token_version)

    async def refresh(self, tenant_id: str, *, stale_version: int) -> AccessToken:
        """Replace the pair of ``stale_version``; if someone already did, return theirs.

        Waits, however long, while another refresh of it is in flight in this process or another.
        Cancelling the caller does not cancel the refresh it started (see the module docstring).
        """
        self._rows.forget(tenant_id)
        async with self._lock(tenant_id):
            outcome = await self._current_or_lease(tenant_id, stale_version)
            if isinstance(outcome, AccessToken):
                return outcome
            # A duty's refresh (proactive, or one its API call needed) is the tenant's request too:
            # it takes the tenant's turn (a no-op outside the duties), well inside the lease.
            await self._pace.turn(tenant_id)
            return await asyncio.shield(self._rotations.start(outcome))

    async def close(self) -> None:
        """Let the rotations in flight finish before the HTTP client and the database go away.

        Their callers may be gone (cancelled at shutdown), but an answer still on its way is the
        tenant's only valid pair. Past ``FRESHBOOKS_TIMEOUT`` plus a margin they are cancelled.
        """
        await self._rotations.drain()

    def refresh_margin(self, tenant_id: str, version: int) -> timedelta:
        """60-180 s (configurable) before expiry, spread per tenant so refreshes do not bunch up."""
        low = self._settings.token_refresh_margin_min
        high = max(low, self._settings.token_refresh_margin_max)
        spread = zlib.crc32(f"{tenant_id}:{version}".encode()) % (high - low + 1)
        return timedelta(seconds=low + spread)

    async def refresh_expiring(self, *, over: float = 0.0, limit: int = 1) -> int:
        """Proactively refresh every active tenant inside its margin; returns how many were.

        ``over`` seconds: the refreshes due are spread over them (:func:`~webhook_service.core.pacing.spread`),
        ``limit`` at once, so tenants connected together (an import) do not refresh in one burst.
        """
        now = self._clock()
        settings = self._settings
        horizon = now + timedelta(seconds=max(settings.token_refresh_margin_min, settings.token_refresh_margin_max))
        async with self._db.sessions() as session:
            tenants = await tenant_store.expiring(session, before=horizon)
        due = [t for t in tenants if t.access_expires_at - now <= self.refresh_margin(t.id, t.token_version)]
        refreshed = 0

        async def refresh(tenant: Tenant) -> None:
            nonlocal refreshed
            try:
                await self.refresh(tenant.id, stale_version=tenant.token_version)
                refreshed += 1
            except (TenantUnavailable, FreshBooksError, TokenPersistError) as exc:
                log.warning("proactive_refresh_failed", tenant_id=tenant.id, error=str(exc))

        await spread(due, over, refresh, limit=limit)
        return refreshed

    async def mark_reauth_required(self, tenant_id: str, reason: str) -> None:
        await self._rows.mark_reauth_required(tenant_id, reason)

    # -- waiting for a refresh, or taking the lease to do it --------------------------------------
    def _lock(self, tenant_id: str) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

    async def _current_or_lease(self, tenant_id: str, stale_version: int) -> AccessToken | Lease:
        """The stored token once ``stale_version`` is replaced, or our lease to replace it.

        No give-up: a live lease elsewhere is being renewed, so its refresh is still under way.
        """
        delay = LEASE_POLL_START
        waiting = False
        while True:
            await self._rotations.join(tenant_id)
            tenant = await self._rows.load_usable(tenant_id)
            if tenant.token_version != stale_version:
                if waiting:
                    log.debug("token_refresh_wait_over", tenant_id=tenant_id, token_version=tenant.token_version)
                return self._rows.token_of(tenant)
            lease = await self._leases.acquire(tenant)
            if lease is not None:
                return lease
            if not waiting:
                waiting = True
                log.debug(
                    "token_refresh_waiting",
                    tenant_id=tenant_id,
                    token_version=stale_version,
                    holder=tenant.refresh_lease_owner,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, LEASE_POLL_MAX)
