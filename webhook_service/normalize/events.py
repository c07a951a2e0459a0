"""Building the normalized event a subscriber receives.

Standard Webhooks shape::

    {"id": "evt_...", "type": "invoice.updated", "timestamp": "2026-11-21T15:04:05Z",
     "data": {"tenant_id", "account_id", "business_id", "resource", "object_id", "origin",
              "freshbooks_event", "version", "sequence", "object"}}

``object`` is the object as FreshBooks returns it with the catalogue's includes (an invoice with its
lines), every known timestamp converted to UTC ISO 8601; money stays as FreshBooks sends it, decimal
strings with a currency code. A deleted object carries its last state (with ``vis_state``); one that
has vanished (404) yields ``object: null``. ``version`` names the state ``object`` is in (see
:mod:`~webhook_service.normalize.versions`); null with a null object. ``sequence`` is numbered when
the event is committed (:mod:`~webhook_service.storage.sequences`); the published schema of each
type is in :mod:`~webhook_service.contract.schemas`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhook_service.contract.types import ORIGIN_BACKFILL, ORIGIN_WEBHOOK, VERSION_VERBS, event_type, split_name
from webhook_service.freshbooks.catalogue import Resource
from webhook_service.freshbooks.timestamps import isoformat_utc
from webhook_service.normalize.versions import content_version
from webhook_service.storage.outbox import new_event_id

__all__ = ["ORIGIN_BACKFILL", "ORIGIN_WEBHOOK", "NormalizedEvent", "build", "normalize_object"]


@dataclass(frozen=True)
class NormalizedEvent:
    id: str
    type: str
    resource: str
    object_id: str
    origin: str
    occurred_at: datetime
    document: dict[str, Any]
    """The body, but for ``data.sequence`` (None here), which is numbered when it is committed."""
    version: str | None
    """The object version this event carries, for the ledger; None for action verbs (always emitted)."""
    received_at: datetime | None = None
    """When the webhook reached the service (None: when it is staged, as for the backfill)."""
    observed_at: datetime | None = None
    """When the request that read ``object`` from FreshBooks was sent (None: when it is staged)."""


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
    observed_at: datetime | None = None,
) -> NormalizedEvent:
    """The event for ``freshbooks_event`` (its name and ids) about ``obj`` (None when vanished)."""
    name = freshbooks_event["name"]
    _, verb = split_name(name)
    object_id = str(freshbooks_event.get("object_id") or (obj or {}).get("id", ""))
    updated = resource.updated_at(obj) if obj is not None else None
    occurred_at = updated or fallback_time
    event_id = new_event_id()
    kind = event_type(name)
    normalized = normalize_object(resource, obj) if obj is not None else None
    version = content_version(resource, normalized)
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
            "version": version if normalized is not None else None,
            "sequence": None,
            "object": normalized,
        },
    }
    return NormalizedEvent(
        id=event_id,
        type=kind,
        resource=resource.name,
        object_id=object_id,
        origin=origin,
        occurred_at=occurred_at,
        document=document,
        version=version if verb in VERSION_VERBS else None,
        received_at=received_at,
        observed_at=observed_at,
    )
