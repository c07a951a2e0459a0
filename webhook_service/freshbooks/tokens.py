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
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhook_service.config import Settings
from webhook_service.core.crypto import SecretBox
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import LEASES_LOST, TOKEN_REFRESHES
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.oauth import OAuthClient, TokenPair
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant, TenantStatus

log = get_logger(__name__)

_LEASE_POLL_START = 0.02
_LEASE_POLL_MAX = 0.25
#: Added to ``FRESHBOOKS_TIMEOUT`` by :meth:`TokenManager.close`: room for the commit after the answer.
_CLOSE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class AccessToken:
    tenant_id: str
    token: str = field(repr=False)
    version: int
    expires_at: datetime


class TenantUnavailable(Exception):
    """The tenant cannot be called: unknown, disconnected, or waiting for re-authorization."""

    def __init__(self, tenant_id: str, status: str, reason: str | None = None) -> None:
        super().__init__(f"tenant {tenant_id} is {status}" + (f": {reason}" if reason else ""))
        self.tenant_id = tenant_id
        self.status = status
        self.reason = reason


class TokenPersistError(RuntimeError):
    """A rotated pair could not be committed; the tenant needs re-authorization."""


@dataclass(eq=False)
class _Lease:
    """Our refresh lease on one tenant row, for one ``token_version``, and its heartbeat."""

    tenant: Tenant
    version: int
    #: Another owner whose lease had run out unreleased when we took it: its call may be in flight.
    took_over_from: str | None
    lost: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    keeper: asyncio.Task[None] | None = None


