"""The backfill: list what changed since a watermark, emit every object version not yet emitted.

FreshBooks delivers webhooks late, sometimes never, and may disable a failing callback; polling is
what makes the service lose nothing. Each resource is listed with its own "updated since" filter
(accounting: ``search[updated_min]``, an US/Eastern day, widened by a day; projects and time
entries: ``updated_since`` in UTC), every page, deleted and archived objects included. Every object
version the ledger has not seen (its content, so a change inside the second of the last one counts)
becomes a normalized event with ``origin: "backfill"``, through the same ledger, events and
deliveries as webhooks, committed page by page. The watermark moves only after the whole listing is
committed, so a crash repeats work and never skips any. One request at a time per tenant:
resources are scanned one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from webhook_service.contract import operational
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import BACKFILL_RECOVERED
from webhook_service.freshbooks.catalogue import CATALOGUE, Page, Resource
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_BACKFILL, NormalizedEvent, build
from webhook_service.runtime import Runtime
from webhook_service.storage import backfill_state, ledger, outbox
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import BackfillState, Tenant
from webhook_service.storage.session import Conflict

log = get_logger(__name__)

Progress = Callable[[str, str, Page, int], None]
"""Called after each page: tenant id, resource, the page, events emitted so far for the resource."""


@dataclass
class ResourceReport:
    resource: str
    since: str | None = None
    pages: int = 0
    scanned: int = 0
    known: int = 0
    emitted: int = 0
    error: str | None = None


@dataclass
class TenantReport:
    tenant_id: str
    dry_run: bool
    resources: list[ResourceReport] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.error for r in self.resources)

    def as_dict(self) -> dict[str, Any]:
        totals = {key: sum(getattr(r, key) for r in self.resources) for key in ("pages", "scanned", "known", "emitted")}
        return {**asdict(self), "totals": totals, "failed": self.failed}


async def backfill_tenant(
    runtime: Runtime,
    tenant: Tenant,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    resources: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> TenantReport:
    report = TenantReport(tenant.id, dry_run)
    started = clock()
    async with runtime.db.sessions() as session:
        states = await backfill_state.of_tenant(session, tenant.id)
    for name in resources or list(CATALOGUE):
        resource = CATALOGUE[name]
        part = ResourceReport(name)
        report.resources.append(part)
        try:
            await _scan(
                runtime,
                tenant,
                resource,
                part,
                states.get(name),
                since=since,
                until=until,
                dry_run=dry_run,
                progress=progress,
                clock=clock,
            )
        except TenantUnavailable as exc:
            part.error = report.error = str(exc)
            break  # every other resource would fail the same way
        except FreshBooksError as exc:
            part.error = str(exc)
        if part.error:
            log.warning("backfill_failed", tenant_id=tenant.id, resource=name, error=part.error)
            if not dry_run:
                await _record_run(runtime, tenant.id, name, part, clock(), watermark=None)
    recovered = {part.resource: part.emitted for part in report.resources if part.emitted}
    if recovered and not dry_run:
        await _announce(runtime, tenant.id, recovered, started, clock())
    return report


async def _announce(
    runtime: Runtime, tenant_id: str, recovered: dict[str, int], started: datetime, now: datetime
) -> None:
    """``backfill.recovered``: one per sweep that found versions no webhook had brought."""
    async with runtime.db.sessions() as session:
        event = operational.backfill_recovered(tenant_id, recovered=recovered, started_at=started, at=now)
        await outbox.emit(session, event, now=now)
        await session.commit()
    runtime.signals.deliveries_ready()


async def _scan(
    runtime: Runtime,
    tenant: Tenant,
    resource: Resource,
    part: ResourceReport,
    state: BackfillState | None,
    *,
    since: datetime | None,
    until: datetime | None,
    dry_run: bool,
    progress: Progress | None,
    clock: Callable[[], datetime],
) -> None:
    started = clock()
    watermark = state.watermark if state else None
    start = since or watermark or started - timedelta(hours=runtime.settings.backfill_initial_lookback_hours)
    part.since = start.isoformat()
    requested = started  # pages are fetched one at a time, when the loop asks for the next
    page_log = log.bind(tenant_id=tenant.id, resource=resource.name)
    async for page in runtime.freshbooks.pages(tenant, resource, updated_since=start):
        part.pages += 1
        page_log.debug("backfill_page", page=page.page, pages=page.pages, rows=len(page.items))
        now = clock()
        candidates = [obj for obj in page.items if _within(resource, obj, until)]
        part.scanned += len(candidates)
        emitted = {}
        if candidates:  # one query per page with rows (an empty listing, the usual sweep, asks nothing)
            async with runtime.db.sessions() as session:
                keys = {(tenant.id, resource.name, _object_id(obj)) for obj in candidates}
                emitted = await ledger.emitted(session, keys)
        known = {object_id: entry.versions for (_, _, object_id), entry in emitted.items()}
        events = [
            _event(tenant, resource, obj, now, observed_at=requested, known=_object_id(obj) in known)
            for obj in candidates
        ]
        # A version is content: a state left stale by a lost webhook, or by two changes inside one
        # second, is not among the known ones.
        fresh = [event for event in events if event.version not in known.get(event.object_id, ())]
        part.known += len(candidates) - len(fresh)
        if fresh and not dry_run:
            part.emitted += await _emit(runtime, tenant, resource, fresh, now)
        elif dry_run:
            part.emitted += len(fresh)
        if progress is not None:
            progress(tenant.id, resource.name, page, part.emitted)
        requested = clock()
    if dry_run:
        return
    # The listing covered [start, now]: the watermark may move there only if it continues the
    # covered range (an explicit later --since or an --until leaves a gap or stops short).
    covers = until is None and (watermark is None or start <= watermark)
    new_mark = started - timedelta(seconds=runtime.settings.backfill_watermark_margin) if covers else None
    await _record_run(runtime, tenant.id, resource.name, part, started, watermark=new_mark)


def _within(resource: Resource, obj: dict[str, Any], until: datetime | None) -> bool:
    if until is None:
        return True
    updated = resource.updated_at(obj)
    return updated is None or updated <= until


def _object_id(obj: dict[str, Any]) -> str:
    return str(obj.get("id", ""))


async def _emit(
    runtime: Runtime, tenant: Tenant, resource: Resource, events: list[NormalizedEvent], now: datetime
) -> int:
    try:
        async with runtime.db.sessions() as session:
            emitted = await emit.stage_many(session, [(e, tenant.id, None) for e in events], now=now)
            await session.commit()
    except Conflict:  # a webhook emitted one of these versions meanwhile: go one by one
        emitted = []
        for event in events:
            try:
                async with runtime.db.sessions() as session:
                    emitted.append(await emit.stage(session, event, tenant_id=tenant.id, inbox_event_id=None, now=now))
                    await session.commit()
            except Conflict:
                emitted.append(False)
    count = sum(emitted)
    if count:
        runtime.signals.deliveries_ready()
        BACKFILL_RECOVERED.labels(resource=resource.name).inc(count)
    return count


def _event(
    tenant: Tenant, resource: Resource, obj: dict[str, Any], now: datetime, *, observed_at: datetime, known: bool
) -> NormalizedEvent:
    """The event polling reports: deleted if soft-deleted; created if never changed since and no
    earlier state was emitted (``known``: changes inside the second of creation share its stamp);
    else updated."""
    stamps = resource.timestamps_utc(obj)
    if obj.get("vis_state") == 1:
        verb = "delete"
    elif (
        not known
        and resource.updated_field
        and stamps.get("created_at")
        and stamps.get("created_at") == stamps.get(resource.updated_field)
    ):
        verb = "create"
    else:
        verb = "update"
    ids = {"object_id": _object_id(obj), "account_id": tenant.account_id, "business_id": str(tenant.business_id)}
    return build(
        tenant=tenant,
        resource=resource,
        freshbooks_event={"name": f"{resource.name}.{verb}", **ids},
        obj=obj,
        origin=ORIGIN_BACKFILL,
        fallback_time=now,
        observed_at=observed_at,
    )


async def _record_run(
    runtime: Runtime, tenant_id: str, resource: str, part: ResourceReport, at: datetime, *, watermark: datetime | None
) -> None:
    async with runtime.db.sessions() as session:
        await backfill_state.record_run(
            session,
            tenant_id,
            resource,
            at=at,
            error=part.error,
            scanned=part.scanned,
            emitted=part.emitted,
            watermark=watermark,
        )
        await session.commit()


async def status(runtime: Runtime) -> list[BackfillState]:
    async with runtime.db.sessions() as session:
        return await backfill_state.list_all(session)
