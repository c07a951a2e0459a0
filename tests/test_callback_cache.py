"""The callback cache: webhooks that miss together share one read of the row.

Each test makes the misses overlap on purpose: the row's read waits on a gate the test opens.
"""

from __future__ import annotations

import asyncio

import pytest
from records import tenant_row

from webhook_service.runtime import Runtime
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage.callbacks import CallbackCache
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Callback

KEY = "cachekey1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stored(runtime: Runtime) -> None:
    now = utcnow()
    async with runtime.db.sessions() as session:
        session.add(tenant_row(runtime.box, "ten_cache", account_id="ACCCACHE", business_id=4242, now=now))
        await session.flush()
        session.add(
            Callback(
                id="cb_cache",
                tenant_id="ten_cache",
                event="invoice",
                endpoint_key=KEY,
                uri=f"http://127.0.0.1/webhooks/freshbooks/{KEY}",
                status="verified",
            )
        )
        await session.commit()


class GatedReads:
    """Counts the row's reads and holds each until :attr:`gate` opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.count = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.fail = fail
        real = callback_store.by_endpoint_key

        async def read(session, endpoint_key):  # type: ignore[no-untyped-def]
            self.count += 1
            self.started.set()
            await self.gate.wait()
            if self.fail:
                raise OSError("disk I/O error")
            return await real(session, endpoint_key)

        monkeypatch.setattr(callback_store, "by_endpoint_key", read)


async def test_concurrent_misses_share_one_read(runtime: Runtime, stored: None, monkeypatch) -> None:
    reads = GatedReads(monkeypatch)
    cache = CallbackCache(runtime.db)
    waiting = [asyncio.create_task(cache.get(KEY)) for _ in range(20)]
    await reads.started.wait()
    reads.gate.set()
    found = await asyncio.gather(*waiting)
    assert reads.count == 1
    assert {callback.id for callback in found} == {"cb_cache"}
    assert (await cache.get(KEY)).id == "cb_cache" and reads.count == 1  # kept now


async def test_a_caller_that_gives_up_leaves_the_read_to_the_others(
    runtime: Runtime, stored: None, monkeypatch
) -> None:
    reads = GatedReads(monkeypatch)
    cache = CallbackCache(runtime.db)
    first = asyncio.create_task(cache.get(KEY))
    await reads.started.wait()
    second = asyncio.create_task(cache.get(KEY))
    await asyncio.sleep(0)  # the second joins the read under way
    first.cancel()
    reads.gate.set()
    assert (await second).id == "cb_cache"
    assert first.cancelled() and reads.count == 1


async def test_a_failed_read_reaches_every_caller_and_the_next_miss_reads_again(
    runtime: Runtime, stored: None, monkeypatch
) -> None:
    reads = GatedReads(monkeypatch, fail=True)
    cache = CallbackCache(runtime.db)
    waiting = [asyncio.create_task(cache.get(KEY)) for _ in range(5)]
    await reads.started.wait()
    reads.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, OSError) for outcome in outcomes) and reads.count == 1
    reads.fail = False
    assert (await cache.get(KEY)).id == "cb_cache" and reads.count == 2


async def test_an_expired_copy_is_read_again_once(runtime: Runtime, stored: None, monkeypatch) -> None:
    clock = Clock()
    cache = CallbackCache(runtime.db, ttl=5.0, clock=clock)
    assert (await cache.get(KEY)).id == "cb_cache"
    reads = GatedReads(monkeypatch)
    reads.gate.set()
    clock.now += 4.9
    await asyncio.gather(*(cache.get(KEY) for _ in range(10)))
    assert reads.count == 0
    clock.now += 0.2
    await asyncio.gather(*(cache.get(KEY) for _ in range(10)))
    assert reads.count == 1


async def test_unknown_keys_are_read_each_time_and_not_kept(runtime: Runtime, stored: None, monkeypatch) -> None:
    reads = GatedReads(monkeypatch)
    reads.gate.set()
    cache = CallbackCache(runtime.db)
    assert await cache.get("nosuchkey") is None
    assert await cache.get("nosuchkey") is None
    assert reads.count == 2 and cache.cached("nosuchkey") is None
    assert not cache._reading  # nothing left behind for a key that was read


async def _set_status(runtime: Runtime, status: str) -> None:
    async with runtime.db.sessions() as session:
        await callback_store.update(session, "cb_cache", status=status)
        await session.commit()


async def test_webhooks_a_stale_copy_refused_share_one_read_begun_after_they_arrived(
    runtime: Runtime, stored: None, monkeypatch
) -> None:
    """A verification completed since the copy was read: every webhook of the burst asks for the
    row as it was when it arrived, and one read begun after all of them arrived serves them all."""
    clock = Clock()
    cache = CallbackCache(runtime.db, clock=clock)
    assert (await cache.get(KEY)).status == "verified"  # kept as read at 1000
    await _set_status(runtime, "pending_verification")
    clock.now += 1
    arrived = cache.now()  # the burst arrives, its copy young
    assert cache.cached(KEY) is not None
    clock.now += 0.5  # the first refusal asks
    reads = GatedReads(monkeypatch)
    waiting = [asyncio.create_task(cache.get(KEY, read_after=arrived)) for _ in range(20)]
    await reads.started.wait()
    reads.gate.set()
    found = await asyncio.gather(*waiting)
    assert reads.count == 1
    assert {callback.status for callback in found} == {"pending_verification"}
    assert (await cache.get(KEY, read_after=arrived)).status == "pending_verification" and reads.count == 1


async def test_a_read_begun_before_a_webhook_arrived_does_not_do_for_it(
    runtime: Runtime, stored: None, monkeypatch
) -> None:
    """And a read that began earlier, finishing last, does not replace the later one's copy."""
    clock = Clock()
    cache = CallbackCache(runtime.db, clock=clock)
    await _set_status(runtime, "pending_verification")
    early_done = asyncio.Event()
    begun: list[int] = []
    real = callback_store.by_endpoint_key

    async def read(session, endpoint_key):  # type: ignore[no-untyped-def]
        begun.append(len(begun))
        if len(begun) == 1:  # the early read: it found the row still verified, and is slow to answer
            await early_done.wait()
            return Callback(id="cb_cache", tenant_id="ten_cache", event="invoice", endpoint_key=KEY, status="verified")
        return await real(session, endpoint_key)

    monkeypatch.setattr(callback_store, "by_endpoint_key", read)
    early = asyncio.create_task(cache.get(KEY))  # a miss: begins at 1000
    while not begun:
        await asyncio.sleep(0)
    clock.now += 2
    async with asyncio.timeout(10):  # sharing the early read would wait for it forever
        late = await cache.get(KEY, read_after=1001.0)  # not the early read: it began before this webhook arrived
    assert late.status == "pending_verification" and len(begun) == 2
    early_done.set()
    assert (await early).status == "verified"  # its caller asked for any copy
    kept = cache.cached(KEY)
    assert kept is not None and kept.status == "pending_verification"  # the later read's copy stays


