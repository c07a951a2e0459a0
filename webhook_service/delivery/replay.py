"""Replaying deliveries: one by one, or everything that failed for a subscription since a time.

A replay is a new attempt of the same message: same event, same body, same ``webhook-id``; it
starts a fresh retry schedule and keeps the earlier attempts on record.
"""

from __future__ import annotations

from datetime import datetime

from webhook_service.runtime import Runtime
from webhook_service.storage import delivery_records as records
from webhook_service.storage import subscriptions as subscription_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription
from webhook_service.storage.paging import Position

REPLAYABLE = (DeliveryStatus.FAILED.value, DeliveryStatus.DEAD.value, DeliveryStatus.SUCCEEDED.value)
RECOVERABLE = (DeliveryStatus.FAILED.value, DeliveryStatus.DEAD.value)


class ReplayError(ValueError):
    """The replay cannot be done as asked; the message says why."""


class DeliveryNotFound(LookupError):
    pass


async def replay(runtime: Runtime, delivery_id: str) -> Delivery:
    async with runtime.db.sessions() as session:
        delivery = await records.get(session, delivery_id)
        if delivery is None:
            raise DeliveryNotFound(delivery_id)
        subscription = await subscription_store.get(session, delivery.subscription_id)
        _require_enabled(subscription)
        if delivery.status not in REPLAYABLE:
            raise ReplayError(f"delivery {delivery_id} is {delivery.status}: it is already queued")
        _requeue(delivery, utcnow())
        await session.commit()
    runtime.signals.deliveries_ready()
    return delivery


async def recover(runtime: Runtime, subscription_id: str, since: datetime) -> list[str]:
    """Replay every failed or dead delivery of the subscription created at or after ``since``."""
    now = utcnow()
    async with runtime.db.sessions() as session:
        _require_enabled(await subscription_store.get(session, subscription_id), subscription_id)
        failed = await records.lock_in_status(session, subscription_id, since=since, statuses=RECOVERABLE)
        recovered = []
        for delivery in failed:
            _requeue(delivery, now)
            recovered.append(delivery.id)
        await session.commit()
    runtime.signals.deliveries_ready()
    return recovered


def _requeue(delivery: Delivery, now: datetime) -> None:
    delivery.status = DeliveryStatus.PENDING.value
    delivery.schedule_base = delivery.attempts
    delivery.next_attempt_at = now
    delivery.lease_owner = None
    delivery.lease_until = None
    delivery.completed_at = None
    delivery.updated_at = now


def _require_enabled(subscription: Subscription | None, subscription_id: str | None = None) -> None:
    if subscription is None:
        raise DeliveryNotFound(subscription_id or "subscription")
    if not subscription.enabled:
        raise ReplayError(
            f"subscription {subscription.id} is disabled ({subscription.disabled_reason or 'by an operator'}); "
            "enable it first"
        )


async def get_with_attempts(runtime: Runtime, delivery_id: str) -> tuple[Delivery, list[DeliveryAttempt]]:
    async with runtime.db.sessions() as session:
        delivery = await records.get(session, delivery_id)
        if delivery is None:
            raise DeliveryNotFound(delivery_id)
        return delivery, await records.attempts(session, delivery_id)


async def list_deliveries(
    runtime: Runtime,
    *,
    status: str | None = None,
    subscription_id: str | None = None,
    event_id: str | None = None,
    limit: int = 100,
    before: Position | None = None,
) -> list[Delivery]:
    async with runtime.db.sessions() as session:
        return await records.list_deliveries(
            session, status=status, subscription_id=subscription_id, event_id=event_id, limit=limit, before=before
        )
