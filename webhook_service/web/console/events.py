"""Events: the normalized events, filtered by tenant, type and origin, and each one's payload."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from webhook_service.contract import schemas as catalogue
from webhook_service.delivery import replay
from webhook_service.runtime import Runtime
from webhook_service.storage import events as event_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.web.console.pages import PAGE_SIZE, cursor, one_page, page, refuse, render
from webhook_service.web.console.security import Session
from webhook_service.web.views import delivery_view, event_view

ORIGINS = ("webhook", "backfill", "service")


@page
async def listing(request: Request, runtime: Runtime, session: Session) -> Response:
    params = request.query_params
    chosen = {
        "tenant_id": params.get("tenant_id") or "",
        "type": params.get("type") if params.get("type") in catalogue.EVENT_TYPES else "",
        "origin": params.get("origin") if params.get("origin") in ORIGINS else "",
    }
    async with runtime.db.sessions() as db:
        rows = await event_store.list_events(
            db,
            tenant_id=chosen["tenant_id"] or None,
            event_type=chosen["type"] or None,
            origin=chosen["origin"] or None,
            limit=PAGE_SIZE + 1,
            before=cursor(params.get("before")),
        )
        tenants = await tenant_store.list_all(db)
    shown, before = one_page(rows)
    following = urlencode({**chosen, "before": before}) if before else None
    context = {
        "events": [event_view(event, with_payload=False) for event in shown],
        "tenants": [(t.id, t.name or t.id) for t in tenants],
        "types": sorted(catalogue.EVENT_TYPES),
        "origins": ORIGINS,
        "chosen": chosen,
        "next": following,
        "current": "events",
    }
    return render(request, "events.html", context, session=session)


@page
async def detail(request: Request, runtime: Runtime, session: Session) -> Response:
    event_id = request.path_params["event_id"]
    async with runtime.db.sessions() as db:
        event = await event_store.get(db, event_id)
    if event is None:
        return refuse(request, session, "There is no such event.", 404)
    view = event_view(event)
    deliveries = await replay.list_deliveries(runtime, event_id=event_id, limit=PAGE_SIZE)
    context = {
        "event": view,
        "payload": json.dumps(view["payload"], indent=2, sort_keys=False, ensure_ascii=False),
        "deliveries": [delivery_view(delivery) for delivery in deliveries],
        "current": "events",
    }
    return render(request, "event.html", context, session=session)
