"""The token manager: the only code that spends a refresh token.

FreshBooks refresh tokens are single-use and rotate on every refresh. Spending one twice, or losing
the pair it returns, disconnects the customer. So:

* one refresh at a time per tenant: an ``asyncio.Lock`` inside the process, a compare-and-swap
  lease on the tenant row across processes (same SQL on SQLite and PostgreSQL);
* the new pair is committed before anyone uses it; if that commit fails the tenant is flagged, the
  failure is logged loudly, and this process never sends the spent token again;
* ``invalid_grant`` is first checked against the database: another process may have rotated the
  token, in which case its stored pair is used. Only a real ``invalid_grant`` marks the tenant
  ``reauth_required``; after that no request is made for it until it is reconnected.
"""

from __future__ import annotations

import asyncio
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhook_service.config import Settings
from webhook_service.crypto import SecretBox
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.oauth import OAuthClient
from webhook_service.logs import get_logger
from webhook_service.metrics import TOKEN_REFRESHES
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant, TenantStatus

log = get_logger(__name__)

_LEASE_POLL_START = 0.02
_LEASE_POLL_MAX = 0.25


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
        """Replace the pair of ``stale_version``; if someone already did, return theirs."""
        self._cached.pop(tenant_id, None)
        async with self._lock(tenant_id):
            delay = _LEASE_POLL_START
            while True:
                tenant = await self._load_usable(tenant_id)
                if tenant.token_version != stale_version:
                    return self._token_of(tenant)
                if await self._acquire_lease(tenant_id, stale_version):
                    break
                await asyncio.sleep(delay)  # another process is refreshing: wait for its result
                delay = min(delay * 2, _LEASE_POLL_MAX)
            return await self._rotate(tenant, stale_version)

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

    # -- internals ------------------------------------------------------------------------------
    def _lock(self, tenant_id: str) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

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

    async def _acquire_lease(self, tenant_id: str, version: int) -> bool:
        now = self._clock()
        async with self._db.sessions() as session:
            acquired = await tenant_store.try_acquire_refresh_lease(
                session,
                tenant_id,
                version=version,
                owner=self._owner,
                now=now,
                until=now + timedelta(seconds=self._settings.token_refresh_lease_seconds),
            )
            await session.commit()
        return acquired

    async def _release_lease(self, tenant_id: str) -> None:
        async with self._db.sessions() as session:
            await tenant_store.release_refresh_lease(session, tenant_id, owner=self._owner)
            await session.commit()

    async def _rotate(self, tenant: Tenant, stale_version: int) -> AccessToken:
        try:
            pair = await self._oauth.refresh(self._box.decrypt(tenant.refresh_token_enc))
        except FreshBooksError as exc:
            TOKEN_REFRESHES.labels(outcome="refused" if exc.is_invalid_grant else "error").inc()
            return await self._refresh_refused(tenant.id, stale_version, exc)
        except BaseException:
            TOKEN_REFRESHES.labels(outcome="error").inc()
            await self._release_lease(tenant.id)
            raise
        now = self._clock()
        try:
            async with self._db.sessions() as session:
                await tenant_store.store_rotated_pair(
                    session,
                    tenant.id,
                    access_token_enc=self._box.encrypt(pair.access_token),
                    refresh_token_enc=self._box.encrypt(pair.refresh_token),
                    expires_at=pair.expires_at,
                    now=now,
                )
                await session.commit()
        except Exception as exc:
            TOKEN_REFRESHES.labels(outcome="error").inc()
            await self._rotation_lost(tenant.id, stale_version, exc)
            raise TokenPersistError(
                f"tenant {tenant.id}: the rotated token pair could not be stored; re-authorize"
            ) from exc
        self._cached[tenant.id] = AccessToken(tenant.id, pair.access_token, stale_version + 1, pair.expires_at)
        TOKEN_REFRESHES.labels(outcome="ok").inc()
        log.info(
            "token_refreshed",
            tenant_id=tenant.id,
            token_version=stale_version + 1,
            expires_at=pair.expires_at.isoformat(),
        )
        return AccessToken(tenant.id, pair.access_token, stale_version + 1, pair.expires_at)

    async def _refresh_refused(self, tenant_id: str, stale_version: int, exc: FreshBooksError) -> AccessToken:
        if not exc.is_invalid_grant:
            await self._release_lease(tenant_id)
            log.warning("token_refresh_failed", tenant_id=tenant_id, status=exc.status, error=str(exc))
            raise exc
        async with self._db.sessions() as session:
            current = await tenant_store.get(session, tenant_id)
        if current is not None and current.token_version != stale_version:
            # Another process rotated between our read and our request: its pair is good.
            log.info("token_rotated_elsewhere", tenant_id=tenant_id, token_version=current.token_version)
            if current.status != TenantStatus.ACTIVE.value:
                raise TenantUnavailable(tenant_id, current.status, current.status_reason) from exc
            return self._token_of(current)
        await self._release_lease(tenant_id)
        await self.mark_reauth_required(tenant_id, f"invalid_grant: {exc.message}")
        raise TenantUnavailable(tenant_id, TenantStatus.REAUTH_REQUIRED.value, "invalid_grant") from exc

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
