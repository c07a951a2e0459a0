"""The rotation: spending a refresh token under our lease and committing the pair it returns.

Why it runs as a task of its own, apart from the caller that asked for it: the refresh token is
single-use, so once it is sent the answer on its way is the tenant's only valid pair. A caller can
be cancelled (a worker stopped at shutdown), so callers await the task through ``asyncio.shield``
and it outlives them; a later caller joins it (:meth:`Rotations.join`) instead of starting another,
and :meth:`Rotations.drain` (the manager's ``close``) waits for it, bounded by
``FRESHBOOKS_TIMEOUT`` plus a margin.

The new pair is committed before anyone uses it, fenced on our lease and on the version it
replaces. If that fence matches nothing our lease was lost (renewals failed and another process took
it over) while we hold the only valid successor pair: the token is single-use, so of two spenders at
most one got a pair, and it is us. Dropping it would disconnect the customer, so it is stored fenced
on the version alone, logged ``token_stored_without_lease`` at critical level and counted as a lost
lease. The version fence still never overwrites a newer pair (a reconnect or a disconnect happened
meanwhile: our pair is then dropped, logged at error). The other spender got ``invalid_grant`` and
finds and uses our pair (:meth:`Rotations._refresh_refused`). If the commit itself fails the tenant
is flagged, the failure is logged loudly, and this process never sends the spent token again.
"""

from __future__ import annotations

import asyncio
import functools

from webhook_service.config import Settings
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import TOKEN_REFRESHES
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.oauth import OAuthClient, TokenPair
from webhook_service.freshbooks.token_lease import Lease, RefreshLeases
from webhook_service.freshbooks.token_rows import (
    TOKENS_LOGGER,
    AccessToken,
    TenantUnavailable,
    TokenPersistError,
    TokenRows,
)
from webhook_service.storage.models import TenantStatus

log = get_logger(TOKENS_LOGGER)

#: Added to ``FRESHBOOKS_TIMEOUT`` by :meth:`Rotations.drain`: room for the commit after the answer.
CLOSE_MARGIN_SECONDS = 5.0


