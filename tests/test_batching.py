"""Group commit: concurrent callers share flushes, and one bad item fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from webhook_service.core.batching import Batcher, QueueFull
from webhook_service.inbound import registrar
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import inbox
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import InboxStatus


async def test_callers_arriving_during_a_flush_share_the_next_one():
    flushed: list[list[int]] = []
    first_started, release_first = asyncio.Event(), asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        flushed.append(list(items))
        if len(flushed) == 1:
            first_started.set()
            await release_first.wait()
        return [item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(flush)
    first = asyncio.ensure_future(batcher.submit(1))
    await first_started.wait()
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    release_first.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert flushed == [[1], [2, 3, 4]]


async def test_a_failing_item_fails_only_its_caller():
    """An error one item can cause (a constraint) is found by flushing each alone."""

    async def flush(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush, split_on=(ValueError,))
    results = await asyncio.gather(*(batcher.submit(n) for n in (12, 13, 14)), return_exceptions=True)
    assert results[0] == 12 and results[2] == 14
    assert isinstance(results[1], ValueError)


async def test_an_error_of_the_whole_batch_fails_every_caller_with_one_flush():
    """A locked or unreachable database fails the batch, not each item again: one flush, not one per item."""
    calls: list[list[int]] = []
    started, gate = asyncio.Event(), asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:  # hold the first so the rest queue up behind it as one batch
            started.set()
            await gate.wait()
            return list(items)
        raise ConnectionError("database unreachable")

    batcher: Batcher[int, int] = Batcher(flush, split_on=(ValueError,))
    first = asyncio.ensure_future(batcher.submit(0))
    await started.wait()
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 501)]
    await asyncio.sleep(0)  # let each submit reach the queue (no timing: one loop pass)
    gate.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert calls[1:] == [list(range(1, 501))]  # one flush for the 500, none retried alone


async def test_a_full_queue_refuses_at_once_instead_of_growing():
    started, gate = asyncio.Event(), asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        started.set()
        await gate.wait()
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush, max_queue=3)
    first = asyncio.ensure_future(batcher.submit(0))
    await started.wait()  # the first is being flushed; the queue is empty again
    queued = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    assert batcher.waiting == 3
    with pytest.raises(QueueFull):
        await batcher.submit(4)
    gate.set()
    assert await asyncio.gather(first, *queued) == [0, 1, 2, 3]


async def test_a_cancelled_caller_does_not_strand_the_others():
    started, gate = asyncio.Event(), asyncio.Event()
    flushed: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        flushed.append(list(items))
        started.set()
        await gate.wait()
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush)
    leaver = asyncio.ensure_future(batcher.submit(1))
    stayer = asyncio.ensure_future(batcher.submit(2))
    await started.wait()
    assert flushed == [[1, 2]]  # one flush carries both
    leaver.cancel()
    gate.set()
    assert await stayer == 2
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await batcher.idle()


async def test_copies_of_a_delivery_in_one_batch_are_duplicates_of_the_first(runtime, tenant):
    await registrar.sync_tenant(runtime, tenant)
    async with runtime.db.sessions() as session:
        [callback, *_] = await callback_store.active_for_tenant(session, tenant.id)
    now = utcnow()
    body = b"name=invoice.update&object_id=7"
    arrival = inbox.Arrival(callback.id, tenant.id, {"name": "invoice.update", "object_id": "7"}, body, {}, now)
    other = inbox.Arrival(callback.id, tenant.id, {"name": "invoice.update", "object_id": "8"}, b"other", {}, now)
    async with runtime.db.sessions() as session:
        rows = await inbox.record_many(session, [arrival, other, arrival], dedupe_window=timedelta(minutes=5))
        await session.commit()
    first, second, copy = rows
    assert first.status == second.status == InboxStatus.PENDING.value
    assert copy.status == InboxStatus.DUPLICATE.value and copy.duplicate_of == first.id
    assert copy.next_attempt_at is None  # its original is still pending: nothing to recheck
    async with runtime.db.sessions() as session:
        stored = await inbox.list_events(session)
    assert sorted(e.id for e in stored) == sorted(r.id for r in rows)


async def test_a_copy_is_a_duplicate_of_the_earlier_delivery_of_the_same_body_to_the_same_callback(runtime, tenant):
    """Looked up pair by pair (PostgreSQL asks each (callback, hash) alone): the same body sent to
    another callback is no copy, and a copy of a copy points at the first delivery."""
    await registrar.sync_tenant(runtime, tenant)
    async with runtime.db.sessions() as session:
        x, y, *_ = await callback_store.active_for_tenant(session, tenant.id)
    now = utcnow()

    def arrival(callback, body: bytes, at=now) -> inbox.Arrival:
        return inbox.Arrival(callback.id, tenant.id, {"name": "invoice.update", "object_id": "7"}, body, {}, at)

    window = timedelta(minutes=5)
    async with runtime.db.sessions() as session:
        old = await inbox.record_many(session, [arrival(x, b"c", now - timedelta(minutes=6))], dedupe_window=window)
        first = await inbox.record_many(session, [arrival(x, b"a"), arrival(y, b"b")], dedupe_window=window)
        again = await inbox.record_many(session, [arrival(x, b"a")], dedupe_window=window)
        await session.commit()
    async with runtime.db.sessions() as session:
        later = [arrival(x, b"a"), arrival(y, b"a"), arrival(y, b"b"), arrival(x, b"b"), arrival(x, b"c")]
        rows = await inbox.record_many(session, later, dedupe_window=window)
        await session.commit()
    a_to_x, a_to_y, b_to_y, b_to_x, c_to_x = rows
    assert again[0].duplicate_of == first[0].id
    assert a_to_x.status == InboxStatus.DUPLICATE.value and a_to_x.duplicate_of == first[0].id
    assert b_to_y.status == InboxStatus.DUPLICATE.value and b_to_y.duplicate_of == first[1].id
    assert a_to_y.status == b_to_x.status == InboxStatus.PENDING.value  # another callback: no copy
    assert c_to_x.status == old[0].status == InboxStatus.PENDING.value  # its first copy is out of the window