class TokenManager:
    def __init__(
        self,
        db: Database,
        oauth: OAuthClient,
        box: SecretBox,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._oauth = oauth
        self._box = box
        self._settings = settings
        self._clock = clock
        self._owner = f"{secrets.token_hex(6)}"
        self._locks: dict[str, asyncio.Lock] = {}
        #: The rotation (refresh call + commit) in flight per tenant; it outlives a cancelled caller.
        self._rotations: dict[str, asyncio.Task[AccessToken]] = {}
        #: (tenant_id, token_version) whose refresh token was spent but whose successor was lost.
        self._spent: set[tuple[str, int]] = set()
        #: The last token read or stored per tenant, so a hot path does not read the row every call.
        #: It is only a hint: a 401 (e.g. another process rotated it) sends the caller to ``refresh``,
        #: which reads the database, and every failure path evicts it.
        self._cached: dict[str, AccessToken] = {}

    # -- public ---------------------------------------------------------------------------------
    async def access_token(self, tenant_id: str) -> AccessToken:
        """A usable access token, refreshed first when it expires within the tenant's margin."""
        cached = self._cached.get(tenant_id)
        if cached is not None and cached.expires_at - self._clock() > self.refresh_margin(tenant_id, cached.version):
            return cached
        tenant = await self._load_usable(tenant_id)
        if tenant.access_expires_at - self._clock() > self.refresh_margin(tenant.id, tenant.token_version):
            return self._token_of(tenant)
        return await self.refresh(tenant_id, stale_version=tenant.token_version)

    async def refresh(self, tenant_id: str, *, stale_version: int) -> AccessToken:
        """Replace the pair of ``stale_version``; if someone already did, return theirs.

        Waits, however long, while another refresh of it is in flight in this process or another.
        Cancelling the caller does not cancel the refresh it started (see the module docstring).
        """
        self._cached.pop(tenant_id, None)
        async with self._lock(tenant_id):
            outcome = await self._current_or_lease(tenant_id, stale_version)
            if isinstance(outcome, AccessToken):
                return outcome
            return await asyncio.shield(self._start_rotation(outcome))

    async def close(self) -> None:
        """Let the rotations in flight finish before the HTTP client and the database go away.

        Their callers may be gone (cancelled at shutdown), but an answer still on its way is the
        tenant's only valid pair. Past ``FRESHBOOKS_TIMEOUT`` plus a margin they are cancelled.
        """
        running = set(self._rotations.values())
        if not running:
            return
        log.info("token_rotations_draining", count=len(running))
        _, pending = await asyncio.wait(running, timeout=self._settings.freshbooks_timeout + _CLOSE_MARGIN_SECONDS)
        for task in pending:
            log.error("token_rotation_abandoned", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def refresh_margin(self, tenant_id: str, version: int) -> timedelta:
        """60-180 s (configurable) before expiry, spread per tenant so refreshes do not bunch up."""
        low = self._settings.token_refresh_margin_min
        high = max(low, self._settings.token_refresh_margin_max)
        spread = zlib.crc32(f"{tenant_id}:{version}".encode()) % (high - low + 1)
        return timedelta(seconds=low + spread)

    async def refresh_expiring(self) -> int:
        """Proactively refresh every active tenant inside its margin; returns how many were."""
        async with self._db.sessions() as session:
            tenants = await tenant_store.list_all(session, status=TenantStatus.ACTIVE.value)
        refreshed = 0
        now = self._clock()
        for tenant in tenants:
            if tenant.access_expires_at - now > self.refresh_margin(tenant.id, tenant.token_version):
                continue
            try:
                await self.refresh(tenant.id, stale_version=tenant.token_version)
                refreshed += 1
            except (TenantUnavailable, FreshBooksError, TokenPersistError) as exc:
                log.warning("proactive_refresh_failed", tenant_id=tenant.id, error=str(exc))
        return refreshed

    async def mark_reauth_required(self, tenant_id: str, reason: str) -> None:
        self._cached.pop(tenant_id, None)
        async with self._db.sessions() as session:
            await tenant_store.set_status(session, tenant_id, TenantStatus.REAUTH_REQUIRED, reason, now=self._clock())
            await session.commit()
        log.error("tenant_reauth_required", tenant_id=tenant_id, reason=reason)

    # -- waiting for a refresh, or taking the lease to do it --------------------------------------
    def _lock(self, tenant_id: str) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

    async def _current_or_lease(self, tenant_id: str, stale_version: int) -> AccessToken | _Lease:
        """The stored token once ``stale_version`` is replaced, or our lease to replace it.

        No give-up: a live lease elsewhere is being renewed, so its refresh is still under way.
        """
        delay = _LEASE_POLL_START
        waiting = False
        while True:
            await self._join_rotation(tenant_id)
            tenant = await self._load_usable(tenant_id)
            if tenant.token_version != stale_version:
                if waiting:
                    log.debug("token_refresh_wait_over", tenant_id=tenant_id, token_version=tenant.token_version)
                return self._token_of(tenant)
            lease = await self._acquire_lease(tenant)
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
            delay = min(delay * 2, _LEASE_POLL_MAX)

    async def _join_rotation(self, tenant_id: str) -> None:
        """Wait for our own rotation of this tenant that a cancelled caller left running."""
        running = self._rotations.get(tenant_id)
        if running is not None:
            log.debug("token_refresh_joining", tenant_id=tenant_id)
            await asyncio.wait({running})  # never cancels it, even if we are cancelled

    async def _load_usable(self, tenant_id: str) -> Tenant:
        async with self._db.sessions() as session:
            tenant = await tenant_store.get(session, tenant_id)
        if tenant is None or tenant.status != TenantStatus.ACTIVE.value:
            self._cached.pop(tenant_id, None)
        if tenant is None:
            raise TenantUnavailable(tenant_id, "unknown")
        if tenant.status != TenantStatus.ACTIVE.value:
            raise TenantUnavailable(tenant_id, tenant.status, tenant.status_reason)
        if (tenant_id, tenant.token_version) in self._spent:
            raise TenantUnavailable(tenant_id, TenantStatus.REAUTH_REQUIRED.value, "token_commit_failed")
        return tenant

    def _token_of(self, tenant: Tenant) -> AccessToken:
        token = AccessToken(
            tenant_id=tenant.id,
            token=self._box.decrypt(tenant.access_token_enc),
            version=tenant.token_version,
            expires_at=tenant.access_expires_at,
        )
        self._cached[tenant.id] = token
        return token

    # -- the lease ------------------------------------------------------------------------------
    def _lease_until(self) -> datetime:
        return self._clock() + timedelta(seconds=self._settings.token_refresh_lease_seconds)

    async def _acquire_lease(self, tenant: Tenant) -> _Lease | None:
        holder = tenant.refresh_lease_owner
        async with self._db.sessions() as session:
            acquired = await tenant_store.try_acquire_refresh_lease(
                session,
                tenant.id,
                version=tenant.token_version,
                owner=self._owner,
                holder=holder,
                now=self._clock(),
                until=self._lease_until(),
            )
            await session.commit()
        if not acquired:
            return None
        took_over_from = holder if holder not in (None, self._owner) else None
        log.debug(
            "token_lease_acquired", tenant_id=tenant.id, token_version=tenant.token_version, took_over=took_over_from
        )
        return _Lease(tenant, tenant.token_version, took_over_from)

    async def _keep_lease(self, lease: _Lease) -> None:
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
                renewed = await self._renew_lease(lease)
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
                self._lease_lost(lease, during="renewal")
            return

    async def _renew_lease(self, lease: _Lease) -> bool:
        async with self._db.sessions() as session:
            renewed = await tenant_store.renew_refresh_lease(
                session, lease.tenant.id, version=lease.version, owner=self._owner, until=self._lease_until()
            )
            await session.commit()
        return renewed

    async def _version_moved(self, lease: _Lease) -> bool:
        async with self._db.sessions() as session:
            current = await tenant_store.get(session, lease.tenant.id)
        return current is None or current.token_version != lease.version

    def _start_keeping(self, lease: _Lease) -> None:
        lease.keeper = asyncio.get_running_loop().create_task(
            self._keep_lease(lease), name=f"token-lease:{lease.tenant.id}"
        )

    async def _stop_keeping(self, lease: _Lease) -> None:
        """Stop the heartbeat and wait for a renewal under way, so it cannot race what follows."""
        lease.stop.set()
        if lease.keeper is not None:
            await asyncio.wait({lease.keeper})

    def _lease_lost(self, lease: _Lease, *, during: str) -> None:
        """A fenced write matched nothing while the version had not moved: another owner took it."""
        if lease.lost:
            return  # one loss, counted once
        lease.lost = True
        LEASES_LOST.labels(kind="token_refresh").inc()
        log.warning(
            "lease_lost", kind="token_refresh", tenant_id=lease.tenant.id, token_version=lease.version, during=during
        )

    async def _release_lease(self, tenant_id: str) -> None:
        """Give the lease back so a waiter need not wait for it to run out; best effort."""
        try:
            async with self._db.sessions() as session:
                await tenant_store.release_refresh_lease(session, tenant_id, owner=self._owner)
                await session.commit()
        except Exception as exc:
            log.warning("token_lease_release_failed", tenant_id=tenant_id, error=type(exc).__name__)
            return
        log.debug("token_lease_released", tenant_id=tenant_id)

    # -- the rotation ---------------------------------------------------------------------------
    def _start_rotation(self, lease: _Lease) -> asyncio.Task[AccessToken]:
        tenant_id = lease.tenant.id
        task = asyncio.get_running_loop().create_task(self._rotate(lease), name=f"token-rotation:{tenant_id}")
        self._rotations[tenant_id] = task
        task.add_done_callback(functools.partial(self._rotation_finished, tenant_id))
        return task

    def _rotation_finished(self, tenant_id: str, task: asyncio.Task[AccessToken]) -> None:
        if self._rotations.get(tenant_id) is task:
            del self._rotations[tenant_id]
        if not task.cancelled():
            task.exception()  # retrieved: the rotation logged it, and a caller still waiting gets it

    async def _rotate(self, lease: _Lease) -> AccessToken:
        """Spend the refresh token and commit its successor, renewing the lease meanwhile."""
        self._start_keeping(lease)
        try:
            try:
                pair = await self._oauth.refresh(self._box.decrypt(lease.tenant.refresh_token_enc))
            except FreshBooksError as exc:
                TOKEN_REFRESHES.labels(outcome="refused" if exc.is_invalid_grant else "error").inc()
                return await self._refresh_refused(lease, exc)
            except BaseException:
                TOKEN_REFRESHES.labels(outcome="error").inc()
                await self._stop_keeping(lease)
                await self._release_lease(lease.tenant.id)
                raise
            # The last renewal left at least two thirds of a lease for the commit; stopping first
            # keeps a late renewal from reading the committed row as a lost lease.
            await self._stop_keeping(lease)
            return await self._commit(lease, pair)
        finally:
            await self._stop_keeping(lease)

    async def _commit(self, lease: _Lease, pair: TokenPair) -> AccessToken:
        """Store the successor pair before anyone uses it; a lost lease does not lose the pair."""
        tenant_id = lease.tenant.id
        try:
            stored = not lease.lost and await self._store_pair(lease, pair, owner=self._owner)
            if not stored:
                stored = await self._store_pair(lease, pair, owner=None)
                if stored:  # the version had not moved: our lease was taken over
                    self._lease_lost(lease, during="commit")
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
            return self._token_of(await self._load_usable(tenant_id))  # reconnected or disconnected meanwhile
        token = AccessToken(tenant_id, pair.access_token, lease.version + 1, pair.expires_at)
        self._cached[tenant_id] = token
        log.info(
            "token_refreshed",
            tenant_id=tenant_id,
            token_version=token.version,
            expires_at=pair.expires_at.isoformat(),
        )
        return token

    async def _store_pair(self, lease: _Lease, pair: TokenPair, *, owner: str | None) -> bool:
        async with self._db.sessions() as session:
            stored = await tenant_store.store_rotated_pair(
                session,
                lease.tenant.id,
                version=lease.version,
                owner=owner,
                access_token_enc=self._box.encrypt(pair.access_token),
                refresh_token_enc=self._box.encrypt(pair.refresh_token),
                expires_at=pair.expires_at,
                now=self._clock(),
            )
            await session.commit()
        return stored

    async def _refresh_refused(self, lease: _Lease, exc: FreshBooksError) -> AccessToken:
        tenant_id = lease.tenant.id
        if not exc.is_invalid_grant:
            await self._stop_keeping(lease)
            await self._release_lease(tenant_id)
            log.warning("token_refresh_failed", tenant_id=tenant_id, status=exc.status, error=str(exc))
            raise exc
        current = await self._outcome_elsewhere(lease)
        await self._stop_keeping(lease)
        if current is not None and current.token_version != lease.version:
            # Another refresh of the same token won (it spent it first): its pair is good.
            log.info("token_rotated_elsewhere", tenant_id=tenant_id, token_version=current.token_version)
            if current.status != TenantStatus.ACTIVE.value:
                raise TenantUnavailable(tenant_id, current.status, current.status_reason) from exc
            return self._token_of(current)
        await self._release_lease(tenant_id)
        if current is None:
            raise TenantUnavailable(tenant_id, "unknown") from exc
        if current.status != TenantStatus.ACTIVE.value:  # already marked (or disconnected) by someone else
            raise TenantUnavailable(tenant_id, current.status, current.status_reason) from exc
        await self.mark_reauth_required(tenant_id, f"invalid_grant: {exc.message}")
        raise TenantUnavailable(tenant_id, TenantStatus.REAUTH_REQUIRED.value, "invalid_grant") from exc

    async def _outcome_elsewhere(self, lease: _Lease) -> Tenant | None:
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
        delay = _LEASE_POLL_START
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
            if holder != self._owner:
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
            delay = min(delay * 2, _LEASE_POLL_MAX)

    async def _rotation_lost(self, tenant_id: str, stale_version: int, exc: Exception) -> None:
        """The old refresh token is spent and the new one is gone: make sure nobody sends either."""
        self._spent.add((tenant_id, stale_version))
        self._cached.pop(tenant_id, None)
        log.critical(
            "token_commit_failed",
            tenant_id=tenant_id,
            error=f"{type(exc).__name__}: {exc}",
            action="the tenant must re-authorize; the spent refresh token will not be sent again",
        )
        try:
            await self.mark_reauth_required(tenant_id, "token_commit_failed: rotated pair could not be stored")
        except Exception as flag_exc:  # the database may be down altogether
            log.critical("tenant_flag_failed", tenant_id=tenant_id, error=type(flag_exc).__name__)
