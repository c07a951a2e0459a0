"""What the console's overview reads: counts that answer "is everything flowing, and what is stuck?".

Every figure is one indexed read, whatever the tables hold: counts by status of the small tables
(tenants, callbacks), ranges of the time indexes for the recent past (events by ``created_at``,
attempts by ``started_at``), and the claims' own partial indexes for the backlog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.deliveries import backlog
from webhook_service.storage.models import (
    BackfillState,
    Callback,
    DeliveryAttempt,
    Event,
    Tenant,
    TenantStatus,
)

CHART_BUCKETS = 24
CHART_BUCKET = timedelta(hours=1)


@dataclass(frozen=True)
class Rate:
    """Delivery attempts in a window and how many got a 2xx."""

    attempts: int
    succeeded: int

    @property
    def percent(self) -> float | None:
        return None if not self.attempts else 100.0 * self.succeeded / self.attempts


@dataclass(frozen=True)
class Overview:
    tenants: dict[str, int]
    waiting: list[Tenant]
    """Tenants that are not active (re-authorization first), with their reasons."""
    callbacks: dict[str, int]
    inbox_backlog: int
    delivery_backlog: int
    last_hour: Rate
    last_day: Rate
    recovered_total: int
    """Events the backfill found that no webhook had brought, since the service began."""
    recovered_last_day: int
    bucket_starts: list[datetime] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    """Events per bucket (a webhook's or the backfill's)."""
    delivered: list[int] = field(default_factory=list)
    """Successful delivery attempts per bucket."""


async def read(session: AsyncSession, now: datetime) -> Overview:
    tenants = await _counts(session, Tenant.status)
    waiting = (
        await session.execute(
            select(Tenant)
            .where(Tenant.status != TenantStatus.ACTIVE.value)
            .order_by((Tenant.status != TenantStatus.REAUTH_REQUIRED.value), Tenant.updated_at.desc())
            .limit(20)
        )
    ).scalars()
    callbacks = await _counts(session, Callback.status, Callback.active.is_(True))
    inbox_backlog, delivery_backlog = await backlog(session, now)
    last_hour, last_day = await _rates(session, now)
    recovered_total = (
        await session.execute(select(func.coalesce(func.sum(BackfillState.recovered_total), 0)))
    ).scalar()
    recovered_last_day = (
        await session.execute(
            select(func.count()).where(Event.created_at >= now - timedelta(days=1), Event.origin == "backfill")
        )
    ).scalar()
    starts = [_hour(now) - CHART_BUCKET * n for n in range(CHART_BUCKETS - 1, -1, -1)]
    received = await _per_bucket(session, Event.created_at, starts)
    delivered = await _per_bucket(
        session, DeliveryAttempt.started_at, starts, DeliveryAttempt.status_code.between(200, 299)
    )
    return Overview(
        tenants=tenants,
        waiting=list(waiting),
        callbacks=callbacks,
        inbox_backlog=inbox_backlog,
        delivery_backlog=delivery_backlog,
        last_hour=last_hour,
        last_day=last_day,
        recovered_total=int(recovered_total or 0),
        recovered_last_day=int(recovered_last_day or 0),
        bucket_starts=starts,
        received=received,
        delivered=delivered,
    )


async def _counts(session: AsyncSession, column, *where) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rows = await session.execute(select(column, func.count()).where(*where).group_by(column))
    return {str(value): int(count) for value, count in rows.all()}


async def _rates(session: AsyncSession, now: datetime) -> tuple[Rate, Rate]:
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    ok = DeliveryAttempt.status_code.between(200, 299)
    started = DeliveryAttempt.started_at
    row = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((ok, 1), else_=0)), 0),
                func.coalesce(func.sum(case((started >= hour_ago, 1), else_=0)), 0),
                func.coalesce(func.sum(case((and_(ok, started >= hour_ago), 1), else_=0)), 0),
            ).where(started >= day_ago)
        )
    ).one()
    day, day_ok, hour, hour_ok = (int(value) for value in row)
    return Rate(hour, hour_ok), Rate(day, day_ok)


async def _per_bucket(session: AsyncSession, column, starts: list[datetime], *where) -> list[int]:  # type: ignore[no-untyped-def]
    """One range read for the whole chart: a count per bucket, as columns of one row."""
    end = starts[-1] + CHART_BUCKET
    columns = [
        func.coalesce(func.sum(case((and_(column >= start, column < start + CHART_BUCKET), 1), else_=0)), 0)
        for start in starts
    ]
    row = (await session.execute(select(*columns).where(column >= starts[0], column < end, *where))).one()
    return [int(value) for value in row]


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)
