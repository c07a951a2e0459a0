"""What operators may see of each record, shared by the admin API and the CLI.

Each view is the record read through its answer model in :mod:`webhook_service.web.schemas` (the
model's fields taken from the record's attributes of the same name, the rest given here) and dumped to
JSON-ready values, so the admin API answers exactly what its document describes. Nothing here ever
includes a token, verifier, secret or endpoint key: the models have no field for one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

from webhook_service.backfill import jobs
from webhook_service.contract.schemas import EventType
from webhook_service.inbound.registrar import SyncReport
from webhook_service.storage import models
from webhook_service.storage.deliveries import DUE
from webhook_service.web import schemas

ViewT = TypeVar("ViewT", bound=schemas.View)


def read(model: type[ViewT], record: object, **computed: Any) -> ViewT:
    """``model`` with its fields from ``computed`` or else from ``record``'s attributes of the same names."""
    values = {name: getattr(record, name) for name in model.model_fields if name not in computed}
    return model.model_validate({**values, **computed})


def view(model: type[schemas.View], record: object, **computed: Any) -> dict[str, Any]:
    """:func:`read`, as JSON-ready values."""
    return read(model, record, **computed).model_dump(mode="json")


def page(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A list answer: ``{"data": [...]}`` (a :class:`~webhook_service.web.schemas.Page`)."""
    return {"data": list(rows)}


def tenant_view(tenant: models.Tenant) -> dict[str, Any]:
    return view(schemas.Tenant, tenant, scopes=tenant.scopes.split())


def callback_view(callback: models.Callback) -> dict[str, Any]:
    return view(schemas.Callback, callback, state=callback.status)


def inbox_view(event: models.InboxEvent) -> dict[str, Any]:
    return view(schemas.InboxEvent, event)


def event_view(event: models.Event, *, with_payload: bool = True) -> dict[str, Any]:
    if with_payload:
        return view(schemas.EventWithPayload, event, payload=json.loads(event.payload))
    return view(schemas.Event, event)


def delivery_view(delivery: models.Delivery, attempts: list[models.DeliveryAttempt] | None = None) -> dict[str, Any]:
    next_attempt_at = delivery.next_attempt_at if delivery.status in DUE else None
    if attempts is None:
        return view(schemas.Delivery, delivery, next_attempt_at=next_attempt_at)
    attempt_log = [read(schemas.DeliveryAttempt, attempt) for attempt in attempts]
    return view(schemas.DeliveryWithAttempts, delivery, next_attempt_at=next_attempt_at, attempt_log=attempt_log)


def subscription_view(subscription: models.Subscription, secret: str | None = None) -> dict[str, Any]:
    """With ``secret`` (only right after create or rotate-secret), the view that shows it."""
    shown = {} if secret is None else {"secret": secret}
    return view(
        schemas.Subscription if secret is None else schemas.SubscriptionWithSecret,
        subscription,
        event_types=json.loads(subscription.event_types),
        filter=None if subscription.filter is None else json.loads(subscription.filter),
        previous_secret_valid_until=subscription.previous_secret_until,
        **shown,
    )


def event_type_view(kind: EventType, *, detail: bool = True) -> dict[str, Any]:
    """A catalogue entry; without ``detail``, as listed (no schema or example)."""
    if not detail:
        return view(schemas.EventTypeSummary, kind)
    return view(schemas.EventTypeDetail, kind, schema_=kind.schema)


def backfill_state_view(state: models.BackfillState) -> dict[str, Any]:
    return view(schemas.BackfillState, state, recovered_by_polling=state.recovered_total)


def backfill_job_view(job: models.BackfillJob, now: datetime) -> dict[str, Any]:
    return view(schemas.BackfillJob, job, status=jobs.state(job, now), resources=job.resources.split(","))


def callback_sync_view(report: SyncReport) -> dict[str, Any]:
    return view(schemas.CallbackSync, report)
