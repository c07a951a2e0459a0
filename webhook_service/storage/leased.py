"""A leased delivery as a send reads it: plain records, not ORM instances.

A worker reads six fields of a delivery and six of its event; it never changes them through the
session (every write after the send is a fenced statement, :mod:`~webhook_service.storage.delivery_records`).
An ORM ``Delivery`` and ``Event`` cost about 40 µs to build for each delivery, handed over or claimed,
and every attribute read goes through the ORM's instrumentation; these records cost under 2 µs.
The subscription stays an ORM instance: there are few, read once per batch and shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from webhook_service.storage.models import Delivery, Event, Subscription


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


HandedDelivery = tuple[LeasedDelivery, EventToSend, Subscription]
"""A delivery leased to this process's workers, with what sending it needs."""

DELIVERY_FIELDS = tuple(LeasedDelivery.__dataclass_fields__)
EVENT_FIELDS = tuple(EventToSend.__dataclass_fields__)
DELIVERY_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = tuple(getattr(Delivery, name) for name in DELIVERY_FIELDS)
EVENT_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = tuple(getattr(Event, name) for name in EVENT_FIELDS)
"""What a claim selects, in the records' field order: a row is ``*DELIVERY_COLUMNS, *EVENT_COLUMNS, Subscription``."""


def from_claimed(row: Sequence[Any]) -> HandedDelivery:
    """A claim's row (``DELIVERY_COLUMNS``, ``EVENT_COLUMNS``, then the subscription) as its records."""
    split = len(DELIVERY_FIELDS)
    end = split + len(EVENT_FIELDS)
    return LeasedDelivery(*row[:split]), EventToSend(*row[split:end]), row[end]
