"""Turning a normalized event into one delivery per interested subscription."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhook_service.delivery.matching import matches
from webhook_service.storage.models import DeliveryStatus, Subscription


def new_delivery_id() -> str:
    return f"dlv_{secrets.token_hex(12)}"


def delivery_rows(
    subscriptions: Sequence[Subscription], *, event_id: str, event_type: str, tenant_id: str, now: datetime
) -> list[dict[str, Any]]:
    """A pending delivery of the event for each subscription that scopes and filters it in."""
    return [
        {
            "id": new_delivery_id(),
            "event_id": event_id,
            "subscription_id": subscription.id,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "schedule_base": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for subscription in subscriptions
        if subscription.tenant_id in (None, tenant_id) and matches(json.loads(subscription.event_types), event_type)
    ]
