"""Spreading a periodic duty's work over its interval, and pacing it per tenant.

A duty that took every tenant at the start of its interval would send FreshBooks a burst the size of
the customer base every interval, then nothing: the burst is what rate limits punish, and its cost
grows with every tenant added. :func:`spread` starts item ``i`` of ``n`` at ``i * over / n`` instead,
so the rate is steady (``n / over`` items per second) and a cycle still covers every item once.
:class:`Pace` then keeps one tenant's background requests (API calls and token refreshes alike)
at most ``FRESHBOOKS_BACKGROUND_RATE`` a second within the process, whichever duty sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
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


async def every(interval: float, cycle: Callable[[], Awaitable[object]], *, failure: str) -> None:
    """``cycle()`` once per ``interval`` seconds, until cancelled: a cycle that spreads its work over
    the interval (:func:`spread`) is followed by the next at once, a quicker one waits for the rest of
    it. A cycle that fails is logged (as ``failure``) and the next still comes on time."""
    while True:
        started = time.monotonic()
        try:
            await cycle()
        except Exception:
            log.exception(failure)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


#: Seconds between two background requests for one tenant (0: not background work); see :func:`background`.
_BACKGROUND_SPACING: ContextVar[float] = ContextVar("background_spacing", default=0.0)


@contextlib.contextmanager
def background(rate: float) -> Iterator[None]:
    """Requests made inside (and in tasks started inside) are a periodic duty's: each tenant's are
    sent no more than ``rate`` per second (``FRESHBOOKS_BACKGROUND_RATE``; 0: unpaced), however many
    tenants a duty works on at once. FreshBooks' rate limits are unpublished and per app: a sweep
    that spends them starves the webhooks' fetches, which are never paced."""
    token = _BACKGROUND_SPACING.set(1.0 / rate if rate > 0 else 0.0)
    try:
        yield
    finally:
        _BACKGROUND_SPACING.reset(token)


class Pace:
    """Each key's (a tenant's) next background turn, shared by everything in the process that sends
    for it. Outside :func:`background`, :meth:`turn` returns at once."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sleep = sleep
        self._next: dict[str, float] = {}

    async def turn(self, key: str) -> None:
        """Wait for ``key``'s next turn, and book the one after it; call it right before sending."""
        spacing = _BACKGROUND_SPACING.get()
        if not spacing:
            return
        now = asyncio.get_running_loop().time()
        turn = max(now, self._next.get(key, now))
        self._next[key] = turn + spacing
        if len(self._next) > 4096:  # forget the turns already past: the map stays the size of the work
            self._next = {k: at for k, at in self._next.items() if at > now}
        if turn > now:
            await self._sleep(turn - now)
            woke = asyncio.get_running_loop().time()
            if woke > turn:  # woken late (a busy loop): the next turn is a whole spacing after this one
                self._next[key] = max(self._next.get(key, woke), woke + spacing)
