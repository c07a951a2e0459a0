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
