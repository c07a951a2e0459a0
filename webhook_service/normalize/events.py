"""Building the normalized event a subscriber receives.

Standard Webhooks shape::

    {"id": "evt_...", "type": "invoice.updated", "timestamp": "2026-11-21T15:04:05Z",
     "data": {"tenant_id", "account_id", "business_id", "resource", "object_id", "origin",
              "freshbooks_event", "object"}}

``object`` is the object as FreshBooks returns it with the catalogue's includes (an invoice with its
lines), every known timestamp converted to UTC ISO 8601; money stays as FreshBooks sends it, decimal
strings with a currency code. A deleted object carries its last state (with ``vis_state``); one that
has vanished (404) yields ``object: null``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhook_service.freshbooks.catalogue import Resource
from webhook_service.freshbooks.timestamps import isoformat_utc
from webhook_service.normalize.types import VERSION_VERBS, event_type, split_name

ORIGIN_WEBHOOK = "webhook"
ORIGIN_BACKFILL = "backfill"
GONE = "gone"


@dataclass(frozen=True)
class NormalizedEvent:
    id: str
    type: str
    resource: str
    object_id: str
    origin: str
    occurred_at: datetime
    payload: str
    version: str | None
    """The object version this event carries, for the ledger; None for action verbs."""
    received_at: datetime | None = None
    """When the webhook reached the service (None: when it is staged, as for the backfill)."""


def new_event_id() -> str:
    return f"evt_{secrets.token_hex(12)}"


def object_version(resource: Resource, obj: dict[str, Any] | None) -> str:
    """What identifies one version of an object: its ``updated`` stamp and visibility."""
    if obj is None:
        return GONE
    updated = resource.updated_at(obj)
    stamp = isoformat_utc(updated) if updated else json.dumps(obj, sort_keys=True, default=str)[:100]
    return f"{stamp}|{obj.get('vis_state', '')}"


def normalize_object(resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    converted = dict(obj)
    for name, moment in resource.timestamps_utc(obj).items():
        converted[name] = isoformat_utc(moment) if moment else obj.get(name)
    return converted


def build(
    *,
    tenant: Any,
    resource: Resource,
    freshbooks_event: dict[str, str],
    obj: dict[str, Any] | None,
    origin: str,
    fallback_time: datetime,
    received_at: datetime | None = None,
) -> NormalizedEvent:
    """The event for ``freshbooks_event`` (its name and ids) about ``obj`` (None when vanished)."""
    name = freshbooks_event["name"]
    _, verb = split_name(name)
    object_id = str(freshbooks_event.get("object_id") or (obj or {}).get("id", ""))
    updated = resource.updated_at(obj) if obj is not None else None
    occurred_at = updated or fallback_time
    event_id = new_event_id()
    kind = event_type(name)
    document = {
        "id": event_id,
        "type": kind,
        "timestamp": isoformat_utc(occurred_at),
        "data": {
            "tenant_id": tenant.id,
            "account_id": tenant.account_id,
            "business_id": tenant.business_id,
            "resource": resource.name,
            "object_id": object_id,
            "origin": origin,
            "freshbooks_event": freshbooks_event,
            "object": normalize_object(resource, obj) if obj is not None else None,
        },
    }
    return NormalizedEvent(
        id=event_id,
        type=kind,
        resource=resource.name,
        object_id=object_id,
        origin=origin,
        occurred_at=occurred_at,
        payload=json.dumps(document, separators=(",", ":"), ensure_ascii=False),
        version=object_version(resource, obj) if verb in VERSION_VERBS else None,
        received_at=received_at,
    )
