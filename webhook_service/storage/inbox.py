"""Writing verified FreshBooks deliveries to the durable inbox."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, bindparam, func, or_, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.config import Settings
from webhook_service.core.batching import Batcher
from webhook_service.core.jsontext import compact
from webhook_service.core.logs import get_logger
from webhook_service.core.signals import Grant, Lane
from webhook_service.storage import compiled
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.bulk import insert_returning_ids
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.leased import LeasedInboxEvent
from webhook_service.storage.lists import one_of
from webhook_service.storage.models import Callback, InboxEvent, InboxStatus, Tenant

log = get_logger(__name__)

HandedInboxEvent = tuple[LeasedInboxEvent, Tenant]
"""An inbox event leased to this process's processor, with its tenant."""

LAST_EVENT_RESOLUTION = timedelta(minutes=1)
"""``callbacks.last_event_at`` is exact to this; it says whether a callback is alive, not a count."""


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Arrival:
    """A verified delivery on its way into the inbox."""

    callback_id: str
    tenant_id: str
    fields: dict[str, str]
    raw_body: bytes
    headers: dict[str, str]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Recorded:
    """An inbox row as :func:`record_many` wrote it. A webhook's answer needs four of its columns,
    and building the ORM's instance of every row cost a tenth of a webhook's CPU: only a row handed
    to this process's processor becomes a record, and a plain one (:meth:`leased`)."""

    row: dict[str, Any]

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def status(self) -> str:
        return str(self.row["status"])

    @property
    def duplicate_of(self) -> int | None:
        return self.row["duplicate_of"]

    @property
    def next_attempt_at(self) -> datetime | None:
        return self.row["next_attempt_at"]

    @property
    def lease_owner(self) -> str | None:
        return self.row["lease_owner"]

    def leased(self) -> LeasedInboxEvent:
        return LeasedInboxEvent.of(self.row)


