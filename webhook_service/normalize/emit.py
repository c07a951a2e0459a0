"""Committing normalized events: the ledger, the events and their deliveries, in the caller's transaction.

The webhook path and the polling backfill both come through here, so a version emitted by one is
never emitted again by the other. Many events go in a handful of statements (one ledger lookup,
three bulk inserts), which is what keeps the per-event cost of a busy inbox low.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.delivery.fanout import delivery_rows, enabled_subscriptions
from webhook_service.normalize.events import NormalizedEvent
from webhook_service.signals import HandedDelivery
from webhook_service.storage.bulk import insert_rows
from webhook_service.storage.models import Delivery, Event, ObjectVersion

Staged = tuple[NormalizedEvent, str, int | None]
"""An event, its tenant id, and the inbox event it came from (None for the backfill)."""


async def stage(
    session: AsyncSession, event: NormalizedEvent, *, tenant_id: str, inbox_event_id: int | None, now: datetime
) -> bool:
    """Add one event unless its version was already emitted; see :func:`stage_many`."""
    return (await stage_many(session, [(event, tenant_id, inbox_event_id)], now=now))[0]


async def stage_many(session: AsyncSession, items: Sequence[Staged], *, now: datetime) -> list[bool]:
    """Add each event (with its ledger row and deliveries) unless its version was already emitted.

    Returns, per item, whether it was added; the caller commits. A concurrent writer of the same
    version makes the commit fail with ``IntegrityError`` on the ledger, which means the same.
    """
    added, _ = await stage_leased(session, items, now=now, lease=None)
    return added


async def stage_leased(
    session: AsyncSession, items: Sequence[Staged], *, now: datetime, lease: tuple[str, datetime] | None
) -> tuple[list[bool], list[HandedDelivery]]:
    """:func:`stage_many`, with the new deliveries leased to ``lease`` (owner, until) when given.

    Also returns those deliveries with their event and subscription, for the caller to hand to its
    delivery worker once committed (see :class:`~webhook_service.signals.Lane`).
    """
    known = await _known_versions(session, items)
    subscriptions = await enabled_subscriptions(session)
    by_id = {subscription.id: subscription for subscription in subscriptions}
    handed: list[HandedDelivery] = []
    ledger: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    added: list[bool] = []
    for event, tenant_id, inbox_event_id in items:
        key = (tenant_id, event.resource, event.object_id, event.version)
        if event.version is not None and key in known:
            added.append(False)
            continue
        if event.version is not None:
            known.add(key)  # the same version twice in one batch is emitted once
            ledger.append(
                {
                    "tenant_id": tenant_id,
                    "resource": event.resource,
                    "object_id": event.object_id,
                    "version": event.version,
                    "event_id": event.id,
                    "origin": event.origin,
                    "seen_at": now,
                }
            )
        events.append(
            {
                "id": event.id,
                "tenant_id": tenant_id,
                "type": event.type,
                "resource": event.resource,
                "object_id": event.object_id,
                "origin": event.origin,
                "occurred_at": event.occurred_at,
                "payload": event.payload,
                "inbox_event_id": inbox_event_id,
                "created_at": now,
                "received_at": event.received_at or now,
            }
        )
        new = delivery_rows(subscriptions, event_id=event.id, event_type=event.type, tenant_id=tenant_id, now=now)
        if lease is not None:
            for row in new:
                row["lease_owner"], row["lease_until"] = lease
            handed.extend((Delivery(**row), Event(**events[-1]), by_id[row["subscription_id"]]) for row in new)
        deliveries.extend(new)
        added.append(True)
    for model, rows in ((ObjectVersion, ledger), (Event, events), (Delivery, deliveries)):
        await insert_rows(session, model, rows)
    return added, handed


async def _known_versions(session: AsyncSession, items: Sequence[Staged]) -> set[tuple[str, str, str, str | None]]:
    wanted: set[tuple[str, str, str, str | None]] = {
        (tenant_id, e.resource, e.object_id, e.version) for e, tenant_id, _ in items if e.version is not None
    }
    if not wanted:
        return set()
    rows = await session.execute(
        select(ObjectVersion.tenant_id, ObjectVersion.resource, ObjectVersion.object_id, ObjectVersion.version).where(
            ObjectVersion.tenant_id.in_({key[0] for key in wanted}),
            ObjectVersion.object_id.in_({key[2] for key in wanted}),
        )
    )
    found: set[tuple[str, str, str, str | None]] = {(t, r, o, v) for t, r, o, v in rows.all()}
    return found & wanted
