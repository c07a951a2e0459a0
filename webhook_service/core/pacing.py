"""Spreading a periodic duty's work over its interval.

A duty that took every tenant at the start of its interval would send FreshBooks a burst the size of
the customer base every interval, then nothing: the burst is what rate limits punish, and its cost
grows with every tenant added. :func:`spread` starts item ``i`` of ``n`` at ``i * over / n`` instead,
so the rate is steady (``n / over`` items per second) and a cycle still covers every item once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from webhook_service.core.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


async def spread(items: Sequence[T], over: float, work: Callable[[T], Awaitable[object]], *, limit: int) -> int:
    """Run ``work`` on each item, item ``i`` started ``i * over / len(items)`` seconds from now, at
    most ``limit`` at once (an item waits for room rather than overlap without bound when work is
    slower than the pace); returns once every item is done, with how many ended in an exception.

    An exception in one item is logged and does not stop the others: one tenant's failure must not
    cost every tenant after it its turn.
    """
    if not items:
        return 0
    loop = asyncio.get_running_loop()
    started, gap = loop.time(), over / len(items)
    room = asyncio.Semaphore(limit)
    failed = 0

    async def one(item: T) -> None:
        nonlocal failed
        try:
            await work(item)
        except Exception:
            failed += 1
            log.exception("spread_item_failed")
        finally:
            room.release()

    async with asyncio.TaskGroup() as group:
        for index, item in enumerate(items):
            delay = started + index * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await room.acquire()
            group.create_task(one(item))
    return failed
