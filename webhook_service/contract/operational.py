"""Operational events: the service telling subscribers about its own state.

Each builder takes the facts of one state change and returns an :class:`Operational` that storage
commits in the transaction making the change (:func:`~webhook_service.storage.outbox.emit`), so an
event exists exactly when its change does: once per change, never for a change rolled back.

Every operational event names the thing that changed the way a FreshBooks event names its object:
``data.resource`` (the noun: ``tenant``, ``subscription``...), ``data.object_id``, and
``data.sequence``, so one ordering rule serves both kinds (see README → Events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook_service.contract import types
from webhook_service.core.timeparse import isoformat_utc


@dataclass(frozen=True)
class Operational:
    type: str
    tenant_id: str | None
    resource: str
    object_id: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    """The type's own fields; ``tenant_id``, ``resource``, ``object_id``, ``origin`` and
    ``sequence`` are added when it is emitted."""


def reauth_required(tenant: Any, *, reason: str, reconnect_url: str, at: datetime) -> Operational:
    """The tenant's grant stopped working (refresh token refused): a person must reconnect it."""
    return _about_tenant(types.TENANT_REAUTH_REQUIRED, tenant, at, reason=reason, reconnect_url=reconnect_url)


def reconnected(tenant: Any, *, previous_status: str, at: datetime) -> Operational:
    """A tenant that was waiting for re-authorization, or disconnected, is connected again."""
    return _about_tenant(types.TENANT_RECONNECTED, tenant, at, previous_status=previous_status)


def disconnected(tenant: Any, *, reason: str, revoked: bool, at: datetime) -> Operational:
    """An operator disconnected the tenant; ``revoked`` says whether FreshBooks confirmed the revoke."""
    return _about_tenant(types.TENANT_DISCONNECTED, tenant, at, reason=reason, revoked=revoked)


def subscription_disabled(subscription: Any, *, reason: str, at: datetime) -> Operational:
    """Sent to the other subscriptions that ask for it; the URL is left out (it may hold a token)."""
    return Operational(
        types.SUBSCRIPTION_DISABLED,
        subscription.tenant_id,
        "subscription",
        subscription.id,
        at,
        {"subscription_id": subscription.id, "description": subscription.description or "", "reason": reason},
    )


def delivery_dead(
    *,
    delivery_id: str,
    event_id: str,
    event_type: str,
    tenant_id: str | None,
    subscription_id: str,
    attempts: int,
    last_status_code: int | None,
    last_error: str | None,
    at: datetime,
) -> Operational:
    """A delivery's retry schedule is exhausted; it stays replayable."""
    return Operational(
        types.DELIVERY_DEAD,
        tenant_id,
        "delivery",
        delivery_id,
        at,
        {
            "delivery_id": delivery_id,
            "event_id": event_id,
            "event_type": event_type,
            "subscription_id": subscription_id,
            "attempts": attempts,
            "last_status_code": last_status_code,
            "last_error": last_error,
        },
    )


def callback_failed(callback: Any, *, reason: str, at: datetime) -> Operational:
    """FreshBooks refused the callback's verification: no event of its noun flows until it is fixed."""
    return Operational(
        types.CALLBACK_FAILED, callback.tenant_id, "callback", callback.id, at, _callback(callback, reason)
    )


def callback_replaced(callback: Any, *, replacement_id: str, reason: str, at: datetime) -> Operational:
    """FreshBooks dropped or disabled the callback and the sync registered ``replacement_id`` instead;
    events of its noun sent meanwhile were not received (the backfill recovers them)."""
    data = {**_callback(callback, reason), "replacement_callback_id": replacement_id}
    return Operational(types.CALLBACK_REPLACED, callback.tenant_id, "callback", callback.id, at, data)


def backfill_recovered(tenant_id: str, *, recovered: dict[str, int], started_at: datetime, at: datetime) -> Operational:
    """One sweep of a tenant found object versions no webhook had brought: how many, per resource."""
    counts = {name: count for name, count in sorted(recovered.items()) if count}
    return Operational(
        types.BACKFILL_RECOVERED,
        tenant_id,
        "backfill",
        tenant_id,
        at,
        {"recovered": counts, "total": sum(counts.values()), "sweep_started_at": isoformat_utc(started_at)},
    )


def _about_tenant(kind: str, tenant: Any, at: datetime, **fields: Any) -> Operational:
    """A ``tenant.*`` event: which business, then the type's own fields."""
    business = {"account_id": tenant.account_id, "business_id": tenant.business_id, "name": tenant.name or ""}
    return Operational(kind, tenant.id, "tenant", tenant.id, at, {**business, **fields})


def _callback(callback: Any, reason: str) -> dict[str, Any]:
    """The callback's identity; never its URI, whose path is the secret that routes deliveries."""
    return {
        "callback_id": callback.id,
        "event": callback.event,
        "freshbooks_callback_id": callback.freshbooks_callback_id,
        "reason": reason,
    }
