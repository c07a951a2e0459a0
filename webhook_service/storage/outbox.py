"""Events into the database with their deliveries, in the caller's transaction: fan-out, and the
operational events each state change commits with itself.

Fan-out chooses, per enabled subscription, by tenant scope, type pattern
(:mod:`~webhook_service.contract.matching`) and payload filter
(:mod:`~webhook_service.contract.filters`). A strict-order subscription's deliveries carry the
object's key and sequence, which is what a claim orders them by.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.contract.filters import from_json
from webhook_service.contract.matching import matches
from webhook_service.contract.operational import Operational
from webhook_service.contract.types import ORIGIN_SERVICE
from webhook_service.core.jsontext import compact
from webhook_service.core.timeparse import isoformat_utc
from webhook_service.storage import sequences
from webhook_service.storage import subscriptions as subscription_store
from webhook_service.storage.bulk import write
from webhook_service.storage.columns import time_ordered_id
from webhook_service.storage.leased import SubscriptionToSend
from webhook_service.storage.models import Delivery, DeliveryStatus, Event


def new_event_id() -> str:
    return time_ordered_id("evt")


def new_delivery_id() -> str:
    return time_ordered_id("dlv")


def ordering_key(tenant_id: str | None, resource: str, object_id: str) -> str:
    return f"{tenant_id or ''}/{resource}/{object_id}"


def delivery_rows(
    subscriptions: Sequence[SubscriptionToSend],
    *,
    event_id: str,
    event_type: str,
    tenant_id: str | None,
    document: Mapping[str, Any],
    ordered_as: tuple[str, int],
    now: datetime,
) -> list[dict[str, Any]]:
    """A pending delivery of the event for each subscription that scopes, types and filters it in.

    ``ordered_as``: the event's ordering key and sequence, kept on strict-order deliveries.
    """
    rows = []
    for subscription in subscriptions:
        if subscription.tenant_id not in (None, tenant_id):
            continue
        if not matches(json.loads(subscription.event_types), event_type):
            continue
        if subscription.filter is not None and not from_json(subscription.filter)(document):
            continue
        key, sequence = ordered_as if subscription.strict_order else (None, None)
        rows.append(
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
                "ordering_key": key,
                "sequence": sequence,
            }
        )
    return rows


def event_row(
    document: Mapping[str, Any],
    *,
    tenant_id: str | None,
    resource: str,
    object_id: str,
    origin: str,
    occurred_at: datetime,
    inbox_event_id: int | None,
    now: datetime,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``events`` row of a body about to be committed: the body serialized once, here, into
    the exact bytes every attempt signs and sends."""
    return {
        "id": document["id"],
        "tenant_id": tenant_id,
        "type": document["type"],
        "resource": resource,
        "object_id": object_id,
        "origin": origin,
        "occurred_at": occurred_at,
        "payload": compact(document).decode("utf-8"),  # the bytes every attempt signs and sends
        "inbox_event_id": inbox_event_id,
        "created_at": now,
        "received_at": received_at or now,
    }


async def emit(session: AsyncSession, *events: Operational, now: datetime, exclude: Collection[str] = ()) -> None:
    """Commit-with-the-caller operational events and their deliveries (one subscription read, one
    sequence upsert and two inserts for the lot; nothing at all for none).

    ``exclude``: subscriptions never to send them to (the one ``subscription.disabled`` is about).
    """
    if not events:
        return
    keys = [(event.tenant_id or "", event.resource, event.object_id) for event in events]
    numbers = await sequences.advance(session, Counter(keys))
    subscriptions = [s for s in await subscription_store.enabled(session) if s.id not in exclude]
    rows: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for event, key in zip(events, keys, strict=True):
        sequence = numbers[key]
        numbers[key] += 1
        data = {
            "tenant_id": event.tenant_id,
            "resource": event.resource,
            "object_id": event.object_id,
            "origin": ORIGIN_SERVICE,
            "sequence": sequence,
            **event.data,
        }
        event_id = new_event_id()
        document = {"id": event_id, "type": event.type, "timestamp": isoformat_utc(event.occurred_at), "data": data}
        deliveries += delivery_rows(
            subscriptions,
            event_id=event_id,
            event_type=event.type,
            tenant_id=event.tenant_id,
            document=document,
            ordered_as=(ordering_key(*key), sequence),
            now=now,
        )
        rows.append(
            event_row(
                document,
                tenant_id=event.tenant_id,
                resource=event.resource,
                object_id=event.object_id,
                origin=ORIGIN_SERVICE,
                occurred_at=event.occurred_at,
                inbox_event_id=None,
                now=now,
            )
        )
    await write(session, [("insert", Event, rows), ("insert", Delivery, deliveries)])
