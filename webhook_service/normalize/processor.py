"""The inbox processor: each pending FreshBooks delivery becomes a normalized event.

A delivery is only a hint ("invoice 42 changed"), so the object is fetched from FreshBooks with its
includes. Tenants waiting for re-authorization keep their events pending until they reconnect; a
FreshBooks failure schedules a retry with backoff. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.inbound.signature import parse_form
from webhook_service.logs import get_logger
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, NormalizedEvent, build
from webhook_service.normalize.types import split_name
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import InboxEvent, InboxStatus, Tenant

log = get_logger(__name__)

MAX_ATTEMPTS = 12


class InboxProcessor:
    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._runtime = runtime
        self._clock = clock
        self._slots = asyncio.Semaphore(runtime.settings.processor_concurrency)

    async def run_once(self, limit: int = 100) -> int:
        """Process what is due now; returns how many inbox events were claimed.

        Objects are fetched concurrently; the events they make are then committed together (one
        ledger lookup, bulk inserts, one commit), which keeps a busy inbox cheap per event.
        """
        now = self._clock()
        async with self._runtime.db.sessions() as session:
            batch = await claims.claim_inbox(
                session, now=now, limit=limit, lease=timedelta(seconds=self._runtime.settings.processor_lease_seconds)
            )
            if not batch:
                return 0
            found = await session.execute(select(Tenant).where(Tenant.id.in_({row.tenant_id for row in batch})))
            tenants = {tenant.id: tenant for tenant in found.scalars()}
        prepared = await asyncio.gather(*(self._guarded(row, tenants.get(row.tenant_id)) for row in batch))
        ready = [item for item in prepared if item is not None]
        if ready:
            await self._commit(ready)
        return len(batch)

    async def run_forever(self) -> None:
        signals = self._runtime.signals
        while True:
            try:
                claimed = await self.run_once()
            except Exception:
                log.exception("inbox_processor_failed")
                claimed = 0
            if not claimed:
                await signals.wait_inbox(self._runtime.settings.delivery_poll_interval)

    async def _guarded(self, row: InboxEvent, tenant: Tenant | None) -> Ready | None:
        async with self._slots:
            try:
                return await self._prepare(row, tenant)
            except Exception as exc:  # never lose the event: retry it later
                log.exception("inbox_event_failed", inbox_id=row.id)
                await self._retry_later(row, f"{type(exc).__name__}: {exc}")
                return None

    async def _prepare(self, row: InboxEvent, tenant: Tenant | None) -> Ready | None:
        """Hydrate and normalize one inbox event; anything but an event to commit is settled here."""
        runtime = self._runtime
        noun, _ = split_name(row.event_name)
        resource = CATALOGUE.get(noun)
        if resource is None or not row.object_id:
            await self._finish(
                row, InboxStatus.FAILED, f"cannot normalize {row.event_name!r} without a known noun and object_id"
            )
            return None
        if tenant is None:
            await self._finish(row, InboxStatus.FAILED, "tenant no longer exists")
            return None
        try:
            obj = await runtime.freshbooks.get(tenant, resource, row.object_id)
        except FreshBooksError as exc:
            if exc.status != 404:
                await self._retry_later(row, str(exc))
                return None
            obj = None  # vanished: still an event, with object null
        except TenantUnavailable:
            await self._release(row)  # it waits for the tenant to reconnect
            return None
        event = build(
            tenant=tenant,
            resource=resource,
            freshbooks_event=parse_form(row.raw_body.encode("utf-8")),
            obj=obj,
            origin=ORIGIN_WEBHOOK,
            fallback_time=row.received_at,
        )
        outcome = InboxStatus.DUPLICATE if row.status == InboxStatus.DUPLICATE.value else InboxStatus.PROCESSED
        if outcome is InboxStatus.DUPLICATE and event.version is None:
            await self._finish(row, outcome, "redelivered action, already emitted")
            return None
        return Ready(row, event, outcome)

    async def _commit(self, ready: list[Ready]) -> None:
        now = self._clock()
        try:
            async with self._runtime.db.sessions() as session:
                added = await emit.stage_many(session, [(r.event, r.row.tenant_id, r.row.id) for r in ready], now=now)
                await session.execute(
                    update(InboxEvent), [_finished_row(r.row.id, r.outcome, None, now) for r in ready]
                )
                await session.commit()
        except IntegrityError:  # another process emitted one of these versions meanwhile: one by one
            added = [await self._commit_one(r) for r in ready]
        if any(added):
            self._runtime.signals.deliveries_ready()
        for item, was_added in zip(ready, added, strict=True):
            log.info(
                "event_emitted" if was_added else "event_version_known",
                event_id=item.event.id,
                type=item.event.type,
                inbox_id=item.row.id,
                tenant_id=item.row.tenant_id,
            )

    async def _commit_one(self, item: Ready) -> bool:
        now = self._clock()
        try:
            async with self._runtime.db.sessions() as session:
                added = await emit.stage(
                    session, item.event, tenant_id=item.row.tenant_id, inbox_event_id=item.row.id, now=now
                )
                await session.execute(update(InboxEvent), [_finished_row(item.row.id, item.outcome, None, now)])
                await session.commit()
        except IntegrityError:
            await self._finish(item.row, item.outcome, "version already emitted")
            return False
        return added

    async def _finish(self, row: InboxEvent, status: InboxStatus, note: str | None) -> None:
        async with self._runtime.db.sessions() as session:
            await session.execute(update(InboxEvent), [_finished_row(row.id, status, note, self._clock())])
            await session.commit()

    async def _release(self, row: InboxEvent) -> None:
        async with self._runtime.db.sessions() as session:
            await session.execute(
                update(InboxEvent).where(InboxEvent.id == row.id).values(lease_owner=None, lease_until=None)
            )
            await session.commit()

    async def _retry_later(self, row: InboxEvent, error: str) -> None:
        attempts = row.attempts + 1
        delay = min(3600.0, 2.0 ** min(attempts, 12)) * random.uniform(0.8, 1.2)
        values: dict[str, object] = {
            "attempts": attempts,
            "last_error": error[:2000],
            "next_attempt_at": self._clock() + timedelta(seconds=delay),
            "lease_owner": None,
            "lease_until": None,
        }
        if attempts >= MAX_ATTEMPTS:
            values["status"] = InboxStatus.FAILED.value
            log.error("inbox_event_gave_up", inbox_id=row.id, error=error)
        async with self._runtime.db.sessions() as session:
            await session.execute(update(InboxEvent).where(InboxEvent.id == row.id).values(**values))
            await session.commit()


def _finished_row(inbox_id: int, status: InboxStatus, note: str | None, now: datetime) -> dict[str, object]:
    return {
        "id": inbox_id,
        "status": status.value,
        "processed_at": now,
        "last_error": note,
        "lease_owner": None,
        "lease_until": None,
    }


@dataclass(frozen=True)
class Ready:
    """An inbox event hydrated and normalized, waiting to be committed with its batch."""

    row: InboxEvent
    event: NormalizedEvent
    outcome: InboxStatus
