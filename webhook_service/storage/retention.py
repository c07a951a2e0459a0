"""Retention: the purge queries. What is kept, what goes, and how, without holding the database.

Kept, whatever its age: every delivery still pending or failed (a retry is scheduled), and its
event; every inbox event still to process (``pending``, or a ``duplicate`` awaiting its recheck:
``processed_at`` unset and ``next_attempt_at`` set). Kept for ``RETENTION_DAYS``: succeeded and
dead deliveries, counted from ``completed_at`` (a dead delivery stays replayable that long:
``delivery/replay.py``), their attempts, and their events; processed, failed and settled duplicate
inbox events, counted from ``received_at``. After it they are deleted, and so are expired
``pending_connections`` and ``leases`` rows. Subscriber response bodies are cleared after
``RETENTION_RESPONSE_BODY_DAYS`` (the attempt row stays until its delivery goes).

**The ledger** (``object_versions``, how webhooks and the backfill recognise a state already
emitted) keeps, per object, its newest row (by ``observed_at``, then id) for ever; older rows of
the object go once their ``seen_at`` is past the window. That never lets a state be emitted twice:

- the backfill, like the webhook path, only ever reads an object's *current* state. If it is the
  state emitted last, the newest row names it and it is not emitted again. If it is not, it is
  newer than that one, and a version is the ``updated`` stamp plus a digest of the content
  (``normalize/versions.py``), which FreshBooks moves forward on every change: so it matches no
  row past the window either, and the whole ledger would have emitted it too. The deleted rows
  name only states that came before the newest, which a read sent now cannot return;
- a read sent *before* the newest one and answered late (a slow GET, a sweep's page) is held back
  by ``newest_read``, the newest ``observed_at`` of the object's rows (``storage/ledger.py``),
  which the kept row carries (rows written before ``0006`` have no ``observed_at``: their
  ``seen_at`` stands in for ordering them). Such a read lasts seconds; the rows it could match are
  days inside the window and not deleted anyway.

**Batches.** Every delete is ``DELETE ... WHERE id IN (SELECT id ... LIMIT batch_size)``, one short
transaction each, with a yield to the event loop between them: the write lock (SQLite's one lock,
or PostgreSQL's row locks) is never held for more than one batch, and the service's own writes
interleave. Each query walks an index that holds the rows it may delete first (migration
``0007``), so a batch reads about as many rows as it deletes. The ledger, whose kept rows are
spread through it, is walked in windows of the primary key, so no statement reads more than
``LEDGER_WINDOW`` times the batch size of rows, and one purge reads it once.

**SQLite space.** Deleted pages go to the file's free list and are reused by later writes, so the
file stops growing once the purge keeps pace; a database created with ``auto_vacuum=INCREMENTAL``
(every new one: ``database.py``) also gives them back to the file system, ``VACUUM_STEP_PAGES`` at
a time, after the deletes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.sql.elements import ColumnElement

from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Event,
    InboxEvent,
    InboxStatus,
    Lease,
    ObjectVersion,
    PendingConnection,
)

TABLES = (
    "delivery_attempts",
    "deliveries",
    "events",
    "inbox_events",
    "object_versions",
    "pending_connections",
    "leases",
)
"""Every table the purge deletes from, in the order it does."""

RESPONSE_BODY = "response_body"
"""What :data:`Progress` is told for a batch of cleared response bodies."""

FINAL_DELIVERY = (DeliveryStatus.SUCCEEDED.value, DeliveryStatus.DEAD.value)
FINAL_INBOX = (InboxStatus.PROCESSED.value, InboxStatus.FAILED.value)

LEDGER_WINDOW = 20
"""Ledger rows read per statement, in batch sizes: most old rows are kept (one per object)."""

VACUUM_STEP_PAGES = 1000
"""SQLite pages given back per transaction (4 MB at the default page size)."""

Progress = Callable[[str, int], Awaitable[None]]
"""Awaited after each committed batch with the table (or :data:`RESPONSE_BODY`) and its row count.
Raising stops the purge there (what was committed stays done)."""


@dataclass(frozen=True)
class Retention:
    """How long rows are kept (``RETENTION_*`` settings)."""

    days: float
    response_body_days: float
    batch_size: int = 500


@dataclass
class PurgeReport:
    dry_run: bool
    now: datetime
    cutoff: datetime
    """Final-state rows completed (deliveries), created (events), received (inbox) or seen (ledger)
    before this go."""
    response_body_cutoff: datetime
    """Response bodies of attempts started before this are cleared."""
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    """Rows deleted per table (with ``dry_run``: that would be)."""
    response_bodies_cleared: int = 0
    sqlite_pages_freed: int | None = None
    """Pages given back to the file system; None when not an incremental-vacuum SQLite database
    (or a dry run)."""

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "cutoffs": {
                "final_states": self.cutoff.isoformat(),
                "response_bodies": self.response_body_cutoff.isoformat(),
                "expired": self.now.isoformat(),
            },
            "deleted": dict(self.deleted),
            "total_deleted": self.total,
            "response_bodies_cleared": self.response_bodies_cleared,
            "sqlite_pages_freed": self.sqlite_pages_freed,
        }


async def purge(
    db: Database,
    policy: Retention,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PurgeReport:
    """Delete (or, with ``dry_run``, count) everything past its retention; see the module docstring.

    Deliveries go before events, so an event is deleted once nothing holds it; everything else is
    independent. With ``dry_run`` each count is one query and nothing is written.
    """
    now = now or utcnow()
    report = PurgeReport(
        dry_run=dry_run,
        now=now,
        cutoff=now - timedelta(days=policy.days),
        response_body_cutoff=now - timedelta(days=policy.response_body_days),
    )
    batch = policy.batch_size
    for table, key, candidates in _plan(report.cutoff, now):
        if dry_run:
            report.deleted[table] += await _count(db, candidates)
        else:
            report.deleted[table] += await _delete_in_batches(db, table, key, candidates, batch, progress)
    if dry_run:
        report.deleted["object_versions"] = await _count(db, _superseded_versions(report.cutoff))
        report.response_bodies_cleared = await _count(db, _bodies(report.response_body_cutoff, report.cutoff))
        return report
    report.deleted["object_versions"] = await _delete_superseded_versions(db, report.cutoff, batch, progress)
    report.response_bodies_cleared = await _clear_bodies(db, report.response_body_cutoff, batch, progress)
    report.sqlite_pages_freed = await incremental_vacuum(db)
    return report


# -- what goes ---------------------------------------------------------------------------------
Candidates = Select[Any]
"""A query of the keys of the rows to delete, without a limit."""


def _plan(cutoff: datetime, now: datetime) -> list[tuple[str, InstrumentedAttribute[Any], Candidates]]:
    """(table, its key column, the rows to delete), in order. The ledger is apart (windowed)."""
    a, d, e, i = aliased(DeliveryAttempt), aliased(Delivery), aliased(Event), aliased(InboxEvent)
    p, lease = aliased(PendingConnection), aliased(Lease)
    # Aliases, so that the subquery is never correlated with the table its DELETE names.
    return [
        (
            "delivery_attempts",
            DeliveryAttempt.id,
            select(a.id).join(d, d.id == a.delivery_id).where(_delivery_gone(d, cutoff)),
        ),
        ("deliveries", Delivery.id, select(d.id).where(_delivery_gone(d, cutoff))),
        ("events", Event.id, select(e.id).where(e.created_at < cutoff, ~exists().where(_holds(e, cutoff)))),
        (
            "inbox_events",
            InboxEvent.id,
            select(i.id).where(i.status.in_(FINAL_INBOX), i.received_at < cutoff),
        ),
        (
            "inbox_events",
            InboxEvent.id,
            select(i.id).where(
                i.status == InboxStatus.DUPLICATE.value,
                i.received_at < cutoff,
                or_(i.processed_at.is_not(None), i.next_attempt_at.is_(None)),  # no recheck awaited
            ),
        ),
        ("pending_connections", PendingConnection.id, select(p.id).where(p.expires_at < now)),
        ("leases", Lease.name, select(lease.name).where(lease.until < now)),
    ]


def _delivery_gone(d: Any, cutoff: datetime) -> ColumnElement[bool]:
    return and_(d.status.in_(FINAL_DELIVERY), d.completed_at < cutoff)


def _holds(e: Any, cutoff: datetime) -> ColumnElement[bool]:
    """A delivery of event ``e`` that is kept: pending, retrying, or final within the window."""
    kept = aliased(Delivery)
    return and_(
        kept.event_id == e.id,
        or_(kept.status.not_in(FINAL_DELIVERY), kept.completed_at.is_(None), kept.completed_at >= cutoff),
    )


def _superseded_versions(cutoff: datetime) -> Candidates:
    """Ledger rows seen before ``cutoff`` with a newer row of the same object (by ``observed_at``,
    else ``seen_at``, then id): every row but each object's newest."""
    r, n = aliased(ObjectVersion), aliased(ObjectVersion)
    r_read, n_read = func.coalesce(r.observed_at, r.seen_at), func.coalesce(n.observed_at, n.seen_at)
    newer = exists().where(
        n.tenant_id == r.tenant_id,
        n.resource == r.resource,
        n.object_id == r.object_id,
        or_(n_read > r_read, and_(n_read == r_read, n.id > r.id)),
    )
    return select(r.id).where(r.seen_at < cutoff, newer)


