"""Claiming due work with leases, so no two workers (or replicas) send the same attempt.

A claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` stamping a lease
owner token; the rows are then read back by that token. On PostgreSQL ``SKIP LOCKED`` keeps
replicas off each other's rows; SQLite serializes writers, so the same statement is safe there.
A worker that dies leaves its lease to run out, after which the delivery is due again.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from webhook_service.storage.database import Database
from webhook_service.storage.models import (
    Delivery,
    DeliveryStatus,
    Event,
    InboxEvent,
    InboxStatus,
    Subscription,
    Tenant,
    TenantStatus,
)

DUE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)


def _unleased(lease_until: InstrumentedAttribute[datetime | None], now: datetime) -> ColumnElement[bool]:
    return or_(lease_until.is_(None), lease_until < now)


async def claim_deliveries(
    session: AsyncSession, *, now: datetime, limit: int, lease: timedelta
) -> list[tuple[Delivery, Event, Subscription]]:
    due = (
        select(Delivery.id)
        .where(_delivery_due(now), _unleased(Delivery.lease_until, now))
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    token = await _lease(session, Delivery, due, due.with_for_update(skip_locked=True), now + lease)
    if token is None:
        return []
    rows = await session.execute(
        select(Delivery, Event, Subscription)
        .join(Event, Event.id == Delivery.event_id)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.lease_owner == token)
    )
    claimed = [(d, e, s) for d, e, s in rows.all()]
    await session.commit()
    return claimed


async def claim_inbox(session: AsyncSession, *, now: datetime, limit: int, lease: timedelta) -> list[InboxEvent]:
    """Pending inbox events of active tenants; a tenant waiting for re-authorization keeps its own."""
    due = (
        select(InboxEvent.id)
        .join(Tenant, Tenant.id == InboxEvent.tenant_id)
        .where(_inbox_due(now), _unleased(InboxEvent.lease_until, now))
        .order_by(InboxEvent.id)
        .limit(limit)
    )
    token = await _lease(session, InboxEvent, due, due.with_for_update(skip_locked=True, of=InboxEvent), now + lease)
    if token is None:
        return []
    rows = await session.execute(select(InboxEvent).where(InboxEvent.lease_owner == token).order_by(InboxEvent.id))
    claimed = list(rows.scalars())
    await session.commit()
    return claimed


async def release(db: Database, model: type[Delivery] | type[InboxEvent], ids: set[Any]) -> int:
    """Clear the leases on rows a process took but will not finish (it is stopping), if the work is
    still to do, so any process may claim them now rather than when the lease runs out."""
    if not ids:
        return 0
    unfinished = Delivery.status.in_(DUE) if model is Delivery else InboxEvent.processed_at.is_(None)
    async with db.sessions() as session:
        await session.execute(
            update(model)
            .where(model.id.in_(ids), unfinished)
            .values(lease_owner=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    return len(ids)


async def backlog(session: AsyncSession, now: datetime) -> tuple[int, int]:
    """Inbox events and deliveries due now, claimed or not: the work still to do (queue depth)."""
    inbox_due = select(func.count()).select_from(InboxEvent).join(Tenant, Tenant.id == InboxEvent.tenant_id)
    inbox_count = (await session.execute(inbox_due.where(_inbox_due(now)))).scalar_one()
    delivery_count = (
        await session.execute(select(func.count()).select_from(Delivery).where(_delivery_due(now)))
    ).scalar_one()
    return int(inbox_count), int(delivery_count)


def _delivery_due(now: datetime) -> ColumnElement[bool]:
    return and_(Delivery.status.in_(DUE), Delivery.next_attempt_at <= now)


def _inbox_due(now: datetime) -> ColumnElement[bool]:
    """Pending, or a redelivery of something processed (a recheck); only of active tenants. Needs
    ``Tenant`` joined."""
    return and_(
        or_(
            and_(
                InboxEvent.status == InboxStatus.PENDING.value,
                or_(InboxEvent.next_attempt_at.is_(None), InboxEvent.next_attempt_at <= now),
            ),
            and_(
                InboxEvent.status == InboxStatus.DUPLICATE.value,
                InboxEvent.processed_at.is_(None),
                InboxEvent.next_attempt_at <= now,
            ),
        ),
        Tenant.status == TenantStatus.ACTIVE.value,
    )


async def _lease(
    session: AsyncSession,
    model: type[Delivery] | type[InboxEvent],
    due: Select[Any],
    locked: Select[Any],
    until: datetime,
) -> str | None:
    """Stamp a fresh owner token on the due rows; None (and nothing written) when none are due."""
    if not await _any(session, due):
        return None
    token = secrets.token_hex(8)
    result = await session.execute(
        update(model)
        .where(model.id.in_(locked.scalar_subquery()))
        .values(lease_owner=token, lease_until=until)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        await session.commit()
        return None
    return token


async def _any(session: AsyncSession, query: Select[Any]) -> bool:
    """A read-only look first: idle workers and woken-but-late workers take no write lock."""
    found = (await session.execute(query.limit(1))).first() is not None
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
