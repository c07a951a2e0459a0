"""Tenants: the list, and a page per tenant with its callbacks, its backfill, and what to do."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from webhook_service.runtime import Runtime
from webhook_service.storage import backfill_state
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.web.console.pages import PAGE_SIZE, cursor, next_cursor, page, refuse, render
from webhook_service.web.console.security import Session
from webhook_service.web.views import callback_view, tenant_view


@page
async def listing(request: Request, runtime: Runtime, session: Session) -> Response:
    after = cursor(request.query_params.get("after"))
    async with runtime.db.sessions() as db:
        rows = await tenant_store.list_page(db, after=after, limit=PAGE_SIZE + 1)
    shown = rows[:PAGE_SIZE]
    following = next_cursor(shown[-1].created_at, shown[-1].id) if len(rows) > PAGE_SIZE else None
    context = {"tenants": [tenant_view(t) for t in shown], "next": following, "current": "tenants"}
    return render(request, "tenants.html", context, session=session)


@page
async def detail(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    async with runtime.db.sessions() as db:
        found = await tenant_store.get(db, tenant_id)
        if found is None:
            return refuse(request, session, f"No tenant {tenant_id}.", 404)
        callbacks = await callback_store.list_all(db, tenant_id=tenant_id)
        backfill = await backfill_state.of_tenant(db, tenant_id)
    context = {
        "tenant": tenant_view(found),
        "callbacks": [callback_view(callback) for callback in callbacks],
        "backfill": [backfill[resource] for resource in sorted(backfill)],
        "current": "tenants",
    }
    return render(request, "tenant.html", context, session=session)
