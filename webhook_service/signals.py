"""In-process wake-ups, so work flows at once instead of waiting for the next poll.

Other replicas are not woken (they poll every ``DELIVERY_POLL_INTERVAL``); within a process a
committed inbox event wakes the processor and a committed event wakes the delivery workers.
"""

from __future__ import annotations

import asyncio
import contextlib


class Signals:
    def __init__(self) -> None:
        self._inbox = asyncio.Event()
        self._deliveries = asyncio.Event()

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
