"""Group commit: many concurrent callers, one transaction for all of them.

Each caller submits one item and awaits its own result. One drain at a time hands everything queued
so far to ``flush`` (the items that arrived while the previous flush was running form the next
batch), so under load a transaction carries many items and at rest a lone item goes at once, with
no timer adding latency. ``flush`` returns one result per item; if it raises, each item is retried
alone so that one bad item fails only its own caller.

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


class Batcher(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], *, max_batch: int = 500, name: str = "batcher") -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
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
            if len(batch) > 1:  # find the bad item: each alone
                for one in batch:
                    await self._settle([one])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
