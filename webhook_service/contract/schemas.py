"""The published event catalogue: a JSON Schema, a description and an example per event type.

A subscriber generates its types from these schemas and validates what it receives against them,
so they say exactly what the service emits: the envelope and ``data`` are closed
(``additionalProperties: false``) and every field is required. The test suite validates every event
it emits or receives against them, which is what keeps the two in step: a field added to a payload
without its schema fails a test. Served by ``GET /admin/v1/event-types`` and ``webhook-service
event-types``; the README's table of types is generated from here (``scripts/event_types_readme.py``).

The schemas are built from shared pieces (the envelope, FreshBooks' ``data``, each operational
type's own fields); the operational examples come from the builders the service emits with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType, SimpleNamespace
from typing import Any, Literal

from webhook_service.contract import operational, types
from webhook_service.core.timeparse import isoformat_utc

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX = "urn:webhook-service:event:"
EVENT_ID_PATTERN = r"^evt_[0-9a-f]{24}$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
ORIGINS = (types.ORIGIN_WEBHOOK, types.ORIGIN_BACKFILL)
"""``data.origin`` of a FreshBooks event (an operational one says ``service``)."""

Origin = Literal["freshbooks", "service"]
Json = dict[str, Any]


@dataclass(frozen=True)
class EventType:
    """One entry of the catalogue. ``origin``: ``freshbooks`` (a change in a FreshBooks business)
    or ``service`` (the service's own state). ``schema`` and ``example`` are JSON values, shared:
    copy before changing them."""

    type: str
    origin: Origin
    description: str
    schema: Json
    example: Json


# --- schema pieces -----------------------------------------------------------------------------

STRING: Json = {"type": "string"}
INTEGER: Json = {"type": "integer"}
POSITIVE: Json = {"type": "integer", "minimum": 1}
TIMESTAMP: Json = {"type": "string", "pattern": TIMESTAMP_PATTERN}


def _nullable(kind: str) -> Json:
    return {"type": [kind, "null"]}


def _described(schema: Json, text: str) -> Json:
    return {**schema, "description": text}


def _closed(properties: dict[str, Json]) -> Json:
    """An object with exactly these properties, every one required."""
    return {"type": "object", "properties": properties, "required": [*properties], "additionalProperties": False}


def _envelope(kind: str, description: str, data: Json) -> Json:
    """The Standard Webhooks body every type shares around its ``data``."""
    return {
        "$schema": DIALECT,
        "$id": ID_PREFIX + kind,
        "title": kind,
        "description": description,
        **_closed(
            {
                "id": _described({"type": "string", "pattern": EVENT_ID_PATTERN}, "The webhook-id: deduplicate on it."),
                "type": {"const": kind},
                "timestamp": _described(TIMESTAMP, "When the change happened, UTC."),
                "data": data,
            }
        ),
    }


def _common(kind: str, tenant_id: Json, origin: Json) -> dict[str, Json]:
    """The ``data`` fields of every event: what changed, where, and its place in the object's sequence."""
    return {
        "tenant_id": _described(tenant_id, "The connected FreshBooks business (ten_...)."),
        "resource": {"const": kind.split(".", 1)[0]},
        "object_id": _described(STRING, "The id of the thing that changed, within its resource."),
        "origin": origin,
        "sequence": _described(
            POSITIVE, "The event's number among the events of (tenant_id, resource, object_id), from 1."
        ),
    }


_FRESHBOOKS_VERBS = {past: verb for verb, past in types.KNOWN_VERBS.items()}
"""Normalized verb → FreshBooks verb (``sent_by_email`` → ``sendByEmail``)."""


def freshbooks_name(kind: str) -> str:
    """``invoice.sent_by_email`` → ``invoice.sendByEmail``: the FreshBooks event a type comes from."""
    noun, _, verb = kind.partition(".")
    return f"{noun}.{_FRESHBOOKS_VERBS[verb]}"


def _freshbooks_data(kind: str) -> Json:
    common = _common(kind, STRING, _described({"enum": list(ORIGINS)}, "webhook, or backfill (polling found it)."))
    return _closed(
        {
            "tenant_id": common["tenant_id"],
            "account_id": STRING,
            "business_id": INTEGER,
            **{name: common[name] for name in ("resource", "object_id", "origin")},
            "freshbooks_event": _described(
                {
                    "type": "object",
                    "properties": {"name": {"const": freshbooks_name(kind)}},
                    "required": ["name"],
                    "additionalProperties": STRING,
                },
                "The FreshBooks event as received: its name and ids (strings).",
            ),
            "version": _described(
                _nullable("string"),
                "Which state of the object `object` is; opaque, compare for equality; null when `object` is.",
            ),
            "sequence": common["sequence"],
            "object": _described(
                {"type": ["object", "null"], "properties": {"id": INTEGER}, "required": ["id"]},
                "The object as FreshBooks returns it, with its includes, timestamps in UTC ISO 8601; "
                "null when it no longer exists.",
            ),
        }
    )


_BUSINESS = {"account_id": STRING, "business_id": INTEGER, "name": STRING}
_CALLBACK = {
    "callback_id": STRING,
    "event": _described(STRING, "The FreshBooks noun the callback subscribes to."),
    "freshbooks_callback_id": _nullable("integer"),
    "reason": STRING,
}
_OPERATIONAL_FIELDS: dict[str, dict[str, Json]] = {
    types.TENANT_REAUTH_REQUIRED: {**_BUSINESS, "reason": STRING, "reconnect_url": {"type": "string", "format": "uri"}},
    types.TENANT_RECONNECTED: {**_BUSINESS, "previous_status": STRING},
    types.TENANT_DISCONNECTED: {**_BUSINESS, "reason": STRING, "revoked": {"type": "boolean"}},
    types.SUBSCRIPTION_DISABLED: {"subscription_id": STRING, "description": STRING, "reason": STRING},
    types.DELIVERY_DEAD: {
        "delivery_id": STRING,
        "event_id": STRING,
        "event_type": STRING,
        "subscription_id": STRING,
        "attempts": INTEGER,
        "last_status_code": _nullable("integer"),
        "last_error": _nullable("string"),
    },
    types.CALLBACK_FAILED: _CALLBACK,
    types.CALLBACK_REPLACED: {**_CALLBACK, "replacement_callback_id": STRING},
    types.BACKFILL_RECOVERED: {
        "recovered": _described(
            {
                "type": "object",
                "propertyNames": {"enum": list(types.FRESHBOOKS_NOUNS)},
                "additionalProperties": POSITIVE,
                "minProperties": 1,
            },
            "How many object versions the sweep recovered, per FreshBooks resource.",
        ),
        "total": POSITIVE,
        "sweep_started_at": TIMESTAMP,
    },
}
"""Each operational type's own fields, as :mod:`~webhook_service.contract.operational` builds them."""
_TENANTLESS = frozenset({types.SUBSCRIPTION_DISABLED, types.DELIVERY_DEAD})
"""Types about something that may belong to no tenant (a subscription to every tenant's events)."""


def _operational_data(kind: str) -> Json:
    tenant_id = _nullable("string") if kind in _TENANTLESS else STRING
    return _closed({**_common(kind, tenant_id, {"const": types.ORIGIN_SERVICE}), **_OPERATIONAL_FIELDS[kind]})


# --- descriptions --------------------------------------------------------------------------------

_NOUNS = {
    "invoice": "An invoice",
    "estimate": "An estimate",
    "credit_note": "A credit note",
    "recurring": "A recurring invoice profile",
    "bill": "A bill",
    "client": "A client",
    "expense": "An expense",
    "payment": "A payment",
    "item": "An item (a product or service sold on invoices)",
    "tax": "A tax",
    "bill_vendor": "A bill vendor",
    "category": "An expense category",
    "project": "A project",
    "time_entry": "A time entry",
    "service": "A service (a kind of billable work in projects)",
}
_VERBS = {
    "created": "{noun} was created in FreshBooks. `data.object` is its state; keep it by `data.object_id`.",
    "updated": "{noun} changed in FreshBooks. `data.object` is its new state: apply it unless you already "
    "applied this `data.sequence` of the object or a higher one.",
    "deleted": "{noun} was deleted in FreshBooks. `data.object` is its last state (`vis_state` 1), or "
    "null when it no longer exists: remove or archive your copy.",
    "sent_by_email": "{noun} was emailed from FreshBooks. An action, emitted each time it happens; "
    "`data.object` is the object as it was then.",
}
_OPERATIONAL = {
    types.TENANT_REAUTH_REQUIRED: "A connected business's FreshBooks grant stopped working: a person must "
    "reconnect it at `data.reconnect_url`. Its webhooks are kept meanwhile and flow once it is reconnected.",
    types.TENANT_RECONNECTED: "A business waiting for re-authorization, or disconnected "
    "(`data.previous_status`), is connected again; its events flow again.",
    types.TENANT_DISCONNECTED: "An operator disconnected a business: its tokens are forgotten and no more "
    "of its events come. `data.revoked` says whether FreshBooks confirmed the revocation.",
    types.SUBSCRIPTION_DISABLED: "A subscription was disabled (`data.reason`): nothing is sent to it until "
    "it is enabled again. Sent to the other subscriptions that ask for it.",
    types.DELIVERY_DEAD: "A delivery used up its retries without a 2xx answer (`data.last_status_code`, "
    "`data.last_error`). It stays replayable: `deliveries replay` or `POST /admin/v1/deliveries/{id}/replay`.",
    types.CALLBACK_FAILED: "FreshBooks refused a webhook callback (its creation or its verification) or "
    "disabled it: no webhook of its noun (`data.event`) arrives until a callback sync succeeds; the polling "
    "backfill still finds changes.",
    types.CALLBACK_REPLACED: "FreshBooks dropped a webhook callback and the service registered "
    "`data.replacement_callback_id` instead; changes made meanwhile are recovered by the backfill.",
    types.BACKFILL_RECOVERED: "A polling sweep found object versions no webhook had brought and emitted "
    "them (`data.recovered`, per resource): FreshBooks' webhooks are being lost.",
}


def _description(kind: str) -> str:
    if kind in _OPERATIONAL:
        return _OPERATIONAL[kind]
    noun, _, verb = kind.partition(".")
    return _VERBS[verb].format(noun=_NOUNS[noun])


# --- examples ----------------------------------------------------------------------------------

AT = datetime(2026, 11, 21, 15, 4, 5, tzinfo=UTC)
TENANT = SimpleNamespace(id="ten_5f0c2a9e41d7b3a86c12", account_id="ABC123", business_id=439000, name="Awesome Inc.")
OBJECT_ID = 100001
_MONEY = {"amount": "49.00", "code": "USD"}
_LINES = [{"lineid": 1, "name": "Consulting", "qty": "1", "unit_cost": _MONEY, "amount": _MONEY}]
_CLIENT = {"customerid": 200001, "fname": "Ada", "lname": "Lovelace", "organization": "Analytical Engines Ltd"}
_SAMPLES: dict[str, Json] = {
    "invoice": {"invoiceid": OBJECT_ID, "invoice_number": "0100001", **_CLIENT, "v3_status": "draft"},
    "estimate": {"estimateid": OBJECT_ID, "estimate_number": "0100001", **_CLIENT, "v3_status": "sent"},
    "credit_note": {"creditid": OBJECT_ID, "credit_number": "0100001", **_CLIENT},
    "recurring": {"profileid": OBJECT_ID, **_CLIENT, "frequency": "m"},
    "bill": {"bill_number": "B-00001", "vendorid": 300001, "status": "unpaid"},
    "client": {"userid": OBJECT_ID, **_CLIENT, "email": "ada@example.com"},
    "expense": {"expenseid": OBJECT_ID, "amount": _MONEY, "vendor": "Office Depot", "categoryid": 3000001},
    "payment": {"logid": OBJECT_ID, "invoiceid": 100002, "amount": _MONEY, "type": "Credit Card"},
    "item": {"itemid": OBJECT_ID, "name": "Consulting", "unit_cost": _MONEY},
    "tax": {"taxid": OBJECT_ID, "name": "HST", "amount": "13"},
    "bill_vendor": {"vendorid": OBJECT_ID, "vendor_name": "Office Depot"},
    "category": {"categoryid": OBJECT_ID, "category": "Office Supplies"},
    "project": {"title": "Website redesign", "client_id": 200001, "active": True},
    "time_entry": {"started_at": isoformat_utc(AT - timedelta(hours=2)), "duration": 7200, "client_id": 200001},
    "service": {"business_id": TENANT.business_id, "name": "Design", "billable": True},
}
_WITH_LINES = frozenset({"invoice", "estimate", "credit_note", "recurring", "bill"})
_UPDATED_AT = frozenset({"project", "time_entry"})
"""Resources of FreshBooks' projects API: ``created_at``/``updated_at``, no ``vis_state``; a deleted
one is gone (404), so its event carries ``object: null``."""


def _object(noun: str, verb: str) -> Json | None:
    """The object a FreshBooks event of ``noun`` and ``verb`` carries, as the service normalizes it."""
    if noun in _UPDATED_AT and verb == "deleted":
        return None
    obj: Json = {"id": OBJECT_ID, **_SAMPLES[noun]}
    obj |= {"amount": _MONEY, "lines": _LINES} if noun in _WITH_LINES else {}
    stamp = isoformat_utc(AT)
    if noun in _UPDATED_AT:
        return obj | {"created_at": stamp, "updated_at": stamp}
    obj |= {"vis_state": 1 if verb == "deleted" else 0}
    return obj if noun == "service" else obj | {"created_at": stamp, "updated": stamp}


def _event_id(kind: str) -> str:
    """A stable id per example, so the catalogue reads the same on every run."""
    return "evt_" + hashlib.sha256(kind.encode()).hexdigest()[:24]


def _freshbooks_example(kind: str) -> Json:
    noun, _, verb = kind.partition(".")
    obj = _object(noun, verb)
    updated = None if obj is None else obj.get("updated") or obj.get("updated_at")
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]
    ids = {"account_id": TENANT.account_id, "business_id": str(TENANT.business_id)}
    return {
        "id": _event_id(kind),
        "type": kind,
        "timestamp": isoformat_utc(AT),
        "data": {
            "tenant_id": TENANT.id,
            "account_id": TENANT.account_id,
            "business_id": TENANT.business_id,
            "resource": noun,
            "object_id": str(OBJECT_ID),
            "origin": ORIGINS[0],
            "freshbooks_event": {"name": freshbooks_name(kind), "object_id": str(OBJECT_ID), **ids, "user_id": "1"},
            "version": None if obj is None else f"{updated or '-'}|{digest}",
            "sequence": {"created": 1, "deleted": 3}.get(verb, 2),
            "object": obj,
        },
    }


