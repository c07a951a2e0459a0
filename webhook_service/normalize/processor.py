"""The inbox processor: each pending FreshBooks delivery becomes a normalized event.

A delivery is only a hint ("invoice 42 changed"), so the object is fetched from FreshBooks with its
includes. Tenants waiting for re-authorization keep their events pending until they reconnect; a
FreshBooks failure schedules a retry with backoff. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from webhook_service.contract.types import FRESHBOOKS_VERBS, split_name
from webhook_service.core.batching import Batcher
from webhook_service.core.logs import get_logger
from webhook_service.core.signals import Capacity, Grant
from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.signature import parse_form
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, NormalizedEvent, build
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.bulk import update_by_id
from webhook_service.storage.columns import utcnow
from webhook_service.storage.leased import LeasedInboxEvent
from webhook_service.storage.models import InboxEvent, InboxStatus, Tenant, TenantStatus
from webhook_service.storage.session import Conflict

log = get_logger(__name__)


MAX_ATTEMPTS = 12
IN_FLIGHT_PER_FETCH = 16
IDLE_POLL_START = 0.005
"""The first wait after a claim that found work. Events committed by a web process elsewhere reach
this one only through claims; the wait doubles with each empty claim up to
``DELIVERY_POLL_INTERVAL``, so a busy inbox is claimed from within milliseconds and an idle one
costs a read a second."""


class InboxProcessor:
    """Turns inbox events into normalized events.

    ``run_forever`` takes the events this process's webhook endpoint commits as they are handed
    over (see :class:`~webhook_service.core.signals.Lane`), and claims the rest (retries, other
    replicas' expired leases) from the database. It keeps up to ``16 × PROCESSOR_CONCURRENCY``
    events in flight, so an event never waits for a whole batch; fetches are limited to
    ``PROCESSOR_CONCURRENCY`` at a time, and finished events are committed together (group commit:
    one ledger lookup, bulk inserts, one commit for all that are ready).

    Work on an event stays inside its lease: its FreshBooks fetch (retries and ``Retry-After``
    waits included) must end a quarter of the lease before it does, or it is abandoned (a GET is
    safe to abandon) and the event retried later; every final write is fenced on the event's
    lease (:func:`~webhook_service.storage.deliveries.fence`), so an event whose lease was lost
    and taken over changes nothing here.
    """

    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._runtime = runtime
        self._clock = clock
        self._slots = asyncio.Semaphore(runtime.settings.processor_concurrency)
        self._committer: Batcher[Ready, bool | None] = Batcher(self._commit, name="inbox-commit", split_on=(Conflict,))
        # Events in flight: enough that a busy inbox is handed over rather than claimed back (a
        # claim per few events cost the hot path a tenth of its time); waiting for a fetch slot
        # is safe, as no fetch runs past its event's lease.
        limit = IN_FLIGHT_PER_FETCH * runtime.settings.processor_concurrency
        # A claim leaves a quarter to this process's webhooks, handed over as they are committed
        self._capacity = Capacity(limit, kept_for_hand_overs=limit // 4)

    async def run_once(self, limit: int = 100) -> int:
        """Process what is due now and wait for it; returns how many inbox events were claimed."""
        claimed = await self._claim(limit)
        await self._process(claimed)
        return len(claimed)

    async def run_forever(self) -> None:
        runtime = self._runtime
        lane = runtime.signals.inbox_lane
        lease = timedelta(seconds=runtime.settings.processor_lease_seconds)
        self._capacity.when_freed(runtime.signals.inbox_ready)
        lane.attach(self._start, lease=lease, capacity=self._capacity)
        poll = runtime.settings.delivery_poll_interval
        idle = min(IDLE_POLL_START, poll)
        try:
            while True:
                claimed: Sequence[tuple[LeasedInboxEvent, Tenant | None]] = []
                try:
                    claimed = await self._claim(self._capacity.limit)
                except Exception:
                    log.exception("inbox_processor_failed")
                self._start(claimed)
                if claimed:
                    idle = min(IDLE_POLL_START, poll)
                else:
                    await runtime.signals.wait_inbox(idle)
                    idle = min(idle * 2, poll)
        finally:
            lane.detach()

    def _start(self, items: Sequence[tuple[LeasedInboxEvent, Tenant | None]]) -> None:
        """Take events that arrive with their tenant rows (handed over, or claimed and looked up),
        for which capacity is already reserved (one unit each)."""
        if items:
            self._runtime.tasks.spawn(self._process(items), name=f"inbox:{items[0][0].id}")

    async def _process(self, items: Sequence[tuple[LeasedInboxEvent, Tenant | None]]) -> None:
        try:
            if len(items) == 1:  # the usual hand-over: no child task, no extra loop iteration
                await self._handle(*items[0])
            else:
                await asyncio.gather(*(self._handle(row, tenant) for row, tenant in items))
        finally:
            self._capacity.give_back(len(items))

    async def _claim(self, limit: int) -> Sequence[tuple[LeasedInboxEvent, Tenant | None]]:
        """Claimed events with their tenants, read in the same session; no more than there is room
        for (the room taken stays reserved for what was claimed)."""
        return await self._capacity.claim(limit, self._claim_rows)

    async def _claim_rows(self, limit: int) -> list[tuple[LeasedInboxEvent, Tenant | None]]:
        lease = timedelta(seconds=self._runtime.settings.processor_lease_seconds)
        async with self._runtime.db.sessions() as session:
            rows = await claims.claim_inbox(
                session, owner=self._runtime.lease_owner, now=self._clock(), limit=limit, lease=lease
            )
            if not rows:
                return []
            tenants = await tenant_store.by_ids(session, {row.tenant_id for row in rows})
        log.debug("inbox_events_claimed", count=len(rows))
        return [(row, tenants.get(row.tenant_id)) for row in rows]

    async def _handle(self, row: LeasedInboxEvent, tenant: Tenant | None) -> None:
        # every log line about this event (the FreshBooks client's too) carries its inbox id
        # bind and reset, not ``bound_contextvars``, which copies and walks the whole context to restore
        # it (2.5 µs against 0.6 µs with nothing else bound, more with each key bound before)
        tokens = structlog.contextvars.bind_contextvars(inbox_id=row.id, tenant_id=row.tenant_id)
        try:
            await self._settle(row, tenant)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def idle(self) -> None:
        """Wait for the commit under way (at shutdown: it may be handing deliveries over)."""
        await self._committer.idle()

    async def _settle(self, row: LeasedInboxEvent, tenant: Tenant | None) -> None:
        ready = await self._guarded(row, tenant)
        if ready is None:
            return
        try:
            added = await self._committer.submit(ready)
        except Conflict:  # another process emitted this version meanwhile
            await self._finish(row, ready.outcome, "version already emitted")
            added = False
        except Exception as exc:
            log.exception("inbox_event_failed", inbox_id=row.id)
            await self._retry_later(row, f"{type(exc).__name__}: {exc}")
            return
        if added is None:  # the lease was lost: whoever holds it now settles the event
            return
        log.info(
            "event_emitted" if added else "event_version_known",
            event_id=ready.event.id,
            type=ready.event.type,
            inbox_id=row.id,
            tenant_id=row.tenant_id,
        )

    async def _guarded(self, row: LeasedInboxEvent, tenant: Tenant | None) -> Ready | None:
        async with self._slots:
            try:
                return await self._prepare(row, tenant)
            except Exception as exc:  # never lose the event: retry it later
                log.exception("inbox_event_failed", inbox_id=row.id)
                await self._retry_later(row, f"{type(exc).__name__}: {exc}")
                return None

    async def _prepare(self, row: LeasedInboxEvent, tenant: Tenant | None) -> Ready | None:
        """Hydrate and normalize one inbox event; anything but an event to commit is settled here."""
        runtime = self._runtime
        noun, verb = split_name(row.event_name)
        resource = CATALOGUE.get(noun)
        if resource is None or not row.object_id:
            await self._finish(
                row, InboxStatus.FAILED, f"cannot normalize {row.event_name!r} without a known noun and object_id"
            )
            return None
        if verb not in FRESHBOOKS_VERBS[noun]:  # kept as received; its object's state reaches the backfill
            await self._finish(row, InboxStatus.FAILED, f"{row.event_name!r} is no event of the published catalogue")
            return None
        if tenant is None:
            await self._finish(row, InboxStatus.FAILED, "tenant no longer exists")
            return None
        if tenant.status != TenantStatus.ACTIVE.value:
            await self._release(row)  # it waits for the tenant to reconnect
            return None
        deadline = self._fetch_deadline(row)
        if deadline is not None and deadline <= asyncio.get_running_loop().time():
            await self._release(row)  # too little of its lease is left: claimed afresh at once
            return None
        observed_at = self._clock()  # the state read is no older than this request
        try:
            obj = await runtime.freshbooks.get(tenant, resource, row.object_id, deadline=deadline)
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
            received_at=row.received_at,
            observed_at=observed_at,
        )
        outcome = InboxStatus.DUPLICATE if row.status == InboxStatus.DUPLICATE.value else InboxStatus.PROCESSED
        if outcome is InboxStatus.DUPLICATE and event.version is None:
            await self._finish(row, outcome, "redelivered action, already emitted")
            return None
        return Ready(row, event, outcome)

    def _fetch_deadline(self, row: LeasedInboxEvent) -> float | None:
        """The loop time by which this event's FreshBooks fetch must be over: a quarter of the
        lease before it ends, left for committing the result."""
        if row.lease_until is None:
            return None
        margin = self._runtime.settings.processor_lease_seconds / 4
        left = (row.lease_until - self._clock()).total_seconds() - margin
        return asyncio.get_running_loop().time() + left

    async def _commit(self, ready: Sequence[Ready]) -> list[bool | None]:
        """One transaction for every ready event whose lease still holds (None for the others); a
        version another process emitted first raises ``Conflict`` (and the batcher then
        commits each alone)."""
        now = self._clock()
        lane = self._runtime.signals.delivery_lane
        granted: list[Grant] = []

        def lease(count: int) -> Grant | None:  # asked in the transaction, once its deliveries are counted
            grant = lane.lease(now, count)  # None unless a worker of this process takes hand-overs
            if grant is not None:
                granted.append(grant)
            return grant

        try:
            async with self._runtime.db.sessions() as session:
                kept = await claims.fence(session, InboxEvent, {r.row.id: r.row.lease_owner for r in ready})
                held = [r for r in ready if r.row.id in kept]
                finished = [_finished_row(r.row.id, r.outcome, None, now) for r in held]
                added, handed, waiting = await emit.stage_leased(
                    session,
                    [(r.event, r.row.tenant_id, r.row.id) for r in held],
                    now=now,
                    lease=lease,
                    along=[("update", InboxEvent, finished)],
                )
                await session.commit()
        except BaseException:
            for grant in granted:
                lane.cancel(grant)
            raise
        for grant in granted:
            lane.hand_over(grant, emit.handed(handed))
        if waiting:  # left for a claim: wake one now
            self._runtime.signals.deliveries_ready()
        outcome = dict(zip((r.row.id for r in held), added, strict=True))
        return [outcome.get(r.row.id) for r in ready]

    async def _finish(self, row: LeasedInboxEvent, status: InboxStatus, note: str | None) -> None:
        await self._write_fenced(row, _finished_row(row.id, status, note, self._clock()))

    async def _write_fenced(self, row: LeasedInboxEvent, values: dict[str, object]) -> None:
        """Write ``values`` (with the row's ``id``) if the event's lease is still the one it was taken with."""
        async with self._runtime.db.sessions() as session:
            if await claims.fence(session, InboxEvent, {row.id: row.lease_owner}):
                await update_by_id(session, InboxEvent, [values])
                await session.commit()

    async def _release(self, row: LeasedInboxEvent) -> None:
        await claims.release(self._runtime.db, InboxEvent, {row.id: row.lease_owner})

    async def _retry_later(self, row: LeasedInboxEvent, error: str) -> None:
        attempts = row.attempts + 1
        delay = min(3600.0, 2.0 ** min(attempts, 12)) * random.uniform(0.8, 1.2)
        values: dict[str, object] = {
            "id": row.id,
            "attempts": attempts,
            "last_error": error[:2000],
            "next_attempt_at": self._clock() + timedelta(seconds=delay),
            "lease_owner": None,
            "lease_until": None,
        }
        if attempts >= MAX_ATTEMPTS:
            values["status"] = InboxStatus.FAILED.value
            log.error("inbox_event_gave_up", inbox_id=row.id, error=error)
        await self._write_fenced(row, values)


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

    row: LeasedInboxEvent
    event: NormalizedEvent
    outcome: InboxStatus
