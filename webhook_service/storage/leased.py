"""Leased work as its worker reads it: plain records, not ORM instances.

A sender reads six fields of a delivery and six of its event; the inbox processor reads ten of an
inbox event. Neither changes them through the session: every write after the work is a fenced
statement (:func:`~webhook_service.storage.deliveries.fence`). ORM instances cost about 20-30 µs
each to build, for every row handed over or claimed, and every attribute read goes through the
ORM's instrumentation; these records cost a microsecond or two. The subscription and the tenant
stay ORM instances: there are few, read once per batch and shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from webhook_service.storage.models import Delivery, Event, InboxEvent, Subscription


@dataclass(frozen=True, slots=True)
class LeasedDelivery:
    """A delivery this process holds the lease on (``lease_owner`` is the token it was leased with)."""

    id: str
    attempts: int
    schedule_base: int
    lease_owner: str | None
    lease_until: datetime | None
    ordering_key: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> LeasedDelivery:
        """From a ``deliveries`` row as staged (a dict of its columns)."""
        return cls(*(row[name] for name in DELIVERY_FIELDS))


@dataclass(frozen=True, slots=True)
class EventToSend:
    """The event a delivery carries: ``payload`` is the exact body every attempt signs and sends."""

    id: str
    type: str
    tenant_id: str | None
    origin: str
    received_at: datetime | None
    payload: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> EventToSend:
        """From an ``events`` row as staged (a dict of its columns)."""
        return cls(*(row[name] for name in EVENT_FIELDS))


@dataclass(frozen=True, slots=True)
class LeasedInboxEvent:
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

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> LeasedInboxEvent:
        """From an ``inbox_events`` row as written (a dict of its columns)."""
        return cls(*(row[name] for name in INBOX_FIELDS))


HandedDelivery = tuple[LeasedDelivery, EventToSend, Subscription]
"""A delivery leased to this process's workers, with what sending it needs."""

DELIVERY_FIELDS = tuple(LeasedDelivery.__dataclass_fields__)
EVENT_FIELDS = tuple(EventToSend.__dataclass_fields__)
INBOX_FIELDS = tuple(LeasedInboxEvent.__dataclass_fields__)
DELIVERY_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = tuple(getattr(Delivery, name) for name in DELIVERY_FIELDS)
EVENT_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = tuple(getattr(Event, name) for name in EVENT_FIELDS)
"""What a claim selects, in the records' field order: a row is ``*DELIVERY_COLUMNS, *EVENT_COLUMNS, Subscription``."""
INBOX_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = tuple(getattr(InboxEvent, name) for name in INBOX_FIELDS)
"""What an inbox claim selects, in :class:`LeasedInboxEvent`'s field order."""


def from_claimed(row: Sequence[Any]) -> HandedDelivery:
    """A claim's row (``DELIVERY_COLUMNS``, ``EVENT_COLUMNS``, then the subscription) as its records."""
    split = len(DELIVERY_FIELDS)
    end = split + len(EVENT_FIELDS)
    return LeasedDelivery(*row[:split]), EventToSend(*row[split:end]), row[end]
