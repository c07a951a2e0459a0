"""The admin HTTP API under ``/admin/v1``: subscriptions, read-only views, delivery replay.

Every route but the OpenAPI document needs ``Authorization: Bearer <ADMIN_TOKEN>`` (compared in
constant time); without ``ADMIN_TOKEN`` the API is disabled and answers 503.

Each handler below is one entry of the operations table (:mod:`webhook_service.web.operations`): its
decorator gives the method, path, answer model and status, its docstring the summary, its signature
the path ids it takes and the query and body models (:mod:`webhook_service.web.schemas`) its input is
validated with. The routes and the OpenAPI document (``DOCUMENT``, served at
``GET /admin/v1/openapi.json``) are both made from that table. Handlers are thin: they call the
package function and return a view from :mod:`webhook_service.web.views`, so no token, verifier or
secret leaves here, except a subscription's new secret in the answers to create and rotate-secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from webhook_service import __version__
from webhook_service.backfill import jobs
from webhook_service.contract import schemas as catalogue
from webhook_service.core.logs import get_logger
from webhook_service.delivery import replay, subscriptions
from webhook_service.inbound import registrar
from webhook_service.runtime import Runtime
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import events as event_store
from webhook_service.storage import inbox as inbox_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.web import admin_token, schemas
from webhook_service.web.errors import error_response
from webhook_service.web.openapi import build_document
from webhook_service.web.operations import ApiError, Operations
from webhook_service.web.views import (
    backfill_job_view,
    callback_sync_view,
    callback_view,
    delivery_view,
    event_type_view,
    event_view,
    inbox_view,
    page,
    subscription_view,
    tenant_view,
)

log = get_logger("webhook_service.admin")

PREFIX = "/admin/v1"
INFO = {
    "title": "webhook-service admin API",
    "version": __version__,
    "description": "Manage subscriptions, look at tenants, callbacks, events and deliveries, and replay "
    "deliveries. Every operation but this document needs `Authorization: Bearer <ADMIN_TOKEN>`; "
    "without ADMIN_TOKEN the API answers 503. Errors are `{error, message, request_id}`.",
}
Json = dict[str, Any]
RecordT = TypeVar("RecordT")


def _refusal(request: Request) -> Response | None:
    """503 while ADMIN_TOKEN is unset, 401 unless the bearer token matches; None to go on."""
    settings = request.app.state.runtime.settings
    where = {"method": request.method, "path": request.url.path[:120]}
    if not admin_token.enabled(settings):
        log.warning("admin_refused", reason="admin_disabled", **where)
        return error_response(request, 503, "admin_disabled", "set ADMIN_TOKEN to enable the admin API")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() == "bearer" and admin_token.matches(settings, presented):
        return None
    log.warning("admin_refused", reason="wrong_credentials" if presented else "missing_credentials", **where)
    response = error_response(request, 401, "unauthorized", "Send Authorization: Bearer <ADMIN_TOKEN>.")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _translate(exc: Exception) -> ApiError | None:
    """The package's refusals as answers."""
    if isinstance(exc, subscriptions.SubscriptionError):
        return ApiError(422, "invalid_subscription", str(exc))
    if isinstance(exc, subscriptions.SubscriptionNotFound):
        return ApiError(404, "not_found", f"No subscription {exc}.")
    if isinstance(exc, replay.DeliveryNotFound):  # a delivery's or, for recover, a subscription's id
        return ApiError(404, "not_found", f"No record with id {exc}.")
    if isinstance(exc, replay.ReplayError):
        return ApiError(409, "not_replayable", str(exc))
    return None


async def _one(
    runtime: Runtime, kind: str, record_id: str, read: Callable[[Any, str], Awaitable[RecordT | None]]
) -> RecordT:
    """The record ``read`` finds by its id, or a 404."""
    async with runtime.db.sessions() as session:
        record = await read(session, record_id)
    if record is None:
        raise ApiError(404, "not_found", f"No {kind} {record_id}.")
    return record


operation = Operations(PREFIX, authorize=_refusal, translate=_translate)


@operation("GET", "/openapi.json", schemas.OpenAPIDocument, tag="meta", public=True, operation_id="getOpenAPI")
async def get_openapi(runtime: Runtime) -> Json:
    """This document (no authentication)."""
    return DOCUMENT


# --- subscriptions -----------------------------------------------------------------------------


