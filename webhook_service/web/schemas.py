"""The admin API's requests and answers as pydantic models: the one definition of what it takes and gives.

Request bodies and query parameters are validated with these models, the answers are built with them
(:mod:`webhook_service.web.views`), and the OpenAPI document (:mod:`webhook_service.web.openapi`) is
generated from them, so the document states exactly what the routes do. Class names are the
document's schema names; docstrings and ``description`` texts are published in it. The field types
are in :mod:`webhook_service.web.fields`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel

from webhook_service.contract.schemas import Origin
from webhook_service.contract.types import EventOrigin
from webhook_service.storage.models import CallbackStatus, DeliveryStatus, InboxStatus, TenantStatus
from webhook_service.web.fields import (
    DEFAULT_LIMIT,
    EVENT_TYPE_PATTERN,
    MAX_GRACE_HOURS,
    Limit,
    RateLimit,
    RequestTime,
    Text,
    Time,
    Url,
    omittable,
)

RowT = TypeVar("RowT", bound=BaseModel)
FILTER = (
    'A payload filter on the event body, e.g. {"data.object.v3_status": {"$in": ["paid"]}}: paths to '
    "conditions with $eq $ne $in $nin $gt $gte $lt $lte $exists $and $or $not (README → Payload filters)."
)
STRICT_ORDER = "Deliver each object's events one at a time, in sequence (README → Subscriptions and delivery)."


# --- requests ----------------------------------------------------------------------------------


class Body(BaseModel):
    """A JSON request body: no field beyond those listed, and no type conversion (``"5"`` is no number)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    optional: ClassVar[bool] = False
    """Whether a request may leave the body out (it is then ``{}``)."""


class SubscriptionUpdate(Body):
    """Any subset of the fields; those left out keep their values."""

    url: Url = omittable()
    event_types: list[Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]] = omittable(
        min_length=1, description="'*', '<noun>.*' or '<noun>.<verb>'; duplicates are dropped."
    )
    tenant_id: str | None = omittable(
        description="Only this tenant's events (an unknown tenant is refused with 422); null for every tenant."
    )
    description: Text = omittable(max_length=1000)
    enabled: bool = omittable(description="Enabling clears disabled_reason and failing_since.")
    rate_limit_per_second: RateLimit | None = omittable(description="Most deliveries a second; null for no limit.")
    filter: dict[str, Any] | None = omittable(description=FILTER + " Null for none; an invalid filter is a 422.")
    strict_order: bool = omittable(description=STRICT_ORDER)


class SubscriptionCreate(SubscriptionUpdate):
    """A new subscription. Left out: event_types ["*"], description "", enabled, every tenant, no rate
    limit, no filter, not strict_order."""

    url: Url


class RotateSecretRequest(Body):
    """Optional: without a body the configured grace applies."""

    optional: ClassVar[bool] = True

    grace_hours: float = omittable(
        ge=0,
        le=MAX_GRACE_HOURS,
        allow_inf_nan=False,
        description="How long the old secret keeps signing beside the new one (default SECRET_ROTATION_GRACE_HOURS).",
    )


class RecoverRequest(Body):
    subscription_id: Text
    since: RequestTime = Field(
        description="RFC 3339 / ISO 8601 time with an offset or Z; a time without one is refused (422)."
    )


class Parameters(BaseModel):
    """Query parameters (strings, converted where a field says so); never a schema of its own."""

    model_config = ConfigDict(extra="forbid")


class TenantFilter(Parameters):
    tenant_id: Text = omittable(description="Only this tenant's rows.")


class InboxEventQuery(TenantFilter):
    status: InboxStatus = omittable(description="Only rows in this status.")
    limit: Limit = DEFAULT_LIMIT


class EventQuery(TenantFilter):
    event_type: Text = omittable(alias="type", description="Only events of this exact type (invoice.updated).")
    origin: EventOrigin = omittable(description="Only events of this origin (`service`: operational events).")
    limit: Limit = DEFAULT_LIMIT


class DeliveryQuery(Parameters):
    status: DeliveryStatus = omittable(description="Only deliveries in this status.")
    subscription_id: Text = omittable(description="Only this subscription's deliveries.")
    event_id: Text = omittable(description="Only deliveries of this event.")
    limit: Limit = DEFAULT_LIMIT


# --- answers -----------------------------------------------------------------------------------


class View(BaseModel):
    """What operators may see of a record: never a token, verifier, secret or endpoint key."""

    model_config = ConfigDict(extra="forbid")


class Page(View, Generic[RowT]):
    """A list answer; each is a subclass named after its rows, the name its schema has."""

    data: list[RowT]


class Subscription(View):
    """A subscription (never its secret)."""

    id: str
    url: str
    event_types: list[str]
    tenant_id: str | None
    description: str
    enabled: bool
    disabled_reason: str | None
    rate_limit_per_second: int | None
    filter: dict[str, Any] | None = Field(description=FILTER + " Null: every event of the chosen types.")
    strict_order: bool = Field(description=STRICT_ORDER)
    previous_secret_valid_until: Time | None = Field(
        description="Until when the secret before the last rotation still signs."
    )
    failing_since: Time | None
    created_at: Time
    updated_at: Time


