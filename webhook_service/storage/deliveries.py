"""Claiming due work with leases, so no two workers (or replicas) send the same attempt.

A claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` stamping a lease
token; the rows are then read back by that token. On PostgreSQL ``SKIP LOCKED`` keeps replicas off
each other's rows; SQLite serializes writers, so the same statement is safe there. A worker that
dies leaves its lease to run out, after which the delivery is due again.

A lease token is ``<owner>.<grant>``: the owner names the process (so everything a stopping process
holds can be given back in one statement, :func:`release_owner`), the grant part names this one
claim or hand-over. Every final write on leased work goes through :func:`fence` first, in the same
transaction: it keeps only the rows still carrying the token they were leased with, and locks them,
so a worker whose lease ran out and was taken over changes nothing.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import LEASES_LOST
from webhook_service.storage import compiled
from webhook_service.storage.bulk import table_of
from webhook_service.storage.database import Database
from webhook_service.storage.leased import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    INBOX_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    HandedDelivery,
    LeasedInboxEvent,
    from_claimed,
)
from webhook_service.storage.lists import one_of
from webhook_service.storage.models import (
    Delivery,
    DeliveryStatus,
    Event,
    InboxEvent,
    InboxStatus,
    Lease,
    Subscription,
    Tenant,
    TenantStatus,
)

log = get_logger(__name__)

DUE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)
"""A delivery in one of these is still to be sent (now or at its next attempt)."""

Leased = type[Delivery] | type[InboxEvent]


def new_owner() -> str:
    """A process's lease owner: the prefix of every token it stamps."""
    return secrets.token_hex(6)


def lease_token(owner: str) -> str:
    """The token of one grant (a claim, or a hand-over's commit) by ``owner``."""
    return f"{owner}.{secrets.token_hex(4)}"


When = datetime | ColumnElement[Any]
"""A time, or the bound parameter standing for one in a statement built once."""


def _unleased(lease_until: InstrumentedAttribute[datetime | None], now: When) -> ColumnElement[bool]:
    return or_(lease_until.is_(None), lease_until < now)


async def claim_deliveries(
    session: AsyncSession, *, owner: str, now: datetime, limit: int, lease: timedelta
) -> list[HandedDelivery]:
    due, stamp, read = _delivery_claim()
    ids = await _lease(session, due, stamp, owner, {"now": now, "limit": limit, "until": now + lease})
    if not ids:
        return []
    claimed = [from_claimed(row) for row in await compiled.rows(session, read, {"ids": ids})]
    await session.commit()
    return claimed


async def claim_inbox(
    session: AsyncSession, *, owner: str, now: datetime, limit: int, lease: timedelta
) -> list[LeasedInboxEvent]:
    """Pending inbox events of active tenants; a tenant waiting for re-authorization keeps its own."""
    due, stamp, read = _inbox_claim()
    ids = await _lease(session, due, stamp, owner, {"now": now, "limit": limit, "until": now + lease})
    if not ids:
        return []
    claimed = [LeasedInboxEvent(*row) for row in await compiled.rows(session, read, {"ids": ids})]
    await session.commit()
    return claimed


# A claim's statements, built once with bound parameters (built per call they cost more than running
# them: the strict-order subquery alone took 0.9 ms of Python, every claim): a look for due rows
# (``now``, ``limit``), the lease stamped on them (``now``, ``limit``, ``token``, ``until``), which
# returns their ids, and the rows read back by those ``ids`` (by the token, nothing indexes it: the
# read went through the whole table).
DeliveryClaim = tuple[Select[Any], Update, Select[Any]]
InboxClaim = tuple[Select[Any], Update, Select[Any]]


@functools.cache
def _delivery_claim() -> DeliveryClaim:
    now: ColumnElement[Any] = bindparam("now")
    due: Select[Any] = (
        select(Delivery.id)
        .where(_delivery_due(now), _unleased(Delivery.lease_until, now), _next_in_order())
        .order_by(Delivery.next_attempt_at)
        .limit(bindparam("limit", type_=Integer))
    )
    read = (
        select(*DELIVERY_COLUMNS, *EVENT_COLUMNS, *SUBSCRIPTION_COLUMNS)
        .join(Event, Event.id == Delivery.event_id)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(one_of(Delivery.id, "ids"))
    )
    return due.limit(1), _stamp(Delivery, due.with_for_update(skip_locked=True)), read


@functools.cache
def _inbox_claim() -> InboxClaim:
    now: ColumnElement[Any] = bindparam("now")
    due: Select[Any] = (
        select(InboxEvent.id)
        .join(Tenant, Tenant.id == InboxEvent.tenant_id)
        .where(_inbox_due(now), _unleased(InboxEvent.lease_until, now))
        .order_by(InboxEvent.id)
        .limit(bindparam("limit", type_=Integer))
    )
    read = select(*INBOX_COLUMNS).where(one_of(InboxEvent.id, "ids")).order_by(InboxEvent.id)
    return due.limit(1), _stamp(InboxEvent, due.with_for_update(skip_locked=True, of=InboxEvent)), read


