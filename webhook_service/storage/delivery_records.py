"""Deliveries and their attempts as records: reading them, picking what to replay, writing outcomes.

Claiming due deliveries and fencing leased work are :mod:`.deliveries`'s; a worker writes the
outcomes of fenced deliveries with :func:`record_outcomes`, in the transaction that fenced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.bulk import write
from webhook_service.storage.models import Delivery, DeliveryAttempt
from webhook_service.storage.paging import Position, older_than
from webhook_service.storage.session import conflicts


async def get(session: AsyncSession, delivery_id: str) -> Delivery | None:
    return await session.get(Delivery, delivery_id)


async def attempts(session: AsyncSession, delivery_id: str) -> list[DeliveryAttempt]:
    """The delivery's attempts, first to last."""
    rows = await session.execute(
        select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.number)
    )
    return list(rows.scalars())


async def list_deliveries(
    session: AsyncSession, *, limit: int = 100, before: Position | None = None, **equal: str | None
) -> list[Delivery]:
    """Newest first. ``equal`` names columns (``status``, ``subscription_id``, ``event_id``): each
    given a value keeps the deliveries that have it. ``before``: the page after the one that ended
    with that delivery's ``created_at`` and ``id`` (a page reads its own rows only)."""
    filters = [getattr(Delivery, column) == value for column, value in equal.items() if value is not None]
    if before is not None:
        filters.append(older_than(Delivery.created_at, Delivery.id, before))
    query = select(Delivery).where(*filters).order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def lock_in_status(
    session: AsyncSession, subscription_id: str, *, since: datetime, statuses: Sequence[str]
) -> list[Delivery]:
    """The subscription's deliveries created at or after ``since`` in one of ``statuses``, oldest
    first, locked until the transaction ends (so nobody changes them under a requeue)."""
    rows = await session.execute(
        select(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.created_at >= since,
            Delivery.status.in_(list(statuses)),
        )
        .order_by(Delivery.created_at)
        .with_for_update()
    )
    return list(rows.scalars())


async def record_outcomes(
    session: AsyncSession, updates: Sequence[dict[str, Any]], attempt_rows: Sequence[dict[str, Any]]
) -> None:
    """Write the deliveries' new states (``{"id": ..., column: value}``) and their attempts, a few
    statements for the whole batch (one on PostgreSQL). Only for deliveries :func:`~.deliveries.fence` kept in this
    transaction. An attempt number recorded already raises
    :class:`~webhook_service.storage.session.Conflict`."""
    with conflicts():
        await write(session, [("update", Delivery, updates), ("insert", DeliveryAttempt, attempt_rows)])
