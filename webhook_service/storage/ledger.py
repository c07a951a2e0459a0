"""The object-version ledger's queries: what was emitted of some objects, and a lock per object.

The webhook path and the backfill both read the ledger before they write a state of an object
(``normalize/emit.py``); the lock makes that read and the write one step per object, so two
transactions committing states of one object at the same moment (two replicas, or the service and
an operator's ``backfill``) cannot both miss each other.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage import compiled
from webhook_service.storage.bulk import Write, write
from webhook_service.storage.lists import one_of
from webhook_service.storage.models import Delivery, Event, ObjectVersion
from webhook_service.storage.session import conflicts

ObjectKey = tuple[str, str, str]
"""tenant id, resource, object id."""


@dataclass
class Emitted:
    """What the ledger holds of one object."""

    versions: set[str] = field(default_factory=set)
    newest_read: datetime | None = None
    """When the request that read the newest emitted state was sent (None for rows from before 0006)."""


async def emitted(session: AsyncSession, keys: Iterable[ObjectKey]) -> dict[ObjectKey, Emitted]:
    """The ledger's entries for these objects (one query); objects never emitted are absent."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = await compiled.rows(
        session,
        _emitted_query(),
        {
            "tenants": list({key[0] for key in wanted}),
            "resources": list({key[1] for key in wanted}),
            "objects": list({key[2] for key in wanted}),
        },
    )
    found: dict[ObjectKey, Emitted] = {}
    for tenant_id, resource, object_id, version, observed_at in rows:
        key = (tenant_id, resource, object_id)
        if key not in wanted:  # the IN lists cross: another tenant's object of the same id
            continue
        entry = found.setdefault(key, Emitted())
        entry.versions.add(version)
        if observed_at is not None and (entry.newest_read is None or observed_at > entry.newest_read):
            entry.newest_read = observed_at
    return found


@functools.cache
def _emitted_query() -> Select[str, str, str, str, datetime | None]:
    """Built once (bound parameters ``tenants``, ``resources``, ``objects``): every commit of
    events runs it, and building it cost more than running it."""
    return select(
        ObjectVersion.tenant_id,
        ObjectVersion.resource,
        ObjectVersion.object_id,
        ObjectVersion.version,
        ObjectVersion.observed_at,
    ).where(
        one_of(ObjectVersion.tenant_id, "tenants"),
        one_of(ObjectVersion.resource, "resources"),
        one_of(ObjectVersion.object_id, "objects"),
    )


async def lock_objects(session: AsyncSession, keys: Iterable[ObjectKey]) -> None:
    """Hold, until the transaction ends, a lock on each of these objects. Call it before
    :func:`emitted`, and write in the same transaction.

    PostgreSQL: advisory locks, one per object, taken in one order so two callers never deadlock.
    SQLite: its one lock, the database's write lock, taken by a write that changes nothing (a
    process has one connection, so only another process can be in the way, and it waits in its
    busy handler until this transaction ends).
    """
    objects = set(keys)
    if not objects:
        return
    if session.get_bind().dialect.name == "sqlite":
        await compiled.fetch(session, "UPDATE object_versions SET id = id WHERE 0", ())
        return
    ids = sorted({_lock_id(key) for key in objects})
    await compiled.fetch(session, "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", (ids,))


async def record(
    session: AsyncSession,
    *,
    versions: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    deliveries: Sequence[dict[str, Any]],
    along: Sequence[Write] = (),
) -> None:
    """Insert ledger rows, the events they stand for and the events' deliveries, one statement each
    (one for all on PostgreSQL, with the caller's writes ``along``: see :func:`~.bulk.write`).

    A version the ledger already holds (another transaction got in first, despite the locks)
    raises :class:`~webhook_service.storage.session.Conflict`: the version was emitted already.
    """
    with conflicts():
        await write(
            session,
            [("insert", ObjectVersion, versions), ("insert", Event, events), ("insert", Delivery, deliveries), *along],
        )


def _lock_id(key: ObjectKey) -> int:
    """A signed 64-bit id for the object (a collision only makes two objects share a lock)."""
    digest = hashlib.blake2b("\x1f".join(key).encode("utf-8"), digest_size=8, person=b"ledger").digest()
    return int.from_bytes(digest, "big", signed=True)
