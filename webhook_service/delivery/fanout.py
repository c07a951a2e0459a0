"""Turning a normalized event into one delivery per interested subscription."""

from __future__ import annotations

import json
import secrets
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.delivery.matching import matches
from webhook_service.storage.models import Delivery, DeliveryStatus, Subscription


def new_delivery_id() -> str:
    return f"dlv_{secrets.token_hex(12)}"


async def add_deliveries(
    session: AsyncSession, *, event_id: str, event_type: str, tenant_id: str, now: datetime
) -> list[Delivery]:
    """Add (not commit) a pending delivery of the event for each enabled, matching subscription."""
    subscriptions = await session.execute(
        select(Subscription).where(
            Subscription.enabled.is_(True),
            or_(Subscription.tenant_id.is_(None), Subscription.tenant_id == tenant_id),
        )
    )
    deliveries = [
        Delivery(
            id=new_delivery_id(),
            event_id=event_id,
            subscription_id=subscription.id,
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            schedule_base=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for subscription in subscriptions.scalars()
        if matches(json.loads(subscription.event_types), event_type)
    ]
    session.add_all(deliveries)
    return deliveries
