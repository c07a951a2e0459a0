"""Queries on the ``subscriptions`` table: the admin API's reads and writes, fan-out's list, health."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage import compiled
from webhook_service.storage.deliveries import DUE
from webhook_service.storage.leased import SUBSCRIPTION_COLUMNS, SubscriptionToSend
from webhook_service.storage.models import Delivery, DeliveryStatus, Subscription
from webhook_service.storage.paging import Position, newer_than


async def get(session: AsyncSession, subscription_id: str) -> Subscription | None:
    return await session.get(Subscription, subscription_id)


async def list_all(session: AsyncSession) -> list[Subscription]:
    return list((await session.execute(select(Subscription).order_by(Subscription.created_at))).scalars())


async def list_page(session: AsyncSession, *, after: Position | None = None, limit: int = 50) -> list[Subscription]:
    """Oldest first, from just after ``after`` (a subscription's ``created_at`` and ``id``)."""
    query = select(Subscription).order_by(Subscription.created_at, Subscription.id).limit(limit)
    if after is not None:
        query = query.where(newer_than(Subscription.created_at, Subscription.id, after))
    return list((await session.execute(query)).scalars())


async def enabled(session: AsyncSession) -> list[SubscriptionToSend]:
    """Every enabled subscription: what an event may fan out to (read in every transaction that
    emits, so as records, on the driver: see :mod:`~webhook_service.storage.leased`)."""
    return [SubscriptionToSend(*row) for row in await compiled.rows(session, _enabled(), {})]


@functools.cache
def _enabled() -> Select[Any]:
    return select(*SUBSCRIPTION_COLUMNS).where(Subscription.enabled.is_(True))


def add(session: AsyncSession, subscription: Subscription) -> None:
    """Insert ``subscription`` with the session's commit."""
    session.add(subscription)


async def delete(session: AsyncSession, subscription_id: str) -> bool:
    """Delete the subscription (its deliveries go with it); False when there is none."""
    subscription = await session.get(Subscription, subscription_id)
    if subscription is None:
        return False
    await session.delete(subscription)
    return True


async def disable(session: AsyncSession, subscription_id: str, reason: str, *, now: datetime) -> Subscription | None:
    """Disable the subscription and make what is still queued for it dead. Returns it when this
    call is what disabled it (it was enabled), None when it was disabled already or is gone."""
    changed = await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
        .returning(Subscription.id)
        .execution_options(synchronize_session=False)
    )
    disabled = changed.scalar_one_or_none() is not None
    await session.execute(
        update(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.status.in_(DUE),
        )
        .values(
            status=DeliveryStatus.DEAD.value,
            last_error=f"subscription disabled: {reason}",
            lease_owner=None,
            lease_until=None,
            completed_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return await session.get(Subscription, subscription_id, populate_existing=True) if disabled else None


async def clear_failing(session: AsyncSession, subscription_ids: Iterable[str]) -> None:
    """Forget when these subscriptions started failing (each just succeeded)."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(subscription_ids), Subscription.failing_since.is_not(None))
        .values(failing_since=None)
        .execution_options(synchronize_session=False)
    )


async def start_failing(session: AsyncSession, subscription_ids: Iterable[str], now: datetime) -> dict[str, datetime]:
    """Since when each of these subscriptions has been failing: ``now`` for those that were not.

    Read afresh, so a success recorded meanwhile by another worker counts; deleted ones are left out.
    """
    failing: dict[str, datetime] = {}
    for subscription_id in subscription_ids:
        subscription = await session.get(Subscription, subscription_id, populate_existing=True)
        if subscription is None:
            continue
        if subscription.failing_since is None:
            subscription.failing_since = now
        failing[subscription_id] = subscription.failing_since
    return failing
