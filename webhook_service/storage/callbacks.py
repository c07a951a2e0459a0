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
    delivery because of what the copy says reads the row again (:meth:`get` with ``read_after``)
    before answering; a process that changes the row drops its own copy (:meth:`forget`).
    Unknown keys are never cached: random keys cannot grow the cache.

    When a busy callback's copy runs out, every webhook in flight for it misses at once. Each used
    to read the row itself (32 reads at 32 in flight, every ``ttl``); :meth:`get` lets them share
    one read. A webhook that a stale copy made refuse (a verification completed since it was read)
    asks for a read begun after the webhook arrived, and shares one with every other such webhook
    that had arrived by then. Webhooks that arrive after it began read again: the loop takes them
    one at a time, so a burst held in the socket still reads about once per webhook the loop starts
    before the first fresh copy is kept. The process that completed the verification drops its copy
    (:meth:`forget`), so there it is one read for the burst.
    """

    def __init__(self, db: Database, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl
        self.now = clock
        """The cache's clock, for :meth:`get`'s ``read_after``."""
        self._entries: dict[str, tuple[float, Callback]] = {}
        """endpoint key -> (when the read of the row began, the row)"""
        self._reading: dict[str, tuple[float, asyncio.Future[Callback | None]]] = {}
        self._changed: dict[str, float] = {}
        """endpoint key -> when this process last changed the row (:meth:`forget`)"""

    def cached(self, endpoint_key: str) -> Callback | None:
        """The copy kept for ``endpoint_key`` if it is younger than ``ttl``; None otherwise.

        No await: a busy callback's webhook is served without a read, a timeout or a loop turn."""
        entry = self._entries.get(endpoint_key)
        if entry is not None and self.now() - entry[0] < self._ttl:
            return entry[1]
        return None

    async def get(self, endpoint_key: str, *, read_after: float | None = None) -> Callback | None:
        """The kept copy, or else the stored row, read once for every caller that misses meanwhile.

        With ``read_after`` (a time of :attr:`now`), only the row as read by a read begun then or
        later will do, however young the copy: a caller whose copy was refused asks for the row as
        it was when the caller's own request arrived.

        The read is shielded from each caller: one that gives up (its timeout, its client gone)
        leaves it running for the others, and its failure reaches each of them.
        """
        if read_after is None:
            callback = self.cached(endpoint_key)
            if callback is not None:
                return callback
        else:
            entry = self._entries.get(endpoint_key)
            if entry is not None and entry[0] >= read_after:
                return entry[1]
        reading = self._reading.get(endpoint_key)
        if reading is None or (read_after is not None and reading[0] < read_after):
            began = self.now()
            future = asyncio.ensure_future(self._load(endpoint_key, began))
            reading = self._reading[endpoint_key] = (began, future)
            future.add_done_callback(lambda done: self._read(endpoint_key, done))
        return await asyncio.shield(reading[1])

    def forget(self, endpoint_key: str) -> None:
        """Drop the copy (this process changed the row): the next webhook reads the row, once for
        all that miss meanwhile, rather than each being refused by the copy first. A read begun
        before is not kept, nor shared from now on."""
        self._entries.pop(endpoint_key, None)
        self._changed[endpoint_key] = self.now()
        self._reading.pop(endpoint_key, None)

    def _read(self, endpoint_key: str, done: asyncio.Future[Callback | None]) -> None:
        reading = self._reading.get(endpoint_key)
        if reading is not None and reading[1] is done:
            del self._reading[endpoint_key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have given up on it

    async def _load(self, endpoint_key: str, began: float) -> Callback | None:
        """The stored row, kept as read at ``began`` unless a later read's is kept already (or
        forgotten, when there is none)."""
        async with self._db.sessions() as session:
            callback = await by_endpoint_key(session, endpoint_key)
        kept = self._entries.get(endpoint_key)
        if (kept is not None and kept[0] > began) or began < self._changed.get(endpoint_key, began):
            return callback  # a later read's copy is kept, or the row changed since this one began
        if callback is None:
            self._entries.pop(endpoint_key, None)
            return None
        if len(self._entries) >= 10_000:
            self._entries.clear()
            self._changed.clear()
        self._entries[endpoint_key] = (began, callback)
        return callback
