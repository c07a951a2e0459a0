"""Rows the tests write directly, when how they came to be is not what a test is about."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from webhook_service.core.crypto import SecretBox
from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.storage.models import Delivery, Event, Tenant


def tenant_row(box: SecretBox, tenant_id: str, *, account_id: str, business_id: int, now: datetime) -> Tenant:
    """A connected tenant, its tokens encrypted with ``box``: for a test about something other than
    connecting (which the ``tenant`` fixture does through the simulator)."""
    return Tenant(
        id=tenant_id,
        account_id=account_id,
        business_id=business_id,
        access_token_enc=box.encrypt("a"),
        refresh_token_enc=box.encrypt("r"),
        access_expires_at=now + timedelta(hours=1),
    )


def invoice_event(tenant: Tenant, now: datetime) -> tuple[Event, dict[str, Any]]:
    """An ``invoice.updated`` event of invoice 1234, as the pipeline would store it (its first,
    so ``sequence`` 1), and its payload."""
    built = build(
        tenant=tenant,
        resource=CATALOGUE["invoice"],
        freshbooks_event={"name": "invoice.update", "object_id": "1234"},
        obj={"id": 1234, "updated": "2026-11-21 07:00:00", "vis_state": 0},
        origin=ORIGIN_WEBHOOK,
        fallback_time=now,
    )
    payload = {**built.document, "data": {**built.document["data"], "sequence": 1}}  # numbered as emit numbers it
    event = Event(
        id=built.id,
        tenant_id=tenant.id,
        type=built.type,
        resource="invoice",
        object_id="1234",
        origin="webhook",
        occurred_at=built.occurred_at,
        payload=json.dumps(payload),
        created_at=now,
    )
    return event, payload


def dead_delivery(delivery_id: str, event_id: str, subscription_id: str, at: datetime) -> Delivery:
    """A delivery that gave up after two attempts answered 500, at ``at``."""
    return Delivery(
        id=delivery_id,
        event_id=event_id,
        subscription_id=subscription_id,
        status="dead",
        attempts=2,
        last_status_code=500,
        last_error="HTTP 500",
        created_at=at,
        updated_at=at,
        completed_at=at,
    )
