"""What operators may see of each record, shared by the admin API and the CLI.

Nothing here ever includes a token, verifier, secret or endpoint key.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from webhook_service.storage.models import (
    BackfillState,
    Callback,
    Delivery,
    DeliveryAttempt,
    Event,
    InboxEvent,
    Subscription,
    Tenant,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "account_id": tenant.account_id,
        "business_id": tenant.business_id,
        "business_uuid": tenant.business_uuid,
        "role": tenant.role,
        "identity_id": tenant.identity_id,
        "status": tenant.status,
        "status_reason": tenant.status_reason,
        "scopes": tenant.scopes.split(),
        "access_expires_at": iso(tenant.access_expires_at),
        "last_refreshed_at": iso(tenant.last_refreshed_at),
        "created_at": iso(tenant.created_at),
    }


def callback_view(callback: Callback) -> dict[str, Any]:
    return {
        "id": callback.id,
        "tenant_id": callback.tenant_id,
        "event": callback.event,
        "state": callback.status,
        "active": callback.active,
        "freshbooks_callback_id": callback.freshbooks_callback_id,
        "verified_at": iso(callback.verified_at),
        "last_event_at": iso(callback.last_event_at),
        "last_error": callback.last_error,
        "created_at": iso(callback.created_at),
    }


def inbox_view(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "tenant_id": event.tenant_id,
        "callback_id": event.callback_id,
        "event_name": event.event_name,
        "object_id": event.object_id,
        "account_id": event.account_id,
        "business_id": event.business_id,
        "status": event.status,
        "duplicate_of": event.duplicate_of,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "received_at": iso(event.received_at),
        "processed_at": iso(event.processed_at),
    }


def event_view(event: Event, *, with_payload: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": event.id,
        "type": event.type,
        "tenant_id": event.tenant_id,
        "resource": event.resource,
        "object_id": event.object_id,
        "origin": event.origin,
        "occurred_at": iso(event.occurred_at),
        "created_at": iso(event.created_at),
        "inbox_event_id": event.inbox_event_id,
    }
    if with_payload:
        view["payload"] = json.loads(event.payload)
    return view


def delivery_view(delivery: Delivery, attempts: list[DeliveryAttempt] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "subscription_id": delivery.subscription_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status in ("pending", "failed") else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "completed_at": iso(delivery.completed_at),
    }
    if attempts is not None:
        view["attempt_log"] = [
            {
                "number": a.number,
                "started_at": iso(a.started_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "response_body": a.response_body,
            }
            for a in attempts
        ]
    return view


def subscription_view(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "url": subscription.url,
        "event_types": json.loads(subscription.event_types),
        "tenant_id": subscription.tenant_id,
        "description": subscription.description,
        "enabled": subscription.enabled,
        "disabled_reason": subscription.disabled_reason,
        "rate_limit_per_second": subscription.rate_limit_per_second,
        "previous_secret_valid_until": iso(subscription.previous_secret_until),
        "failing_since": iso(subscription.failing_since),
        "created_at": iso(subscription.created_at),
        "updated_at": iso(subscription.updated_at),
    }


def backfill_state_view(state: BackfillState) -> dict[str, Any]:
    return {
        "tenant_id": state.tenant_id,
        "resource": state.resource,
        "watermark": iso(state.watermark),
        "last_run_at": iso(state.last_run_at),
        "last_run_status": state.last_run_status,
        "last_error": state.last_error,
        "last_scanned": state.last_scanned,
        "last_emitted": state.last_emitted,
        "recovered_by_polling": state.recovered_total,
    }