def _bodies(body_cutoff: datetime, cutoff: datetime | None = None) -> Candidates:
    """Attempts whose response body is due to be cleared; given ``cutoff``, not those the purge
    deletes with their delivery (what a dry run counts)."""
    a = aliased(DeliveryAttempt)
    query = select(a.id).where(a.response_body.is_not(None), a.started_at < body_cutoff)
    if cutoff is not None:
        d = aliased(Delivery)
        query = query.where(~exists().where(d.id == a.delivery_id, _delivery_gone(d, cutoff)))
    return query


# -- how ---------------------------------------------------------------------------------------
async def _count(db: Database, candidates: Candidates) -> int:
    async with db.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(candidates.subquery()))).scalar_one())


async def _delete_in_batches(
    db: Database,
    table: str,
    key: InstrumentedAttribute[Any],
    candidates: Candidates,
    batch: int,
    progress: Progress | None,
) -> int:
    """Delete ``batch`` candidates per transaction until a batch comes up short."""
    model = key.class_
    total = 0
    while True:
        statement = delete(model).where(key.in_(candidates.limit(batch).scalar_subquery()))
        deleted = await _commit(db, statement, table, progress)
        total += deleted
        if deleted < batch:
            return total


async def _delete_superseded_versions(db: Database, cutoff: datetime, batch: int, progress: Progress | None) -> int:
    """The ledger's superseded rows, walked by id in windows of ``LEDGER_WINDOW * batch`` rows."""
    window = LEDGER_WINDOW * batch
    candidates = _superseded_versions(cutoff)
    ids = candidates.selected_columns[0]
    total, after = 0, None
    while True:
        async with db.sessions() as session:
            ahead = select(ObjectVersion.id).order_by(ObjectVersion.id)
            if after is not None:
                ahead = ahead.where(ObjectVersion.id > after)
            upto = (await session.execute(ahead.offset(window - 1).limit(1))).scalar_one_or_none()
        scope = candidates if after is None else candidates.where(ids > after)
        if upto is not None:
            scope = scope.where(ids <= upto)
        total += await _delete_in_batches(db, "object_versions", ObjectVersion.id, scope, batch, progress)
        if upto is None:
            return total
        after = upto


