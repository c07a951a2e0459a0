"""Writing verified FreshBooks deliveries to the durable inbox."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import Callback, InboxEvent, InboxStatus

LAST_EVENT_RESOLUTION = timedelta(minutes=1)
"""``callbacks.last_event_at`` is exact to this; it says whether a callback is alive, not a count."""


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def record(
    session: AsyncSession,
    callback: Callback,
    *,
    fields: dict[str, str],
    raw_body: bytes,
    headers: dict[str, str],
    now: datetime,
    dedupe_window: timedelta,
) -> InboxEvent:
    """Add the delivery (not committed); an exact redelivery within the window is a duplicate.

    A duplicate is never processed as an event of its own. But FreshBooks bodies carry only ids, so
    a second genuine change of the same object looks exactly like a redelivery: when the first copy
    has already been processed, the duplicate is marked for a recheck (``next_attempt_at``), which
    fetches the object again and emits only a version the ledger has not seen.
    """
    digest = body_hash(raw_body)
    original = (
        await session.execute(
            select(InboxEvent.id, InboxEvent.status)
            .where(
                InboxEvent.callback_id == callback.id,
                InboxEvent.body_hash == digest,
                InboxEvent.received_at >= now - dedupe_window,
                InboxEvent.status != InboxStatus.DUPLICATE.value,
            )
            .order_by(InboxEvent.id)
            .limit(1)
        )
    ).first()
    earlier = original[0] if original else None
    recheck = now if original is not None and original[1] != InboxStatus.PENDING.value else None
    event = InboxEvent(
        tenant_id=callback.tenant_id,
        callback_id=callback.id,
        event_name=fields.get("name", ""),
        object_id=fields.get("object_id"),
        account_id=fields.get("account_id"),
        business_id=fields.get("business_id"),
        raw_body=raw_body.decode("utf-8"),
        headers=json.dumps(headers, sort_keys=True),
        body_hash=digest,
        status=InboxStatus.DUPLICATE.value if earlier is not None else InboxStatus.PENDING.value,
        duplicate_of=earlier,
        next_attempt_at=recheck,
        received_at=now,
    )
    session.add(event)
    # At most one write a minute per callback: concurrent deliveries would otherwise queue on its row.
    await session.execute(
        update(Callback)
        .where(
            Callback.id == callback.id,
            or_(Callback.last_event_at.is_(None), Callback.last_event_at < now - LAST_EVENT_RESOLUTION),
        )
        .values(last_event_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    return event


async def list_events(
    session: AsyncSession, *, tenant_id: str | None = None, status: str | None = None, limit: int = 100
) -> list[InboxEvent]:
    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(InboxEvent.tenant_id == tenant_id)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    return list((await session.execute(query)).scalars())
