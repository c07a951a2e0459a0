"""Queries on the ``callbacks`` table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import Callback


async def get(session: AsyncSession, callback_id: str, *, lock: bool = False) -> Callback | None:
    """The callback, with ``lock`` held until the transaction ends (so nobody changes it meanwhile)."""
    return await session.get(Callback, callback_id, with_for_update=lock or None)


def add(session: AsyncSession, callback: Callback) -> None:
    """Insert ``callback`` with the session's commit."""
    session.add(callback)


async def update(session: AsyncSession, callback_id: str, **values: Any) -> Callback | None:
    """Set these columns (and ``updated_at``) on the callback; None when there is no such callback."""
    callback = await session.get(Callback, callback_id)
    if callback is None:
        return None
    for name, value in values.items():
        setattr(callback, name, value)
    callback.updated_at = utcnow()
    return callback


async def retire(session: AsyncSession, callback_id: str) -> Callback | None:
    """Retire the callback (no longer active, kept on record); None when there is no such callback."""
    callback = await session.get(Callback, callback_id)
    if callback is not None:
        _retire(callback)
    return callback


async def retire_active(session: AsyncSession, tenant_id: str) -> list[Callback]:
    """Retire every active callback of the tenant; returns them."""
    retired = await active_for_tenant(session, tenant_id)
    for callback in retired:
        _retire(callback)
    return retired


def _retire(callback: Callback) -> None:
    callback.active = False
    callback.retired_at = utcnow()
    callback.updated_at = callback.retired_at


async def by_endpoint_key(session: AsyncSession, endpoint_key: str) -> Callback | None:
    result = await session.execute(
        select(Callback).where(Callback.endpoint_key == endpoint_key, Callback.active.is_(True))
    )
    return result.scalar_one_or_none()


async def active_for_tenant(session: AsyncSession, tenant_id: str) -> list[Callback]:
    result = await session.execute(
        select(Callback)
        .where(Callback.tenant_id == tenant_id, Callback.active.is_(True))
        .order_by(Callback.event, Callback.created_at)
    )
    return list(result.scalars())


async def list_all(
    session: AsyncSession, *, tenant_id: str | None = None, include_retired: bool = False
) -> list[Callback]:
    query = select(Callback).order_by(Callback.tenant_id, Callback.event, Callback.created_at)
    if tenant_id is not None:
        query = query.where(Callback.tenant_id == tenant_id)
    if not include_retired:
        query = query.where(Callback.active.is_(True))
    return list((await session.execute(query)).scalars())


class CallbackCache:
    """Active callbacks by endpoint key, kept for ``ttl`` seconds.

    A busy callback would otherwise read its row once per delivery. A cached copy can be stale (a
    verifier rotated or a verification completed in another replica), so a caller that refuses a
    delivery because of what the copy says reads the row again (:meth:`load`) before answering.
    Unknown keys are never cached: random keys cannot grow the cache.

    When a busy callback's copy runs out, every webhook in flight for it misses at once. Each used
    to read the row itself (32 reads at 32 in flight, every ``ttl``); :meth:`get` lets them share
    one read.
    """

    def __init__(self, db: Database, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Callback]] = {}
        self._reading: dict[str, asyncio.Future[Callback | None]] = {}

    def cached(self, endpoint_key: str) -> Callback | None:
        """The copy kept for ``endpoint_key`` if it is younger than ``ttl``; None otherwise.

        No await: a busy callback's webhook is served without a read, a timeout or a loop turn."""
        entry = self._entries.get(endpoint_key)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        return None

    async def get(self, endpoint_key: str) -> Callback | None:
        """The kept copy, or else the stored row, read once for every caller that misses meanwhile.

        The read is shielded from each caller: one that gives up (its timeout, its client gone)
        leaves it running for the others, and its failure reaches each of them.
        """
        callback = self.cached(endpoint_key)
        if callback is not None:
            return callback
        reading = self._reading.get(endpoint_key)
        if reading is None:
            reading = asyncio.ensure_future(self.load(endpoint_key))
            self._reading[endpoint_key] = reading
            reading.add_done_callback(lambda done: self._read(endpoint_key, done))
        return await asyncio.shield(reading)

    def _read(self, endpoint_key: str, done: asyncio.Future[Callback | None]) -> None:
        if self._reading.get(endpoint_key) is done:
            del self._reading[endpoint_key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have given up on it

    async def load(self, endpoint_key: str) -> Callback | None:
        """The stored row, kept from now (or forgotten, when there is none)."""
        now = self._clock()
        async with self._db.sessions() as session:
            callback = await by_endpoint_key(session, endpoint_key)
        if callback is None:
            self._entries.pop(endpoint_key, None)
            return None
        if len(self._entries) >= 10_000:
            self._entries.clear()
        self._entries[endpoint_key] = (now, callback)
        return callback