def _operational_changes() -> dict[str, operational.Operational]:
    """Each example's state change, made by the builder the service emits it with."""
    subscription = SimpleNamespace(id="sub_264aa55b282736bb8f36", tenant_id=None, description="billing sync")
    callback = SimpleNamespace(
        id="cb_9d1c0e7a55b2f4c3a810", tenant_id=TENANT.id, event="invoice", freshbooks_callback_id=2001
    )
    changes = (
        operational.reauth_required(
            TENANT,
            reason="invalid_grant: the refresh token was refused",
            reconnect_url="https://hooks.example.com/oauth/freshbooks/start?business_id=439000",
            at=AT,
        ),
        operational.reconnected(TENANT, previous_status="reauth_required", at=AT),
        operational.disconnected(TENANT, reason="disconnected by operator", revoked=True, at=AT),
        operational.subscription_disabled(subscription, reason="disabled by an operator", at=AT),
        operational.delivery_dead(
            delivery_id="dlv_0c4be51d9e2f7a3b6d81c5e0",
            event_id=_event_id("invoice.updated"),
            event_type="invoice.updated",
            tenant_id=TENANT.id,
            subscription_id=subscription.id,
            attempts=8,
            last_status_code=503,
            last_error="HTTP 503",
            at=AT,
        ),
        operational.callback_failed(callback, reason="FreshBooks refused the verifier (HTTP 400)", at=AT),
        operational.callback_replaced(
            callback,
            replacement_id="cb_4e7f2a9c0b1d3e5f6a78",
            reason="FreshBooks no longer lists it (dropped or deleted there)",
            at=AT,
        ),
        operational.backfill_recovered(
            TENANT.id, recovered={"client": 1, "invoice": 2}, started_at=AT - timedelta(minutes=1), at=AT
        ),
    )
    return {change.type: change for change in changes}


