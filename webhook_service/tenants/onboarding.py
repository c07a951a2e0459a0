"""Connecting a FreshBooks business as a tenant, from the browser flow or an operator's token.

Whatever the entry point, a token pair is committed (encrypted, as a pending connection) the moment
FreshBooks hands it over, before ``users/me`` is even called: the refresh token that produced it is
already spent, so losing the new pair would disconnect the customer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from webhook_service.contract import operational
from webhook_service.core.logs import get_logger
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.oauth import Identity, Membership, TokenPair
from webhook_service.inbound import registrar
from webhook_service.runtime import Runtime
from webhook_service.storage import outbox
from webhook_service.storage import pending as pending_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.storage.models import PendingConnection, Tenant, TenantStatus

log = get_logger(__name__)

#: How long a rotated pair waits for its business to be chosen (or for FreshBooks to answer
#: ``users/me``). It is the only live token of that grant, so it is kept long enough for an operator
#: to come back with ``tenants import --resume``.
PENDING_TTL = timedelta(days=7)


class OnboardingError(Exception):
    """The connection cannot be completed as asked; the message is safe to show to the user."""


class HeldPairError(OnboardingError):
    """FreshBooks failed after the grant was rotated; the new pair is held under ``pending_id``."""

    def __init__(self, pending_id: str, cause: FreshBooksError) -> None:
        super().__init__(
            f"{cause}. The token was already rotated; the new pair is kept as {pending_id}. "
            f"Finish with: webhook-service tenants import --resume {pending_id} [--business-id ID]"
        )
        self.pending_id = pending_id


@dataclass(frozen=True)
class ChooseBusiness:
    """Several businesses could be connected: the caller must pick one."""

    pending_id: str
    memberships: tuple[Membership, ...]


async def hold_pair(runtime: Runtime, pair: TokenPair) -> str:
    """Commit a freshly issued pair before anything else happens; returns the pending id."""
    now = utcnow()
    pending = PendingConnection(
        id=new_id("pend"),
        token_enc=runtime.box.encrypt(
            json.dumps(
                {
                    "access_token": pair.access_token,
                    "refresh_token": pair.refresh_token,
                    "expires_at": pair.expires_at.isoformat(),
                    "scopes": list(pair.scopes),
                }
            )
        ),
        created_at=now,
        expires_at=now + PENDING_TTL,
    )
    async with runtime.db.sessions() as session:
        await pending_store.hold(session, pending, now=now)
        await session.commit()
    return pending.id


async def import_refresh_token(
    runtime: Runtime, refresh_token: str, business_id: int | None
) -> Tenant | ChooseBusiness:
    """``tenants import``: rotate the operator's token at once, keep the pair, then connect."""
    pair = await runtime.oauth.refresh(refresh_token)
    return await _complete_held(runtime, await hold_pair(runtime, pair), business_id)


async def connect_with_code(runtime: Runtime, code: str, business_id: int | None) -> Tenant | ChooseBusiness:
    """The browser flow's callback: exchange the code, keep the pair, then connect."""
    pair = await runtime.oauth.exchange_code(code)
    return await _complete_held(runtime, await hold_pair(runtime, pair), business_id)


async def _complete_held(runtime: Runtime, pending_id: str, business_id: int | None) -> Tenant | ChooseBusiness:
    try:
        return await complete(runtime, pending_id, business_id)
    except FreshBooksError as exc:
        raise HeldPairError(pending_id, exc) from exc


async def complete(runtime: Runtime, pending_id: str, business_id: int | None) -> Tenant | ChooseBusiness:
    """Resolve the identity of a held pair and turn it into a tenant (or ask which business)."""
    pair = await _load_pending(runtime, pending_id)
    identity = await runtime.oauth.identity(pair.access_token)
    membership = choose_membership(identity, business_id)
    if membership is None:
        return ChooseBusiness(pending_id, tuple(m for m in identity.memberships if m.connectable))
    tenant = await _upsert_tenant(runtime, pending_id, identity, membership, pair)
    log.info(
        "tenant_connected",
        tenant_id=tenant.id,
        business_id=tenant.business_id,
        account_id=tenant.account_id,
        role=tenant.role,
    )
    return tenant


