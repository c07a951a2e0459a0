"""The OpenAPI 3.1 description of the admin API, served at ``GET /admin/v1/openapi.json``.

Built as a plain dict (no extra dependency). It is the contract the handlers in
:mod:`webhook_service.web.admin` keep, and it is fuzzed against them, so it states exactly what
they accept and return: the limits below are imported by the handlers, the response schemas list
every field of the views in :mod:`webhook_service.web.views` and nothing else. ``tests/test_admin_api.py``
checks that routes and documented operations match and validates the responses it sees.
"""

from __future__ import annotations

import re
from typing import Any

from webhook_service import __version__
from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.storage.models import CallbackStatus, DeliveryStatus, InboxStatus, TenantStatus

PREFIX = "/admin/v1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY_BYTES = 1024 * 1024
MAX_GRACE_HOURS = 168.0
"""The most ``SECRET_ROTATION_GRACE_HOURS`` allows (a week)."""

NO_NUL = "^[^\\u0000]*$"
"""Text the admin API stores or filters on must not contain NUL (PostgreSQL cannot store it)."""

EVENT_TYPE_PATTERN = r"^(\*|(" + "|".join(re.escape(noun) for noun in CATALOGUE) + r")\.(\*|[a-z0-9_]+))$"
"""What ``delivery.subscriptions`` accepts: ``*``, ``<noun>.*`` or ``<noun>.<verb>`` of a known noun."""

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], *, required: list[str] | None = None, **extra: Any) -> Schema:
    """A closed object; every property is required unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def _list_of(name: str) -> Schema:
    return _object({"data": {"type": "array", "items": _ref(name)}})


STRING: Schema = {"type": "string"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
INTEGER: Schema = {"type": "integer"}
NULLABLE_INTEGER: Schema = {"type": ["integer", "null"]}
BOOLEAN: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
NULLABLE_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}


def _enum(values: type[Any]) -> Schema:
    return {"type": "string", "enum": [member.value for member in values]}


SUBSCRIPTION: dict[str, Schema] = {
    "id": STRING,
    "url": STRING,
    "event_types": {"type": "array", "items": STRING},
    "tenant_id": NULLABLE_STRING,
    "description": STRING,
    "enabled": BOOLEAN,
    "disabled_reason": NULLABLE_STRING,
    "rate_limit_per_second": NULLABLE_INTEGER,
    "previous_secret_valid_until": {
        **NULLABLE_TIME,
        "description": "Until when the secret before the last rotation still signs.",
    },
    "failing_since": NULLABLE_TIME,
    "created_at": TIME,
    "updated_at": TIME,
}

# Mirrors delivery.subscriptions._validated: what a caller may set on a subscription.
SUBSCRIPTION_FIELDS: dict[str, Schema] = {
    "url": {
        "type": "string",
        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
        "description": "http(s) URL deliveries are POSTed to. No credentials in it; an IP literal in a private, "
        "loopback, link-local or other reserved range is refused unless OUTBOUND_ALLOWED_CIDRS allows it; "
        "plain http is refused when OUTBOUND_HTTPS_ONLY is set (422).",
    },
    "event_types": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "pattern": EVENT_TYPE_PATTERN},
        "description": "'*', '<noun>.*' or '<noun>.<verb>'; duplicates are dropped.",
    },
    "tenant_id": {
        "type": ["string", "null"],
        "description": "Only this tenant's events (an unknown tenant is refused with 422); null for every tenant.",
    },
    "description": {"type": "string", "maxLength": 1000, "pattern": NO_NUL},
    "enabled": {"type": "boolean", "description": "Enabling clears disabled_reason and failing_since."},
    "rate_limit_per_second": {"type": ["integer", "null"], "minimum": 1, "maximum": 10_000},
}

TENANT: dict[str, Schema] = {
    "id": STRING,
    "name": STRING,
    "account_id": STRING,
    "business_id": INTEGER,
    "business_uuid": NULLABLE_STRING,
    "role": STRING,
    "identity_id": NULLABLE_INTEGER,
    "status": _enum(TenantStatus),
    "status_reason": NULLABLE_STRING,
    "scopes": {"type": "array", "items": STRING},
    "access_expires_at": TIME,
    "last_refreshed_at": NULLABLE_TIME,
    "created_at": TIME,
}

CALLBACK: dict[str, Schema] = {
    "id": STRING,
    "tenant_id": STRING,
    "event": STRING,
    "state": _enum(CallbackStatus),
    "active": BOOLEAN,
    "freshbooks_callback_id": NULLABLE_INTEGER,
    "verified_at": NULLABLE_TIME,
    "last_event_at": NULLABLE_TIME,
    "last_error": NULLABLE_STRING,
    "created_at": TIME,
}

INBOX_EVENT: dict[str, Schema] = {
    "id": INTEGER,
    "tenant_id": STRING,
    "callback_id": STRING,
    "event_name": STRING,
    "object_id": NULLABLE_STRING,
    "account_id": NULLABLE_STRING,
    "business_id": NULLABLE_STRING,
    "status": _enum(InboxStatus),
    "duplicate_of": NULLABLE_INTEGER,
    "attempts": INTEGER,
    "last_error": NULLABLE_STRING,
    "received_at": TIME,
    "processed_at": NULLABLE_TIME,
}

EVENT: dict[str, Schema] = {
    "id": STRING,
    "type": STRING,
    "tenant_id": STRING,
    "resource": STRING,
    "object_id": STRING,
    "origin": STRING,
    "occurred_at": TIME,
    "created_at": TIME,
    "inbox_event_id": NULLABLE_INTEGER,
}

DELIVERY: dict[str, Schema] = {
    "id": STRING,
    "event_id": STRING,
    "subscription_id": STRING,
    "status": _enum(DeliveryStatus),
    "attempts": INTEGER,
    "next_attempt_at": {**NULLABLE_TIME, "description": "Set while the delivery is pending or failed."},
    "last_status_code": NULLABLE_INTEGER,
    "last_error": NULLABLE_STRING,
    "created_at": TIME,
    "completed_at": NULLABLE_TIME,
}

ATTEMPT: dict[str, Schema] = {
    "number": INTEGER,
    "started_at": TIME,
    "status_code": NULLABLE_INTEGER,
    "latency_ms": {"type": ["number", "null"]},
    "error": NULLABLE_STRING,
    "response_body": NULLABLE_STRING,
}

SECRET: Schema = {
    "type": "string",
    "pattern": "^whsec_",
    "description": "The signing secret. Shown only here: it is stored encrypted and never returned again.",
}

SCHEMAS: dict[str, Schema] = {
    "Subscription": _object(SUBSCRIPTION),
    "SubscriptionWithSecret": _object({**SUBSCRIPTION, "secret": SECRET}),
    "SubscriptionCreate": _object(SUBSCRIPTION_FIELDS, required=["url"]),
    "SubscriptionUpdate": _object(SUBSCRIPTION_FIELDS, required=[]),
    "RotateSecretRequest": _object(
        {
            "grace_hours": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_GRACE_HOURS,
                "description": "How long the old secret keeps signing beside the new one "
                "(default SECRET_ROTATION_GRACE_HOURS).",
            }
        },
        required=[],
    ),
    "Tenant": _object(TENANT),
    "Callback": _object(CALLBACK),
    "InboxEvent": _object(INBOX_EVENT),
    "Event": _object(EVENT),
    "EventWithPayload": _object(
        {**EVENT, "payload": {"type": "object", "description": "The exact Standard Webhooks body subscribers get."}}
    ),
    "Delivery": _object(DELIVERY),
    "DeliveryAttempt": _object(ATTEMPT),
    "DeliveryWithAttempts": _object(
        {**DELIVERY, "attempt_log": {"type": "array", "items": _ref("DeliveryAttempt")}},
        description="With every attempt, oldest first.",
    ),
    "RecoverRequest": _object(
        {
            "subscription_id": {"type": "string", "pattern": NO_NUL},
            "since": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 / ISO 8601 time with an offset or Z; a time without one is refused (422).",
            },
        }
    ),
    "RecoverResult": _object({"recovered": {"type": "array", "items": STRING}, "count": INTEGER}),
    "Error": _object({"error": STRING, "message": STRING, "request_id": NULLABLE_STRING}),
    "SubscriptionList": _list_of("Subscription"),
    "TenantList": _list_of("Tenant"),
    "CallbackList": _list_of("Callback"),
    "InboxEventList": _list_of("InboxEvent"),
    "EventList": _list_of("Event"),
    "DeliveryList": _list_of("Delivery"),
}

ERRORS: dict[str, str] = {
    "400": "The body is not a JSON object (or not JSON at all), or it was cut off.",
    "401": "No or wrong `Authorization: Bearer <ADMIN_TOKEN>`.",
    "404": "No such record.",
    "409": "The subscription is disabled, or the delivery is already queued.",
    "413": f"The body is over {MAX_BODY_BYTES} bytes.",
    "422": "The request is well-formed but its values are not acceptable, or it has a query parameter the "
    "operation does not take; the message says why.",
    "503": "ADMIN_TOKEN is not set: the admin API is disabled.",
}


def _error(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": ERRORS[status], "content": {JSON: {"schema": _ref("Error")}}}
    if status == "401":
        response["headers"] = {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}}
        }
    return response


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _text_query(name: str, description: str) -> dict[str, Any]:
    return _query(name, {"type": "string", "pattern": NO_NUL}, description)


LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "Most rows to return (newest first).",
)
SUBSCRIPTION_ID = _path("subscription_id", "A subscription id (sub_...).")
DELIVERY_ID = _path("delivery_id", "A delivery id.")


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    success: tuple[str, str, str | None],
    errors: tuple[str, ...] = (),
    *,
    parameters: tuple[dict[str, Any], ...] = (),
    body: tuple[str, bool] | None = None,
) -> dict[str, Any]:
    """``success``: (status, description, schema name or None); ``body``: (schema name, required).

    401, 503 and 422 (a query parameter the operation does not take) apply to every operation; a
    body brings 400 and 413.
    """
    status, description, schema = success
    ok: dict[str, Any] = {"description": description}
    if schema is not None:
        ok["content"] = {JSON: {"schema": _ref(schema)}}
    codes = {"401", "422", "503", *errors, *(("400", "413") if body else ())}
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": {status: ok, **{code: _error(code) for code in sorted(codes)}},
    }
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": body[1], "content": {JSON: {"schema": _ref(body[0])}}}
    return operation


def _paths(prefix: str) -> dict[str, Any]:
    tenant_filter = _text_query("tenant_id", "Only this tenant's rows.")
    return {
        f"{prefix}/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This document (no authentication).",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {"description": "The OpenAPI document.", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
        f"{prefix}/subscriptions": {
            "get": _operation(
                "listSubscriptions",
                "Every subscription, oldest first.",
                "subscriptions",
                ("200", "The subscriptions.", "SubscriptionList"),
            ),
            "post": _operation(
                "createSubscription",
                "Create a subscription; its secret is shown once, in this answer.",
                "subscriptions",
                ("201", "Created, with its secret.", "SubscriptionWithSecret"),
                ("422",),
                body=("SubscriptionCreate", True),
            ),
        },
        f"{prefix}/subscriptions/{{subscription_id}}": {
            "get": _operation(
                "getSubscription",
                "One subscription (never its secret).",
                "subscriptions",
                ("200", "The subscription.", "Subscription"),
                ("404",),
                parameters=(SUBSCRIPTION_ID,),
            ),
            "patch": _operation(
                "updateSubscription",
                "Change any subset of the fields.",
                "subscriptions",
                ("200", "The updated subscription.", "Subscription"),
                ("404", "422"),
                parameters=(SUBSCRIPTION_ID,),
                body=("SubscriptionUpdate", True),
            ),
            "delete": _operation(
                "deleteSubscription",
                "Delete the subscription and its deliveries.",
                "subscriptions",
                ("204", "Deleted.", None),
                ("404",),
                parameters=(SUBSCRIPTION_ID,),
            ),
        },
        f"{prefix}/subscriptions/{{subscription_id}}/rotate-secret": {
            "post": _operation(
                "rotateSubscriptionSecret",
                "A new secret (shown once, here); the old one keeps signing beside it for the grace period.",
                "subscriptions",
                ("200", "The subscription with its new secret.", "SubscriptionWithSecret"),
                ("404", "422"),
                parameters=(SUBSCRIPTION_ID,),
                body=("RotateSecretRequest", False),
            ),
        },
        f"{prefix}/tenants": {
            "get": _operation(
                "listTenants", "Every tenant (never its tokens).", "tenants", ("200", "The tenants.", "TenantList")
            ),
        },
        f"{prefix}/tenants/{{tenant_id}}": {
            "get": _operation(
                "getTenant",
                "One tenant (never its tokens).",
                "tenants",
                ("200", "The tenant.", "Tenant"),
                ("404",),
                parameters=(_path("tenant_id", "A tenant id (ten_...)."),),
            ),
        },
        f"{prefix}/callbacks": {
            "get": _operation(
                "listCallbacks",
                "Active FreshBooks callbacks with their state (never a verifier or endpoint key).",
                "tenants",
                ("200", "The callbacks.", "CallbackList"),
                ("422",),
                parameters=(tenant_filter,),
            ),
        },
        f"{prefix}/inbox-events": {
            "get": _operation(
                "listInboxEvents",
                "Received FreshBooks deliveries, newest first.",
                "events",
                ("200", "The inbox events.", "InboxEventList"),
                ("422",),
                parameters=(tenant_filter, _query("status", _enum(InboxStatus), "Only rows in this status."), LIMIT),
            ),
        },
        f"{prefix}/events": {
            "get": _operation(
                "listEvents",
                "Normalized events without their payloads, newest first.",
                "events",
                ("200", "The events.", "EventList"),
                ("422",),
                parameters=(
                    tenant_filter,
                    _text_query("type", "Only events of this exact type (invoice.updated)."),
                    LIMIT,
                ),
            ),
        },
        f"{prefix}/events/{{event_id}}": {
            "get": _operation(
                "getEvent",
                "One event with its payload.",
                "events",
                ("200", "The event.", "EventWithPayload"),
                ("404",),
                parameters=(_path("event_id", "An event id (evt_...)."),),
            ),
        },
        f"{prefix}/deliveries": {
            "get": _operation(
                "listDeliveries",
                "Deliveries, newest first.",
                "deliveries",
                ("200", "The deliveries.", "DeliveryList"),
                ("422",),
                parameters=(
                    _query("status", _enum(DeliveryStatus), "Only deliveries in this status."),
                    _text_query("subscription_id", "Only this subscription's deliveries."),
                    _text_query("event_id", "Only deliveries of this event."),
                    LIMIT,
                ),
            ),
        },
        f"{prefix}/deliveries/recover": {
            "post": _operation(
                "recoverDeliveries",
                "Queue again every failed or dead delivery of an enabled subscription created at or after `since`.",
                "deliveries",
                ("202", "The deliveries queued again.", "RecoverResult"),
                ("404", "409", "422"),
                body=("RecoverRequest", True),
            ),
        },
        f"{prefix}/deliveries/{{delivery_id}}": {
            "get": _operation(
                "getDelivery",
                "One delivery with its attempt log.",
                "deliveries",
                ("200", "The delivery.", "DeliveryWithAttempts"),
                ("404",),
                parameters=(DELIVERY_ID,),
            ),
        },
        f"{prefix}/deliveries/{{delivery_id}}/replay": {
            "post": _operation(
                "replayDelivery",
                "Send a failed, dead or succeeded delivery again (same event and body, a fresh retry schedule).",
                "deliveries",
                ("202", "Queued.", "Delivery"),
                ("404", "409"),
                parameters=(DELIVERY_ID,),
            ),
        },
    }


def build_document(prefix: str = PREFIX) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webhook-service admin API",
            "version": __version__,
            "description": "Manage subscriptions, look at tenants, callbacks, events and deliveries, and replay "
            "deliveries. Every operation but this document needs `Authorization: Bearer <ADMIN_TOKEN>`; "
            "without ADMIN_TOKEN the API answers 503. Errors are `{error, message, request_id}`.",
        },
        "security": [{"bearer": []}],
        "paths": _paths(prefix),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
            "schemas": SCHEMAS,
        },
    }