async def test_a_row_this_process_changed_is_read_again_and_no_read_begun_before_is_kept(
    runtime: Runtime, stored: None, monkeypatch
) -> None:
    """The process that completes a verification drops its copy: the next webhooks read the row
    (not the read under way, which began before the change), and are not refused first."""
    clock = Clock()
    cache = CallbackCache(runtime.db, clock=clock)
    early_done = asyncio.Event()
    begun: list[int] = []
    real = callback_store.by_endpoint_key

    async def read(session, endpoint_key):  # type: ignore[no-untyped-def]
        begun.append(len(begun))
        if len(begun) == 1:  # begun before the change: it found the row pending, and is slow to answer
            await early_done.wait()
            return Callback(id="cb_cache", tenant_id="ten_cache", event="invoice", endpoint_key=KEY, status="pending")
        return await real(session, endpoint_key)

    monkeypatch.setattr(callback_store, "by_endpoint_key", read)
    early = asyncio.create_task(cache.get(KEY))
    while not begun:
        await asyncio.sleep(0)
    clock.now += 1
    cache.forget(KEY)  # the verification is committed
    async with asyncio.timeout(10):  # sharing the early read would wait for it forever
        after = await cache.get(KEY)
    assert after.status == "verified" and len(begun) == 2
    clock.now += 1
    cache.forget(KEY)  # changed again: nothing kept now
    early_done.set()
    assert (await early).status == "pending"  # its caller asked for any copy
    assert cache.cached(KEY) is None  # but it began before the changes: not kept