async def _clear_bodies(db: Database, body_cutoff: datetime, batch: int, progress: Progress | None) -> int:
    total = 0
    while True:
        statement = (
            update(DeliveryAttempt)
            .where(DeliveryAttempt.id.in_(_bodies(body_cutoff).limit(batch).scalar_subquery()))
            .values(response_body=None)
        )
        cleared = await _commit(db, statement, RESPONSE_BODY, progress)
        total += cleared
        if cleared < batch:
            return total


async def _commit(db: Database, statement: Any, table: str, progress: Progress | None) -> int:
    """One statement, one transaction; then report it and let the event loop run others."""
    async with db.sessions() as session:
        result = await session.execute(statement.execution_options(synchronize_session=False))
        await session.commit()
    rows = int(result.rowcount)  # type: ignore[attr-defined]
    if rows and progress is not None:
        await progress(table, rows)
    await asyncio.sleep(0)
    return rows


async def incremental_vacuum(db: Database, step_pages: int = VACUUM_STEP_PAGES) -> int | None:
    """Give a SQLite database's free pages back to the file system, ``step_pages`` per transaction.

    Only a database in ``auto_vacuum=INCREMENTAL`` mode can (None otherwise, and on PostgreSQL).
    Python's ``sqlite3`` steps a pragma once per ``execute``, and one step of
    ``incremental_vacuum`` frees one page: hence one call per page, inside one transaction per
    step (a no-op write takes the lock first) so a step costs one commit, not one per page. The
    file shrinks at the next WAL checkpoint.
    """
    if not db.is_sqlite:
        return None
    async with db.sessions() as session:
        if (await session.execute(text("PRAGMA auto_vacuum"))).scalar_one() != 2:
            return None
    freed = 0
    while True:
        async with db.sessions() as session:
            before = int((await session.execute(text("PRAGMA freelist_count"))).scalar_one())
            if not before:
                return freed
            await session.execute(text("UPDATE leases SET name = name WHERE 0"))
            connection = await session.connection()
            for _ in range(min(before, step_pages)):
                await connection.exec_driver_sql("PRAGMA incremental_vacuum(1)")
            after = int((await session.execute(text("PRAGMA freelist_count"))).scalar_one())
            await session.commit()
        if after >= before:  # nothing given back (another writer took the pages): done for now
            return freed
        freed += before - after
        await asyncio.sleep(0)