def _stamp(model: Leased, locked: Select[Any]) -> Update:
    # On the table, not the mapped class, and run on the session's connection (_lease): the ORM's
    # bulk UPDATE path re-derives the statement's cache key on every execution, which costs more
    # than the UPDATE.
    table = table_of(model)
    return (
        update(table)
        .where(table.c.id.in_(locked.scalar_subquery()))
        .values(lease_owner=bindparam("token"), lease_until=bindparam("until", type_=table.c.lease_until.type))
        .returning(table.c.id)
    )


async def fence(session: AsyncSession, model: Leased, held: Mapping[Any, str | None]) -> set[Any]:
    """The ids of ``held`` (id -> the token it was leased with) whose lease is still that token.

    Call it first in the transaction that writes the work's outcome, and write only the rows it
    returns: it also locks them (a row lock on PostgreSQL, the write lock on SQLite), so nobody
    can take them over before the commit. The rest lost their lease (it ran out and another worker
    claimed the row, or an operator requeued it): they are counted, logged, and left alone.
    """
    leased = {row_id: token for row_id, token in held.items() if token is not None}
    kept: set[Any] = set()
    if leased:
        # One statement for every token (a batch carries a few hand-overs' and claims' rows): the
        # lists cross, so a row may come back under another of these tokens, which is not its own.
        values = {"ids": list(leased), "tokens": list(set(leased.values()))}
        found = await compiled.rows(session, _fence_statement(model), values)
        kept = {row_id for row_id, token in found if leased[row_id] == token}
    lost = set(held) - kept
    if lost:
        kind = "delivery" if model is Delivery else "inbox"
        LEASES_LOST.labels(kind=kind).inc(len(lost))
        log.warning("lease_lost", kind=kind, ids=sorted(map(str, lost))[:20], count=len(lost))
    return kept


@functools.cache
def _fence_statement(model: Leased) -> Update:
    table = table_of(model)  # the table, as in _stamp
    return (
        update(table)
        .where(one_of(table.c.id, "ids"), one_of(table.c.lease_owner, "tokens"))
        .values(lease_owner=table.c.lease_owner)
        .returning(table.c.id, table.c.lease_owner)
    )


async def release(db: Database, model: Leased, held: Mapping[Any, str | None]) -> int:
    """Clear the leases on rows taken but not to be finished here, if the work is still to do and
    the lease is still ours, so any process may claim them now rather than when it runs out."""
    if not held:
        return 0
    async with db.sessions() as session:
        kept = await fence(session, model, held)
        await _clear(session, model, kept)
        await session.commit()
    return len(kept)


