"""The token columns of the tenant row: read as a token a caller may use, or written after a rotation.

The token manager (:mod:`webhook_service.freshbooks.tokens`) reads the row in three places: before a
call, while waiting for someone else's refresh, and after its own refresh was superseded. The rules
for what such a read may hand out live here once, so the three cannot drift apart:

* only an ``active`` tenant is usable; anything else is :class:`TenantUnavailable`;
* never at a ``token_version`` whose refresh token this process spent without storing the successor
  (:meth:`TokenRows.mark_spent`): that token is dead, and sending it again would only fail while
  the tenant is being flagged for re-authorization;
* the last token read or stored per tenant is kept, so a hot path does not read the row every call.
  It is only a hint: a 401 (e.g. another process rotated it) sends the caller to ``refresh``, which
  reads the database, and every failure path evicts it.

The tokens are encrypted at rest; this is the one place that decrypts them and encrypts a new pair
(:meth:`TokenRows.store_pair`, the fenced write; which fence to use is the rotation's decision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from webhook_service.contract import operational
from webhook_service.core.crypto import SecretBox
from webhook_service.core.logs import get_logger
from webhook_service.freshbooks.oauth import TokenPair
from webhook_service.storage import outbox
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.database import Database
from webhook_service.storage.models import Tenant, TenantStatus

#: The logger of every token manager line, whichever of its modules writes it: the split into
#: modules is for readers, not for whoever filters the logs.
TOKENS_LOGGER = "webhook_service.freshbooks.tokens"

log = get_logger(TOKENS_LOGGER)


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


class TokenRows:
    """Reads of the tenant row as tokens, the per-tenant hint, and the versions spent for nothing."""

    def __init__(
        self, db: Database, box: SecretBox, clock: Callable[[], datetime], *, reconnect_url: Callable[[int], str]
    ) -> None:
        self._db = db
        self._box = box
        self._clock = clock
        self._reconnect_url = reconnect_url
        #: (tenant_id, token_version) whose refresh token was spent but whose successor was lost.
        self._spent: set[tuple[str, int]] = set()
        #: The last token read or stored per tenant (a hint; see the module docstring).
        self._cached: dict[str, AccessToken] = {}

    def cached(self, tenant_id: str) -> AccessToken | None:
        return self._cached.get(tenant_id)

    def forget(self, tenant_id: str) -> None:
        self._cached.pop(tenant_id, None)

    def remember(self, token: AccessToken) -> AccessToken:
        self._cached[token.tenant_id] = token
        return token

    async def load_usable(self, tenant_id: str) -> Tenant:
        """The tenant's row, if it may be called; else :class:`TenantUnavailable` (and no hint kept)."""
        async with self._db.sessions() as session:
            tenant = await tenant_store.get(session, tenant_id)
        if tenant is None or tenant.status != TenantStatus.ACTIVE.value:
            self.forget(tenant_id)
        if tenant is None:
            raise TenantUnavailable(tenant_id, "unknown")
        if tenant.status != TenantStatus.ACTIVE.value:
            raise TenantUnavailable(tenant_id, tenant.status, tenant.status_reason)
        if (tenant_id, tenant.token_version) in self._spent:
            raise TenantUnavailable(tenant_id, TenantStatus.REAUTH_REQUIRED.value, "token_commit_failed")
        return tenant

    def token_of(self, tenant: Tenant) -> AccessToken:
        """The row's access token, decrypted, and kept as the tenant's hint."""
        return self.remember(
            AccessToken(
                tenant_id=tenant.id,
                token=self._box.decrypt(tenant.access_token_enc),
                version=tenant.token_version,
                expires_at=tenant.access_expires_at,
            )
        )

    def refresh_token_of(self, tenant: Tenant) -> str:
        """The row's refresh token, decrypted: for the rotation to spend, and nobody else."""
        return self._box.decrypt(tenant.refresh_token_enc)

    async def store_pair(self, tenant_id: str, version: int, pair: TokenPair, *, owner: str | None) -> bool:
        """Replace ``version``'s pair with ``pair``: whether the fence matched (the version, and the
        lease ``owner`` unless None; see :mod:`.token_rotation` for when None is right)."""
        async with self._db.sessions() as session:
            stored = await tenant_store.store_rotated_pair(
                session,
                tenant_id,
                version=version,
                owner=owner,
                access_token_enc=self._box.encrypt(pair.access_token),
                refresh_token_enc=self._box.encrypt(pair.refresh_token),
                expires_at=pair.expires_at,
                now=self._clock(),
            )
            await session.commit()
        return stored

    def mark_spent(self, tenant_id: str, version: int) -> None:
        """``version``'s refresh token was sent and its successor lost: this process never sends it again."""
        self._spent.add((tenant_id, version))
        self.forget(tenant_id)

    async def mark_reauth_required(self, tenant_id: str, reason: str) -> None:
        """Stop using an active tenant until a person reconnects it, and tell the subscribers to
        ``tenant.reauth_required`` (once: a tenant already waiting is left as it is)."""
        self.forget(tenant_id)
        now = self._clock()
        async with self._db.sessions() as session:
            tenant = await tenant_store.leave_active(session, tenant_id, TenantStatus.REAUTH_REQUIRED, reason, now=now)
            if tenant is not None:
                url = self._reconnect_url(tenant.business_id)
                event = operational.reauth_required(tenant, reason=reason, reconnect_url=url, at=now)
                await outbox.emit(session, event, now=now)
            await session.commit()
        if tenant is not None:
            log.error("tenant_reauth_required", tenant_id=tenant_id, reason=reason)