class SubscriptionWithSecret(Subscription):
    """A subscription with its signing secret, shown only in this answer."""

    secret: str = Field(
        pattern="^whsec_",
        description="The signing secret. Shown only here: it is stored encrypted and never returned again.",
    )


class Tenant(View):
    """A connected FreshBooks business (never its tokens)."""

    id: str
    name: str
    account_id: str
    business_id: int
    business_uuid: str | None
    role: str
    identity_id: int | None
    status: TenantStatus
    status_reason: str | None
    scopes: list[str]
    access_expires_at: Time
    last_refreshed_at: Time | None
    created_at: Time


class Callback(View):
    """A FreshBooks webhook callback and its state (never its verifier or endpoint key)."""

    id: str
    tenant_id: str
    event: str
    state: CallbackStatus
    active: bool
    freshbooks_callback_id: int | None
    verified_at: Time | None
    last_event_at: Time | None
    last_error: str | None
    created_at: Time


class InboxEvent(View):
    """A delivery received from FreshBooks."""

    id: int
    tenant_id: str
    callback_id: str
    event_name: str
    object_id: str | None
    account_id: str | None
    business_id: str | None
    status: InboxStatus
    duplicate_of: int | None
    attempts: int
    last_error: str | None
    received_at: Time
    processed_at: Time | None


class Event(View):
    """A normalized event, without its payload."""

    id: str
    type: str
    tenant_id: str | None
    resource: str
    object_id: str
    origin: EventOrigin
    occurred_at: Time
    created_at: Time
    inbox_event_id: int | None


class EventWithPayload(Event):
    """A normalized event with its payload."""

    payload: dict[str, Any] = Field(description="The exact Standard Webhooks body subscribers get.")


class Delivery(View):
    """One event to send to one subscription, and how sending it has gone."""

    id: str
    event_id: str
    subscription_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: Time | None = Field(description="Set while the delivery is pending or failed.")
    last_status_code: int | None
    last_error: str | None
    created_at: Time
    completed_at: Time | None


class DeliveryAttempt(View):
    """One attempt to send a delivery."""

    number: int
    started_at: Time
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_body: str | None


class DeliveryWithAttempts(Delivery):
    """A delivery with every attempt, oldest first."""

    attempt_log: list[DeliveryAttempt]


class RecoverResult(View):
    """The deliveries queued again, and how many."""

    recovered: list[str]
    count: int


class BackfillState(View):
    """Polling's progress for one tenant and resource (shown by the CLI)."""

    tenant_id: str
    resource: str
    watermark: Time | None
    last_run_at: Time | None
    last_run_status: str | None
    last_error: str | None
    last_scanned: int
    last_emitted: int
    recovered_by_polling: int


class EventTypeSummary(View):
    """An event type the service can emit."""

    type: str
    origin: Origin = Field(description="freshbooks: a change in a FreshBooks business; service: the service's own.")
    description: str = Field(description="What happened, and what a subscriber does about it.")


class EventTypeDetail(EventTypeSummary):
    """An event type with its JSON Schema and an example event."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    schema_: dict[str, Any] = Field(
        alias="schema",
        description="The JSON Schema (draft 2020-12) every event of this type validates against; "
        "closed: a field it does not list is never sent.",
    )
    example: dict[str, Any] = Field(description="An event of this type, as a subscriber receives it.")


class SubscriptionList(Page[Subscription]):
    """Subscriptions, oldest first."""


class BackfillJob(View):
    """A backfill of one tenant an operator started, and how far it has got (poll it until
    ``status`` is no longer ``running``)."""

    id: str
    tenant_id: str
    status: Literal["running", "succeeded", "failed", "abandoned"] = Field(
        description="abandoned: the process running it stopped and nobody updates it."
    )
    resources: list[str] = Field(description="The resources it scans, in order.")
    current_resource: str | None
    resources_done: int
    scanned: int = Field(description="Objects listed so far.")
    emitted: int = Field(description="Events it found that no webhook had brought.")
    error: str | None
    created_at: Time
    updated_at: Time
    finished_at: Time | None


class CallbackSync(View):
    """What a callback sync did to one tenant's FreshBooks callbacks."""

    tenant_id: str
    created: list[str] = Field(description="Events for which a callback was created.")
    resent: list[str] = Field(description="Callbacks FreshBooks was asked to send their verification again.")
    replaced: list[str]
    deleted: list[int] = Field(description="FreshBooks callback ids deleted (not ours, or duplicates).")
    retired: list[str]
    unchanged: list[str]
    error: str | None


class TenantList(Page[Tenant]):
    """Tenants."""


class CallbackList(Page[Callback]):
    """Callbacks."""


class InboxEventList(Page[InboxEvent]):
    """Inbox events, newest first."""


class EventList(Page[Event]):
    """Events, newest first."""


class DeliveryList(Page[Delivery]):
    """Deliveries, newest first."""


class EventTypeList(Page[EventTypeSummary]):
    """Event types, FreshBooks-derived first, then the service's own."""


class OpenAPIDocument(RootModel[dict[str, Any]]):
    """This document (OpenAPI 3.1)."""