def choose_membership(identity: Identity, business_id: int | None) -> Membership | None:
    """The membership to connect, None when the user must choose, or a clear refusal."""
    connectable = [m for m in identity.memberships if m.connectable]
    if business_id is not None:
        for membership in identity.memberships:
            if membership.business_id == business_id:
                if not membership.connectable:
                    raise OnboardingError(
                        f"This FreshBooks login is a {membership.role or 'client'} of "
                        f"“{membership.name}” (business {business_id}) and has no account there; "
                        "connect with a login that belongs to the business (owner, manager, ...)."
                    )
                return membership
        raise OnboardingError(f"This FreshBooks login has no membership in business {business_id}.")
    if not connectable:
        raise OnboardingError(
            "This FreshBooks login has no business account to connect: it only has client access "
            "(client role, no account_id). Sign in with the business owner or a team member instead."
        )
    if len(connectable) == 1:
        return connectable[0]
    return None


async def _load_pending(runtime: Runtime, pending_id: str) -> TokenPair:
    async with runtime.db.sessions() as session:
        pending = await pending_store.get(session, pending_id)
    if pending is None or pending.expires_at < utcnow():
        raise OnboardingError("This connection attempt has expired or was already completed; start again.")
    held = json.loads(runtime.box.decrypt(pending.token_enc))
    return TokenPair(
        held["access_token"], held["refresh_token"], datetime.fromisoformat(held["expires_at"]), tuple(held["scopes"])
    )


async def _upsert_tenant(
    runtime: Runtime, pending_id: str, identity: Identity, membership: Membership, pair: TokenPair
) -> Tenant:
    """Create or reconnect the tenant and drop the pending pair in one transaction."""
    assert membership.account_id is not None
    now = utcnow()
    async with runtime.db.sessions() as session:
        tenant = await tenant_store.for_business(session, membership.business_id, now=now)
        previous_status = tenant.status  # None for a new tenant
        tenant.account_id = membership.account_id
        tenant.business_uuid = membership.business_uuid
        tenant.name = membership.name
        tenant.role = membership.role
        tenant.identity_id = identity.identity_id
        tenant.scopes = " ".join(pair.scopes)
        tenant.status = TenantStatus.ACTIVE.value
        tenant.status_reason = None
        tenant.access_token_enc = runtime.box.encrypt(pair.access_token)
        tenant.refresh_token_enc = runtime.box.encrypt(pair.refresh_token)
        tenant.access_expires_at = pair.expires_at
        tenant.refresh_lease_owner = None
        tenant.refresh_lease_until = None
        tenant.last_refreshed_at = now
        tenant.updated_at = now
        await pending_store.drop(session, pending_id)
        if previous_status in (TenantStatus.REAUTH_REQUIRED.value, TenantStatus.DISCONNECTED.value):
            assert previous_status is not None
            event = operational.reconnected(tenant, previous_status=previous_status, at=now)
            await outbox.emit(session, event, now=now)
        await session.commit()
    return tenant


async def disconnect(runtime: Runtime, tenant_id: str) -> tuple[Tenant, str | None]:
    """Revoke the grant at FreshBooks and forget the tokens; returns the revoke error, if any.

    The tenant is disconnected locally even when FreshBooks cannot be reached, so the service stops
    using the grant either way; the error is reported so the operator can revoke it by hand.
    """
    async with runtime.db.sessions() as session:
        tenant = await tenant_store.get(session, tenant_id)
        if tenant is None:
            raise OnboardingError(f"no tenant {tenant_id}")
    if tenant.status == TenantStatus.DISCONNECTED.value:
        raise OnboardingError(f"tenant {tenant_id} is already disconnected")
    removal = await registrar.remove_all(runtime, tenant)
    if removal.error:
        log.warning("callbacks_not_removed", tenant_id=tenant_id, error=removal.error)
    refresh_token = runtime.box.decrypt(tenant.refresh_token_enc)
    revoke_error: str | None = None
    try:
        await runtime.oauth.revoke(refresh_token)
    except FreshBooksError as exc:
        revoke_error = str(exc)
    now = utcnow()
    async with runtime.db.sessions() as session:
        tenant = await tenant_store.get(session, tenant_id)
        assert tenant is not None
        newly = tenant.status != TenantStatus.DISCONNECTED.value  # not by a concurrent disconnect
        tenant.status = TenantStatus.DISCONNECTED.value
        tenant.status_reason = "disconnected by operator"
        tenant.access_token_enc = ""
        tenant.refresh_token_enc = ""
        tenant.token_version += 1
        tenant.updated_at = now
        if newly:
            event = operational.disconnected(tenant, reason=tenant.status_reason, revoked=revoke_error is None, at=now)
            await outbox.emit(session, event, now=now)
        await session.commit()
    log.info("tenant_disconnected", tenant_id=tenant_id, revoked=revoke_error is None)
    return tenant, revoke_error
