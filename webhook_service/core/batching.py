"""Group commit: many concurrent callers, one transaction for all of them.

Each caller submits one item and awaits its own result. One drain at a time hands everything queued
so far to ``flush`` (the items that arrived while the previous flush was running form the next
batch), so under load a transaction carries many items and at rest a lone item goes at once, with
no timer adding latency. ``flush`` returns one result per item.

A flush is all-or-nothing (one transaction): when it raises, every item of the batch failed. Only
an error that one item can cause (``split_on``, e.g. a unique constraint) is worth retrying each
item alone to find it; any other error (the database locked, unreachable, or full) would fail each
of them again, so it goes to every caller at once instead of turning one failure into hundreds.

The queue is bounded (``max_queue``): past it :meth:`Batcher.submit` raises :class:`QueueFull` at
once, so a stalled database makes callers wait in line no deeper than that, rather than growing
memory without end.

The drain runs in its own task: a caller that is cancelled (a client that hung up) never strands
the others' results.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class QueueFull(Exception):
    """More items wait for a flush than the batcher holds: the caller should come back later."""


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int = 500,
        max_queue: int | None = None,
        split_on: tuple[type[BaseException], ...] = (),
        name: str = "batcher",
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._split_on = split_on
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items submitted and not flushed yet (the batch being flushed is not counted)."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            raise QueueFull(f"{self._name}: {len(self._queue)} items already wait for a flush")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drain is None or self._drain.done():
            # A fresh context: the drain serves every caller, so it must not log as the first one's request.
            self._drain = asyncio.get_running_loop().create_task(
                self._run(), name=self._name, context=contextvars.Context()
            )
        # Awaited directly, not through shield(): a caller that is cancelled cancels only its own
        # future (the drain skips it), and each shield would cost every caller a loop iteration.
        return await future

    async def idle(self) -> None:
        """Wait until everything submitted so far has been flushed."""
        while self._drain is not None and not self._drain.done():
            await asyncio.shield(self._drain)

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._settle(batch)
        finally:  # cancelled (shutdown): nobody waits forever
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.cancel()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, self._split_on):  # find the bad item: each alone
                for one in batch:
                    await self._settle([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
