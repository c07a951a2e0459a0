"""In-process wake-ups and hand-overs, so work flows at once instead of waiting for a claim.

Other replicas are not woken (they poll every ``DELIVERY_POLL_INTERVAL``). Within a process, work
committed here goes straight to the stage that does it next: the writer leases the rows to that
stage's owner token *in the same transaction* and, once committed, hands them over in memory, so
the hot path never runs a claim query. If the process dies, those leases run out and any replica
claims the rows as usual; nothing is handed over that is not committed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from webhook_service.storage.models import Delivery, Event, InboxEvent, Subscription, Tenant

T = TypeVar("T")

HandedInboxEvent = tuple[InboxEvent, Tenant]
HandedDelivery = tuple[Delivery, Event, Subscription]


class Lane(Generic[T]):
    """A hand-over from a writer to one consumer in the same process.

    The consumer attaches with the lease its rows should carry and a ``ready`` check (its
    capacity): while it has no room, writers lease nothing and the rows wait for a claim.
    """

    def __init__(self) -> None:
        self.owner = secrets.token_hex(8)
        self._consumer: Callable[[Sequence[T]], None] | None = None
        self._ready: Callable[[], bool] = lambda: False
        self._lease = timedelta(0)

    def attach(self, consumer: Callable[[Sequence[T]], None], *, lease: timedelta, ready: Callable[[], bool]) -> None:
        self._consumer, self._lease, self._ready = consumer, lease, ready

    def detach(self) -> None:
        self._consumer, self._ready = None, lambda: False

    def lease(self, now: datetime) -> tuple[str, datetime] | None:
        """The owner and expiry to stamp on rows being written for this consumer, or None."""
        if self._consumer is None or not self._ready():
            return None
        return self.owner, now + self._lease

    def hand_over(self, items: Sequence[T]) -> None:
        """Call after the commit, with exactly the rows written under :meth:`lease`."""
        if items and self._consumer is not None:
            self._consumer(items)


class Signals:
    def __init__(self) -> None:
        self._inbox = asyncio.Event()
        self._deliveries = asyncio.Event()
        self.inbox_lane: Lane[HandedInboxEvent] = Lane()
        self.delivery_lane: Lane[HandedDelivery] = Lane()

    def inbox_ready(self) -> None:
        self._inbox.set()

    def deliveries_ready(self) -> None:
        self._deliveries.set()

    async def wait_inbox(self, timeout: float) -> None:
        await _wait(self._inbox, timeout)

    async def wait_deliveries(self, timeout: float) -> None:
        await _wait(self._deliveries, timeout)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