def _operational_example(event: operational.Operational) -> Json:
    """The body :func:`~webhook_service.storage.outbox.emit` commits for ``event``."""
    data = {
        "tenant_id": event.tenant_id,
        "resource": event.resource,
        "object_id": event.object_id,
        "origin": types.ORIGIN_SERVICE,
        "sequence": 1,
        **event.data,
    }
    return {
        "id": _event_id(event.type),
        "type": event.type,
        "timestamp": isoformat_utc(event.occurred_at),
        "data": data,
    }


# --- the catalogue -----------------------------------------------------------------------------


def _entry(kind: str, changes: Mapping[str, operational.Operational]) -> EventType:
    description = _description(kind)
    if kind in changes:
        schema = _envelope(kind, description, _operational_data(kind))
        return EventType(kind, "service", description, schema, _operational_example(changes[kind]))
    schema = _envelope(kind, description, _freshbooks_data(kind))
    return EventType(kind, "freshbooks", description, schema, _freshbooks_example(kind))


_CHANGES = _operational_changes()
EVENT_TYPES: Mapping[str, EventType] = MappingProxyType({kind: _entry(kind, _CHANGES) for kind in types.ALL_TYPES})
"""Every type the service can emit, in :data:`~webhook_service.contract.types.ALL_TYPES` order."""


def get(kind: str) -> EventType:
    """The catalogue entry of ``kind``; :class:`KeyError` for a type the service does not emit."""
    return EVENT_TYPES[kind]