async def release_owner(db: Database, owner: str) -> int:
    """Clear every lease ``owner`` (a process) still holds, on unfinished work and on named duties
    (:mod:`~webhook_service.storage.leases`, owners ``OWNER.name``): the last step of a stop, so
    nothing waits for a lease of a process that is gone."""
    released = 0
    async with db.sessions() as session:
        for model in (InboxEvent, Delivery):
            result = await session.execute(
                update(model)
                .where(model.lease_owner.like(f"{owner}.%"), _unfinished(model))
                .values(lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )
            released += result.rowcount  # type: ignore[attr-defined]
        result = await session.execute(delete(Lease).where(Lease.owner.like(f"{owner}.%")))
        released += result.rowcount  # type: ignore[attr-defined]
        await session.commit()
    return released


async def _clear(session: AsyncSession, model: Leased, ids: set[Any]) -> None:
    if ids:
        await session.execute(
            update(model)
            .where(model.id.in_(ids), _unfinished(model))
            .values(lease_owner=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )


def _unfinished(model: Leased) -> ColumnElement[bool]:
    if model is Delivery:
        return Delivery.status.in_(DUE)
    pending = (InboxStatus.PENDING.value, InboxStatus.DUPLICATE.value)
    return and_(InboxEvent.status.in_(pending), InboxEvent.processed_at.is_(None))


async def backlog(session: AsyncSession, now: datetime) -> tuple[int, int]:
    """Inbox events and deliveries due now, claimed or not: the work still to do (queue depth)."""
    inbox_due = select(func.count()).select_from(InboxEvent).join(Tenant, Tenant.id == InboxEvent.tenant_id)
    inbox_count = (await session.execute(inbox_due.where(_inbox_due(now)))).scalar_one()
    delivery_count = (
        await session.execute(select(func.count()).select_from(Delivery).where(_delivery_due(now)))
    ).scalar_one()
    return int(inbox_count), int(delivery_count)


def _next_in_order() -> ColumnElement[bool]:
    """Not held back by strict order: no earlier delivery of its object to its subscription is still
    due (only strict-order deliveries carry an ``ordering_key``; a failing object stalls itself only).
    The statuses are written into the SQL: a list bound as parameters would leave the claim's SQL to
    be rendered on every call (``storage.compiled`` compiles once only what has no such list).
    """
    earlier = aliased(Delivery)
    return or_(
        Delivery.ordering_key.is_(None),
        ~exists().where(
            earlier.subscription_id == Delivery.subscription_id,
            earlier.ordering_key == Delivery.ordering_key,
            earlier.sequence < Delivery.sequence,
            earlier.status.in_([_written(status) for status in DUE]),
        ),
    )


def _delivery_due(now: When) -> ColumnElement[bool]:
    """Still to send, and due by ``now``: the first term is the partial index's predicate
    (:data:`~webhook_service.storage.claimable.DELIVERY_DUE_ROWS`), word for word, so a claim walks
    that index in ``next_attempt_at`` order and stops at its limit."""
    return and_(_unindexed(Delivery.status).in_([_written(status) for status in DUE]), Delivery.next_attempt_at <= now)


def _inbox_due(now: When) -> ColumnElement[bool]:
    """Pending, or a redelivery of something processed (a recheck); only of active tenants. Needs
    ``Tenant`` joined. The first term is the partial index's predicate
    (:data:`~webhook_service.storage.claimable.INBOX_DUE_ROWS`), word for word; given it, a row is due
    when it has no next attempt or that time has come (a recheck always has one)."""
    status = _unindexed(InboxEvent.status)
    return and_(
        or_(
            status == _written(InboxStatus.PENDING.value),
            and_(
                status == _written(InboxStatus.DUPLICATE.value),
                InboxEvent.processed_at.is_(None),
                InboxEvent.next_attempt_at.is_not(None),
            ),
        ),
        or_(InboxEvent.next_attempt_at.is_(None), InboxEvent.next_attempt_at <= now),
        Tenant.status == TenantStatus.ACTIVE.value,
    )


def _written(status: str) -> ColumnElement[str]:
    """A status written into the SQL, not bound: whether a partial index fits a query is decided
    from the statement alone, before any parameter has a value."""
    return literal_column(f"'{status}'", String)


class _unindexed(FunctionElement[str]):  # noqa: N801 (used like a function, as SQLAlchemy's own are)
    """``+column`` on SQLite: the same value, but no index may be looked up by it.

    SQLite's planner, knowing no row counts, takes ``status = 'pending'`` for a handful of rows: it
    would read every pending row by a status index and sort them, so a claim would cost as much as
    the backlog is long. With the status tests written this way (the partial indexes' predicates
    too), the only index a claim can use is the partial one, already in the claim's order.
    PostgreSQL plans by its statistics and gets the column as it is.
    """

    inherit_cache = True
    type = String()


@compiles(_unindexed)
def _column(element: _unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_unindexed, "sqlite")
def _unary_plus(element: _unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


async def _lease(
    session: AsyncSession, due: Select[Any], stamp: Update, owner: str, params: dict[str, Any]
) -> list[Any]:
    """Stamp a fresh token of ``owner`` on the due rows; their ids (none, and nothing written, when
    none are due)."""
    if not await _any(session, due, params):
        return []
    # Not through the ORM: the subquery's ORM columns would still send it down the ORM's bulk
    # UPDATE path (see _stamp).
    ids = [row[0] for row in await compiled.rows(session, stamp, {**params, "token": lease_token(owner)})]
    if not ids:
        await session.commit()
    return ids


async def _any(session: AsyncSession, due: Select[Any], params: dict[str, Any]) -> bool:
    """A read-only look first: idle workers and woken-but-late workers take no write lock."""
    found = bool(await compiled.rows(session, due, params))
    await session.rollback()  # end the read transaction before a writer needs the database
    return found


async def take_rate_slot(session: AsyncSession, subscription_id: str, limit: int, now: datetime) -> bool:
    """One send in this one-second window of the subscription's limit, counted in the database so
    every worker and replica shares it."""
    window = int(now.timestamp())
    result = await session.execute(
        update(Subscription)
        .where(
            Subscription.id == subscription_id,
            or_(
                Subscription.rate_window.is_(None),
                Subscription.rate_window != window,
                and_(Subscription.rate_window == window, Subscription.rate_window_count < limit),
            ),
        )
        .values(
            rate_window=window,
            rate_window_count=_count_in(window),
        )
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _count_in(window: int) -> object:
    return case((Subscription.rate_window == window, Subscription.rate_window_count + 1), else_=1)