class Rotations:
    """The rotation (refresh call + commit) in flight per tenant, owned here rather than by a caller."""

    def __init__(self, oauth: OAuthClient, settings: Settings, *, rows: TokenRows, leases: RefreshLeases) -> None:
        self._oauth = oauth
        self._settings = settings
        self._rows = rows
        self._leases = leases
        self._running: dict[str, asyncio.Task[AccessToken]] = {}

    def start(self, lease: Lease) -> asyncio.Task[AccessToken]:
        """Spend the token ``lease`` was taken for; the task is ours, the caller only awaits it."""
        tenant_id = lease.tenant.id
        task = asyncio.get_running_loop().create_task(self._rotate(lease), name=f"token-rotation:{tenant_id}")
        self._running[tenant_id] = task
        task.add_done_callback(functools.partial(self._finished, tenant_id))
        return task

    async def join(self, tenant_id: str) -> None:
        """Wait for our own rotation of this tenant that a cancelled caller left running."""
        running = self._running.get(tenant_id)
        if running is not None:
            log.debug("token_refresh_joining", tenant_id=tenant_id)
            await asyncio.wait({running})  # never cancels it, even if we are cancelled

    async def drain(self) -> None:
        """Let the rotations in flight finish; past ``FRESHBOOKS_TIMEOUT`` plus a margin, cancel them."""
        running = set(self._running.values())
        if not running:
            return
        log.info("token_rotations_draining", count=len(running))
        _, pending = await asyncio.wait(running, timeout=self._settings.freshbooks_timeout + CLOSE_MARGIN_SECONDS)
        for task in pending:
            log.error("token_rotation_abandoned", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _finished(self, tenant_id: str, task: asyncio.Task[AccessToken]) -> None:
        if self._running.get(tenant_id) is task:
            del self._running[tenant_id]
        if not task.cancelled():
            task.exception()  # retrieved: the rotation logged it, and a caller still waiting gets it

    # -- the call -------------------------------------------------------------------------------
    async def _rotate(self, lease: Lease) -> AccessToken:
        """Spend the refresh token and commit its successor, renewing the lease meanwhile."""
        self._leases.start_keeping(lease)
        try:
            try:
                pair = await self._oauth.refresh(self._rows.refresh_token_of(lease.tenant))
            except FreshBooksError as exc:
                TOKEN_REFRESHES.labels(outcome="refused" if exc.is_invalid_grant else "error").inc()
                return await self._refresh_refused(lease, exc)
            except BaseException:
                TOKEN_REFRESHES.labels(outcome="error").inc()
                await self._leases.stop_keeping(lease)
                await self._leases.release(lease.tenant.id)
                raise
            # The last renewal left at least two thirds of a lease for the commit; stopping first
            # keeps a late renewal from reading the committed row as a lost lease.
            await self._leases.stop_keeping(lease)
            return await self._commit(lease, pair)
        finally:
            await self._leases.stop_keeping(lease)

    async def _refresh_refused(self, lease: Lease, exc: FreshBooksError) -> AccessToken:
        """``invalid_grant`` marks the tenant ``reauth_required`` only when no refresh by anyone is in
        flight or has just succeeded (:meth:`RefreshLeases.outcome_elsewhere` waits for that); any
        other refusal gives the lease back and is the caller's error."""
        tenant_id = lease.tenant.id
        if not exc.is_invalid_grant:
            await self._leases.stop_keeping(lease)
            await self._leases.release(tenant_id)
            log.warning("token_refresh_failed", tenant_id=tenant_id, status=exc.status, error=str(exc))
            raise exc
        current = await self._leases.outcome_elsewhere(lease)
        await self._leases.stop_keeping(lease)
        if current is not None and current.token_version != lease.version:
            # Another refresh of the same token won (it spent it first): its pair is good.
            log.info("token_rotated_elsewhere", tenant_id=tenant_id, token_version=current.token_version)
            if current.status != TenantStatus.ACTIVE.value:
                raise TenantUnavailable(tenant_id, current.status, current.status_reason) from exc
            return self._rows.token_of(current)
        await self._leases.release(tenant_id)
        if current is None:
            raise TenantUnavailable(tenant_id, "unknown") from exc
        if current.status != TenantStatus.ACTIVE.value:  # already marked (or disconnected) by someone else
            raise TenantUnavailable(tenant_id, current.status, current.status_reason) from exc
        await self._rows.mark_reauth_required(tenant_id, f"invalid_grant: {exc.message}")
        raise TenantUnavailable(tenant_id, TenantStatus.REAUTH_REQUIRED.value, "invalid_grant") from exc

    # -- the commit -----------------------------------------------------------------------------
    async def _commit(self, lease: Lease, pair: TokenPair) -> AccessToken:
        """Store the successor pair before anyone uses it; a lost lease does not lose the pair."""
        tenant_id = lease.tenant.id
        try:
            stored = not lease.lost and await self._rows.store_pair(
                lease.tenant.id, lease.version, pair, owner=self._leases.owner
            )
            if not stored:
                stored = await self._rows.store_pair(lease.tenant.id, lease.version, pair, owner=None)
                if stored:  # the version had not moved: our lease was taken over
                    self._leases.lost(lease, during="commit")
                    log.critical(
                        "token_stored_without_lease",
                        tenant_id=tenant_id,
                        token_version=lease.version + 1,
                        action="kept the only valid successor pair; look for database trouble or clock skew",
                    )
        except Exception as exc:
            TOKEN_REFRESHES.labels(outcome="error").inc()
            await self._rotation_lost(tenant_id, lease.version, exc)
            raise TokenPersistError(
                f"tenant {tenant_id}: the rotated token pair could not be stored; re-authorize"
            ) from exc
        TOKEN_REFRESHES.labels(outcome="ok").inc()
        if not stored:
            log.error("token_pair_superseded", tenant_id=tenant_id, token_version=lease.version)
            return self._rows.token_of(await self._rows.load_usable(tenant_id))  # reconnected or disconnected meanwhile
        token = self._rows.remember(AccessToken(tenant_id, pair.access_token, lease.version + 1, pair.expires_at))
        log.info(
            "token_refreshed",
            tenant_id=tenant_id,
            token_version=token.version,
            expires_at=pair.expires_at.isoformat(),
        )
        return token

    async def _rotation_lost(self, tenant_id: str, stale_version: int, exc: Exception) -> None:
        """The old refresh token is spent and the new one is gone: make sure nobody sends either."""
        self._rows.mark_spent(tenant_id, stale_version)
        log.critical(
            "token_commit_failed",
            tenant_id=tenant_id,
            error=f"{type(exc).__name__}: {exc}",
            action="the tenant must re-authorize; the spent refresh token will not be sent again",
        )
        try:
            await self._rows.mark_reauth_required(tenant_id, "token_commit_failed: rotated pair could not be stored")
        except Exception as flag_exc:  # the database may be down altogether
            log.critical("tenant_flag_failed", tenant_id=tenant_id, error=type(flag_exc).__name__)