@operation("GET", "/subscriptions", schemas.SubscriptionList, tag="subscriptions")
async def list_subscriptions(runtime: Runtime) -> Json:
    """Every subscription, oldest first."""
    return page(map(subscription_view, await subscriptions.list_all(runtime)))


@operation("POST", "/subscriptions", schemas.SubscriptionWithSecret, status=201, tag="subscriptions")
async def create_subscription(runtime: Runtime, body: schemas.SubscriptionCreate) -> Json:
    """Create a subscription; its secret is shown once, in this answer."""
    created = await subscriptions.create(runtime, body.model_dump(exclude_unset=True))
    log.info("admin_subscription_created", subscription_id=created.subscription.id)
    return subscription_view(created.subscription, created.secret)


@operation("GET", "/subscriptions/{subscription_id}", schemas.Subscription, tag="subscriptions")
async def get_subscription(runtime: Runtime, subscription_id: str) -> Json:
    """One subscription (never its secret)."""
    return subscription_view(await subscriptions.get(runtime, subscription_id))


@operation("PATCH", "/subscriptions/{subscription_id}", schemas.Subscription, tag="subscriptions")
async def update_subscription(runtime: Runtime, subscription_id: str, body: schemas.SubscriptionUpdate) -> Json:
    """Change any subset of the fields."""
    fields = body.model_dump(exclude_unset=True)
    subscription = await subscriptions.modify(runtime, subscription_id, fields)
    log.info("admin_subscription_updated", subscription_id=subscription_id, fields=sorted(fields))
    return subscription_view(subscription)


@operation("DELETE", "/subscriptions/{subscription_id}", None, status=204, tag="subscriptions")
async def delete_subscription(runtime: Runtime, subscription_id: str) -> None:
    """Delete the subscription and its deliveries."""
    await subscriptions.remove(runtime, subscription_id)
    log.info("admin_subscription_deleted", subscription_id=subscription_id)


@operation(
    "POST", "/subscriptions/{subscription_id}/rotate-secret", schemas.SubscriptionWithSecret, tag="subscriptions"
)
async def rotate_subscription_secret(runtime: Runtime, subscription_id: str, body: schemas.RotateSecretRequest) -> Json:
    """A new secret (shown once, here); the old one keeps signing beside it for the grace period."""
    grace = None if body.grace_hours is None else timedelta(hours=body.grace_hours)
    rotated = await subscriptions.rotate_secret(runtime, subscription_id, grace)
    log.info("admin_subscription_secret_rotated", subscription_id=subscription_id)
    return subscription_view(rotated.subscription, rotated.secret)


# --- tenants, callbacks and events -------------------------------------------------------------


@operation("GET", "/tenants", schemas.TenantList, tag="tenants")
async def list_tenants(runtime: Runtime) -> Json:
    """Every tenant (never its tokens)."""
    async with runtime.db.sessions() as session:
        return page(map(tenant_view, await tenant_store.list_all(session)))


@operation("GET", "/tenants/{tenant_id}", schemas.Tenant, tag="tenants")
async def get_tenant(runtime: Runtime, tenant_id: str) -> Json:
    """One tenant (never its tokens)."""
    return tenant_view(await _one(runtime, "tenant", tenant_id, tenant_store.get))


@operation("POST", "/tenants/{tenant_id}/backfill", schemas.BackfillJob, status=202, errors=(409,), tag="tenants")
async def start_backfill(runtime: Runtime, tenant_id: str) -> Json:
    """Backfill the tenant now, in the background: every resource, from its watermark. Answers the
    job at once; poll it at `GET /backfill-jobs/{job_id}`. While a job runs for the tenant, asking
    again answers that job (409: the tenant is not active)."""
    try:
        job, new = await jobs.start(runtime, tenant_id)
    except jobs.TenantNotFound:
        raise ApiError(404, "not_found", f"No tenant {tenant_id}.") from None
    except jobs.TenantNotActive as exc:
        raise ApiError(409, "tenant_not_active", str(exc)) from None
    if new:
        log.info("admin_backfill_started", tenant_id=tenant_id, job_id=job.id)
    return backfill_job_view(job, utcnow())


@operation("GET", "/backfill-jobs/{job_id}", schemas.BackfillJob, tag="tenants")
async def get_backfill_job(runtime: Runtime, job_id: str) -> Json:
    """A backfill job and how far it has got."""
    job = await jobs.get(runtime, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"No backfill job {job_id}.")
    return backfill_job_view(job, utcnow())


