"""The inbox processor: each pending FreshBooks delivery becomes a normalized event.

A delivery is only a hint ("invoice 42 changed"), so the object is fetched from FreshBooks with its
includes. Tenants waiting for re-authorization keep their events pending until they reconnect; a
FreshBooks failure schedules a retry with backoff. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Update, update
from sqlalchemy.exc import IntegrityError

from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.inbound.signature import parse_form
from webhook_service.logs import get_logger
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, build
from webhook_service.normalize.types import split_name
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import InboxEvent, InboxStatus

log = get_logger(__name__)

LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 12


class InboxProcessor:
    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._runtime = runtime
        self._clock = clock
        self._slots = asyncio.Semaphore(runtime.settings.processor_concurrency)

    async def run_once(self, limit: int = 100) -> int:
        """Process what is due now; returns how many inbox events were claimed."""
        now = self._clock()
        async with self._runtime.db.sessions() as session:
            batch = await claims.claim_inbox(session, now=now, limit=limit, lease=LEASE)
        if batch:
            await asyncio.gather(*(self._guarded(row) for row in batch))
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

    async def _guarded(self, row: InboxEvent) -> None:
        async with self._slots:
            try:
                await self._process(row)
            except Exception as exc:  # never lose the event: retry it later
                log.exception("inbox_event_failed", inbox_id=row.id)
                await self._retry_later(row, f"{type(exc).__name__}: {exc}")

    async def _process(self, row: InboxEvent) -> None:
        runtime = self._runtime
        noun, _ = split_name(row.event_name)
        resource = CATALOGUE.get(noun)
        fields = parse_form(row.raw_body.encode("utf-8"))
        if resource is None or not row.object_id:
            await self._finish(
                row, InboxStatus.FAILED, f"cannot normalize {row.event_name!r} without a known noun and object_id"
            )
            return
        async with runtime.db.sessions() as session:
            tenant = await tenant_store.get(session, row.tenant_id)
        if tenant is None:
            await self._finish(row, InboxStatus.FAILED, "tenant no longer exists")
            return
        try:
            obj = await runtime.freshbooks.get(tenant, resource, row.object_id)
        except FreshBooksError as exc:
            if exc.status != 404:
                await self._retry_later(row, str(exc))
                return
            obj = None  # vanished: still an event, with object null
        except TenantUnavailable:
            await self._release(row)  # it waits for the tenant to reconnect
            return
        now = self._clock()
        event = build(
            tenant=tenant,
            resource=resource,
            freshbooks_event=fields,
            obj=obj,
            origin=ORIGIN_WEBHOOK,
            fallback_time=row.received_at,
        )
        outcome = InboxStatus.DUPLICATE if row.status == InboxStatus.DUPLICATE.value else InboxStatus.PROCESSED
        if outcome is InboxStatus.DUPLICATE and event.version is None:
            await self._finish(row, outcome, "redelivered action, already emitted")
            return
        emitted = False
        try:
            async with runtime.db.sessions() as session:
                emitted = await emit.stage(session, event, tenant_id=tenant.id, inbox_event_id=row.id, now=now)
                await session.execute(_finished(row.id, outcome, None, now))
                await session.commit()
        except IntegrityError:  # another worker emitted this version at the same moment
            await self._finish(row, outcome, "version already emitted")
        if emitted:
            runtime.signals.deliveries_ready()
            log.info("event_emitted", event_id=event.id, type=event.type, inbox_id=row.id, tenant_id=tenant.id)
        else:
            log.info("event_version_known", inbox_id=row.id, resource=resource.name, object_id=row.object_id)

    async def _finish(self, row: InboxEvent, status: InboxStatus, note: str | None) -> None:
        async with self._runtime.db.sessions() as session:
            await session.execute(_finished(row.id, status, note, self._clock()))
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


def _finished(inbox_id: int, status: InboxStatus, note: str | None, now: datetime) -> Update:
    return (
        update(InboxEvent)
        .where(InboxEvent.id == inbox_id)
        .values(status=status.value, processed_at=now, last_error=note, lease_owner=None, lease_until=None)
    )