def writer(db: Database, settings: Settings, lane: Lane[HandedInboxEvent]) -> Batcher[Arrival, Recorded]:
    """The process's one way into the inbox: concurrent deliveries share a transaction (group commit).

    Each caller's ``submit`` returns once its row is committed, so a 2xx sent after it is durable.
    New events of active tenants are leased to this process's processor in the same transaction
    (no more than it has room to start) and handed to it with their tenant rows, read in that
    transaction too. A flush that cannot get the database within ``INBOUND_COMMIT_TIMEOUT`` fails
    with nothing written (:meth:`~webhook_service.storage.database.Database.bounded_session`), and
    no more than ``INBOUND_QUEUE_LIMIT`` deliveries wait for one (:class:`~webhook_service.core.batching.QueueFull`).
    """

    dedupe_window = timedelta(seconds=settings.inbox_dedupe_window)
    touched: dict[str, datetime] = {}  # callback id -> last_event_at this process wrote

    async def flush(arrivals: Sequence[Arrival]) -> list[Recorded]:
        started = time.perf_counter()
        grant = lane.lease(utcnow(), len(arrivals))
        try:
            async with db.bounded_session(settings.inbound_commit_timeout) as session:
                tenants: dict[str, Tenant] = {}
                if grant is not None:
                    tenants = await tenant_store.by_ids(session, (a.tenant_id for a in arrivals), active=True)
                events = await record_many(
                    session, arrivals, dedupe_window=dedupe_window, lease=grant, leasable=set(tenants), touched=touched
                )
                await session.commit()
        except BaseException:
            if grant is not None:
                lane.cancel(grant)
            raise
        log.debug(  # one line per group commit: how many deliveries shared the transaction
            "inbox_flushed",
            events=len(events),
            duplicates=sum(event.status == InboxStatus.DUPLICATE.value for event in events),
            leased=sum(event.lease_owner is not None for event in events),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        if grant is not None:
            lane.hand_over(
                grant, [(e.leased(), tenants[e.row["tenant_id"]]) for e in events if e.lease_owner == grant.token]
            )
        return events

    return Batcher(
        flush, name="inbox-writer", max_queue=settings.inbound_queue_limit, split_on=(IntegrityError, DataError)
    )


async def record_many(
    session: AsyncSession,
    arrivals: Sequence[Arrival],
    *,
    dedupe_window: timedelta,
    lease: Grant | None = None,
    leasable: set[str] | frozenset[str] = frozenset(),
    touched: dict[str, datetime] | None = None,
) -> list[Recorded]:
    """Add the deliveries (not committed); an exact redelivery within the window is a duplicate.

    A duplicate is never processed as an event of its own. But FreshBooks bodies carry only ids, so
    a second genuine change of the same object looks exactly like a redelivery: when the first copy
    may already have fetched the object (it is processed, or leased to a processor that may be
    fetching it right now), the duplicate is marked for a recheck (``next_attempt_at``), which
    fetches the object again and emits only a version the ledger has not seen. An original that
    waits unleased (a retry, a tenant to reconnect) will fetch after this arrival, and so does a
    copy's original in the same batch: those duplicates need no recheck.
    """
    digests = [body_hash(arrival.raw_body) for arrival in arrivals]
    leasable_count = lease.count if lease is not None else 0
    originals = await _originals(session, arrivals, digests, dedupe_window)
    rows: list[dict[str, Any]] = []
    firsts: dict[tuple[str, str], int] = {}  # -> index in rows
    repeats: list[tuple[int, int]] = []  # (a copy, its original in this batch), indexes in rows
    for arrival, digest in zip(arrivals, digests, strict=True):
        key = (arrival.callback_id, digest)
        earlier = originals.get(key)
        if earlier is not None and earlier[2] < arrival.received_at - dedupe_window:
            earlier = None
        row = _inbox_row(arrival, digest)
        if earlier is not None:
            row.update(status=InboxStatus.DUPLICATE.value, duplicate_of=earlier[0])
            if earlier[1] != InboxStatus.PENDING.value or earlier[3]:
                row["next_attempt_at"] = arrival.received_at
        elif key in firsts:
            row["status"] = InboxStatus.DUPLICATE.value
            repeats.append((len(rows), firsts[key]))
        else:
            firsts[key] = len(rows)
            if lease is not None and leasable_count > 0 and arrival.tenant_id in leasable:
                row["lease_owner"], row["lease_until"] = lease.token, lease.until
                leasable_count -= 1
        rows.append(row)
    copies = {copy for copy, _ in repeats}
    await _insert_with_ids(session, [row for n, row in enumerate(rows) if n not in copies])
    if repeats:
        for copy, original in repeats:
            rows[copy]["duplicate_of"] = rows[original]["id"]
        await _insert_with_ids(session, [rows[copy] for copy, _ in repeats])
    await _touch_callbacks(session, arrivals, {} if touched is None else touched)
    return [Recorded(row) for row in rows]


async def _insert_with_ids(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """The rows inserted in one go (:func:`~webhook_service.storage.bulk.insert_returning_ids`),
    each given its new ``id``: a multi-row ``INSERT ... RETURNING`` through the engine made
    SQLAlchemy render its text and process each of its parameters (18 a row) on every group
    commit (``tests/benchmarks/bench_inbox.py``)."""
    ids = await insert_returning_ids(session, InboxEvent, rows)
    for row, inbox_id in zip(rows, ids, strict=True):
        row["id"] = inbox_id


async def _originals(
    session: AsyncSession, arrivals: Sequence[Arrival], digests: list[str], dedupe_window: timedelta
) -> dict[tuple[str, str], tuple[int, str, datetime, bool]]:
    """The earliest non-duplicate inbox row per (callback, body hash) in the window: id, status,
    time, and whether a processor holds it."""
    keys = sorted({(arrival.callback_id, digest) for arrival, digest in zip(arrivals, digests, strict=True)})
    since = min(arrival.received_at for arrival in arrivals) - dedupe_window
    if session.get_bind().dialect.name == "postgresql":  # the pairs, as two arrays of one length
        query = _originals_by_key()
        callbacks, hashes = [key[0] for key in keys], [key[1] for key in keys]
    else:  # each value once, as the lists of a lookup in the dedupe index (see storage.lists)
        query = _originals_query()
        callbacks, hashes = list({key[0] for key in keys}), list({key[1] for key in keys})
    rows = await compiled.rows(session, query, {"callbacks": callbacks, "digests": hashes, "since": since})
    found: dict[tuple[str, str], tuple[int, str, datetime, bool]] = {}
    for callback_id, digest, inbox_id, status, received_at, leased in rows:
        found.setdefault((callback_id, digest), (inbox_id, status, received_at, bool(leased)))
    return found


_FOUND = (InboxEvent.id, InboxEvent.status, InboxEvent.received_at, InboxEvent.lease_owner.is_not(None))


@functools.cache
def _originals_query() -> Select[str, str, int, str, datetime, bool]:
    """Built once (bound parameters ``callbacks``, ``digests``, ``since``): every group commit runs
    it, and building it cost more than running it. SQLite looks each pair up in the dedupe index."""
    return (
        select(InboxEvent.callback_id, InboxEvent.body_hash, *_FOUND)
        .where(
            one_of(InboxEvent.callback_id, "callbacks"),
            one_of(InboxEvent.body_hash, "digests"),
            InboxEvent.received_at >= bindparam("since"),
            InboxEvent.status != InboxStatus.DUPLICATE.value,
        )
        .order_by(InboxEvent.id)
    )


@functools.cache
def _originals_by_key() -> Select[str, str, int, str, datetime, bool]:
    """PostgreSQL's form: each (callback, hash) pair looked up alone, its first copy by ``id``.

    Asked with both lists at once (``callback_id IN (...) AND body_hash IN (...)``), PostgreSQL
    without statistics for the table (a fresh one, before autovacuum has analyzed it) walked the
    dedupe index on the callback and the time alone and filtered every row of the window by its
    hash: 3.6 ms a group commit at 4,800 rows, growing with the table, where a lookup per pair
    takes 0.1 ms whatever the statistics say. One statement for any batch size, too: the arrays
    are two parameters, not a list of them.
    """
    keys = (
        func.unnest(
            bindparam("callbacks", type_=postgresql.ARRAY(String)), bindparam("digests", type_=postgresql.ARRAY(String))
        )
        .table_valued("callback_id", "body_hash")
        .render_derived(name="keys")
    )
    first = (
        select(*_FOUND)
        .where(
            InboxEvent.callback_id == keys.c.callback_id,
            InboxEvent.body_hash == keys.c.body_hash,
            InboxEvent.received_at >= bindparam("since"),
            InboxEvent.status != InboxStatus.DUPLICATE.value,
        )
        .order_by(InboxEvent.id)
        .limit(1)
        .lateral("first")
    )
    return select(keys.c.callback_id, keys.c.body_hash, *first.c).select_from(keys).join(first, true())


def _inbox_row(arrival: Arrival, digest: str) -> dict[str, Any]:
    fields = arrival.fields
    return {
        "tenant_id": arrival.tenant_id,
        "callback_id": arrival.callback_id,
        "event_name": fields.get("name", ""),
        "object_id": fields.get("object_id"),
        "account_id": fields.get("account_id"),
        "business_id": fields.get("business_id"),
        "raw_body": arrival.raw_body.decode("utf-8"),
        "headers": compact(arrival.headers, sort_keys=True).decode("utf-8"),
        "body_hash": digest,
        "status": InboxStatus.PENDING.value,
        "duplicate_of": None,
        "received_at": arrival.received_at,
        "processed_at": None,
        "attempts": 0,
        "next_attempt_at": None,
        "lease_owner": None,
        "lease_until": None,
        "last_error": None,
    }


async def _touch_callbacks(session: AsyncSession, arrivals: Sequence[Arrival], touched: dict[str, datetime]) -> None:
    """At most one write a minute per callback: concurrent deliveries would otherwise queue on its row.

    ``touched`` remembers this process's own writes, so a busy callback costs no statement at all
    between them; the ``WHERE`` keeps other processes from writing more often.
    """
    latest: dict[str, datetime] = {}
    for arrival in arrivals:
        latest[arrival.callback_id] = max(arrival.received_at, latest.get(arrival.callback_id, arrival.received_at))
    for callback_id, now in latest.items():
        last = touched.get(callback_id)
        if last is not None and last >= now - LAST_EVENT_RESOLUTION:
            continue
        await session.execute(
            update(Callback)
            .where(
                Callback.id == callback_id,
                or_(Callback.last_event_at.is_(None), Callback.last_event_at < now - LAST_EVENT_RESOLUTION),
            )
            .values(last_event_at=now)
            .execution_options(synchronize_session=False)
        )
        touched[callback_id] = now


async def list_events(
    session: AsyncSession, *, tenant_id: str | None = None, status: str | None = None, limit: int = 100
) -> list[InboxEvent]:
    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(InboxEvent.tenant_id == tenant_id)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    return list((await session.execute(query)).scalars())
