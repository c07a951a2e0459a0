"""Leased work as its worker reads it: plain records, not ORM instances.

A sender reads six fields of a delivery and six of its event; the inbox processor reads ten of an
inbox event. Neither changes them through the session: every write after the work is a fenced
statement (:func:`~webhook_service.storage.deliveries.fence`). ORM instances cost about 20-30 µs
each to build, for every row handed over or claimed, and every attribute read goes through the
ORM's instrumentation; these records cost a microsecond or two. The subscriptions an event fans
out to are records too: they are read in every transaction that emits (a batch at a steady rate
carries one or two events), and the ORM's read of them cost 250–400 µs of Python a time. The
tenant stays an ORM instance: it is what the FreshBooks client and its tokens work on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute

from webhook_service.storage.models import Delivery, Event, InboxEvent, Subscription


class _Record:
    """A record whose fields are columns of the same names, in the order a claim selects them."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        """From a row as written or staged (a dict of its columns)."""
        return cls(*(row[name] for name in cls.__dataclass_fields__))  # type: ignore[call-arg]

    @classmethod
    def columns(cls, model: type[DeclarativeBase]) -> tuple[InstrumentedAttribute[Any], ...]:
        """``model``'s columns for these fields, in their order: what a claim selects."""
        return tuple(getattr(model, name) for name in cls.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class LeasedDelivery(_Record):
    """A delivery this process holds the lease on (``lease_owner`` is the token it was leased with)."""

    id: str
    attempts: int
    schedule_base: int
    lease_owner: str | None
    lease_until: datetime | None
    ordering_key: str | None


@dataclass(frozen=True, slots=True)
class EventToSend(_Record):
    """The event a delivery carries: ``payload`` is the exact body every attempt signs and sends."""

    id: str
    type: str
    tenant_id: str | None
    origin: str
    received_at: datetime | None
    payload: str


@dataclass(frozen=True, slots=True)
class LeasedInboxEvent(_Record):
    """An inbox event this process holds the lease on, as the processor reads it."""

    id: int
    tenant_id: str
    event_name: str
    object_id: str | None
    raw_body: str
    status: str
    received_at: datetime
    attempts: int
    lease_owner: str | None
    lease_until: datetime | None


@dataclass(frozen=True, slots=True)
class SubscriptionToSend(_Record):
    """A subscription as fan-out chooses by it and a sender sends to it (never written through)."""

    id: str
    url: str
    event_types: str
    tenant_id: str | None
    enabled: bool
    disabled_reason: str | None
    secret_enc: str
    previous_secret_enc: str | None
    previous_secret_until: datetime | None
    rate_limit_per_second: int | None
    filter: str | None
    strict_order: bool
    failing_since: datetime | None


HandedDelivery = tuple[LeasedDelivery, EventToSend, SubscriptionToSend]
"""A delivery leased to this process's workers, with what sending it needs."""

DELIVERY_COLUMNS = LeasedDelivery.columns(Delivery)
EVENT_COLUMNS = EventToSend.columns(Event)
SUBSCRIPTION_COLUMNS = SubscriptionToSend.columns(Subscription)
"""What a delivery claim selects: a row is ``*DELIVERY_COLUMNS, *EVENT_COLUMNS, *SUBSCRIPTION_COLUMNS``."""
INBOX_COLUMNS = LeasedInboxEvent.columns(InboxEvent)
"""What an inbox claim selects."""


def from_claimed(row: Sequence[Any]) -> HandedDelivery:
    """A claim's row (``DELIVERY_COLUMNS``, ``EVENT_COLUMNS``, ``SUBSCRIPTION_COLUMNS``) as its records."""
    split = len(DELIVERY_COLUMNS)
    end = split + len(EVENT_COLUMNS)
    return LeasedDelivery(*row[:split]), EventToSend(*row[split:end]), SubscriptionToSend(*row[end:])