@operation("POST", "/tenants/{tenant_id}/callbacks/sync", schemas.CallbackSync, tag="tenants")
async def sync_callbacks(runtime: Runtime, tenant_id: str) -> Json:
    """Reconcile the tenant's FreshBooks callbacks now (create the missing, ask FreshBooks to verify
    the unverified again, delete what is not ours), as the hourly sync does."""
    tenant = await _one(runtime, "tenant", tenant_id, tenant_store.get)
    report = await registrar.sync_tenant(runtime, tenant)
    log.info("admin_callbacks_synced", tenant_id=tenant_id, error=report.error)
    return callback_sync_view(report)


@operation("GET", "/callbacks", schemas.CallbackList, tag="tenants")
async def list_callbacks(runtime: Runtime, query: schemas.TenantFilter) -> Json:
    """Active FreshBooks callbacks with their state (never a verifier or endpoint key)."""
    async with runtime.db.sessions() as session:
        return page(map(callback_view, await callback_store.list_all(session, **query.model_dump(mode="json"))))


@operation("GET", "/inbox-events", schemas.InboxEventList, tag="events")
async def list_inbox_events(runtime: Runtime, query: schemas.InboxEventQuery) -> Json:
    """Received FreshBooks deliveries, newest first."""
    async with runtime.db.sessions() as session:
        return page(map(inbox_view, await inbox_store.list_events(session, **query.model_dump(mode="json"))))


@operation("GET", "/events", schemas.EventList, tag="events")
async def list_events(runtime: Runtime, query: schemas.EventQuery) -> Json:
    """Normalized events without their payloads, newest first."""
    async with runtime.db.sessions() as session:
        events = await event_store.list_events(session, **query.model_dump(mode="json"))
        return page(event_view(event, with_payload=False) for event in events)


@operation("GET", "/events/{event_id}", schemas.EventWithPayload, tag="events")
async def get_event(runtime: Runtime, event_id: str) -> Json:
    """One event with its payload."""
    return event_view(await _one(runtime, "event", event_id, event_store.get))


@operation("GET", "/event-types", schemas.EventTypeList, tag="events")
async def list_event_types(runtime: Runtime) -> Json:
    """Every event type the service can emit: FreshBooks-derived first, then the service's own."""
    return page(event_type_view(kind, detail=False) for kind in catalogue.EVENT_TYPES.values())


@operation("GET", "/event-types/{type}", schemas.EventTypeDetail, tag="events")
async def get_event_type(runtime: Runtime, type: str) -> Json:
    """One event type with its JSON Schema (draft 2020-12) and an example event."""
    try:
        return event_type_view(catalogue.get(type))
    except KeyError:
        raise ApiError(404, "not_found", f"No event type {type!r}.") from None


# --- deliveries --------------------------------------------------------------------------------


@operation("GET", "/deliveries", schemas.DeliveryList, tag="deliveries")
async def list_deliveries(runtime: Runtime, query: schemas.DeliveryQuery) -> Json:
    """Deliveries, newest first."""
    return page(map(delivery_view, await replay.list_deliveries(runtime, **query.model_dump(mode="json"))))


@operation("POST", "/deliveries/recover", schemas.RecoverResult, status=202, errors=(404, 409), tag="deliveries")
async def recover_deliveries(runtime: Runtime, body: schemas.RecoverRequest) -> Json:
    """Queue again every failed or dead delivery of an enabled subscription created at or after `since`."""
    recovered = await replay.recover(runtime, body.subscription_id, body.since)
    log.info("admin_deliveries_recovered", subscription_id=body.subscription_id, count=len(recovered))
    return schemas.RecoverResult(recovered=recovered, count=len(recovered)).model_dump(mode="json")


@operation("GET", "/deliveries/{delivery_id}", schemas.DeliveryWithAttempts, tag="deliveries")
async def get_delivery(runtime: Runtime, delivery_id: str) -> Json:
    """One delivery with its attempt log."""
    return delivery_view(*await replay.get_with_attempts(runtime, delivery_id))


@operation("POST", "/deliveries/{delivery_id}/replay", schemas.Delivery, status=202, errors=(409,), tag="deliveries")
async def replay_delivery(runtime: Runtime, delivery_id: str) -> Json:
    """Send a failed, dead or succeeded delivery again (same event and body, a fresh retry schedule)."""
    delivery = await replay.replay(runtime, delivery_id)
    log.info("admin_delivery_replayed", delivery_id=delivery_id)
    return delivery_view(delivery)


DOCUMENT = build_document(operation.table, INFO)
routes = operation.routes()
