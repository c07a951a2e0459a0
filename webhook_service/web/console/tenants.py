"""Tenants: the list, and a page per tenant with its callbacks, its backfill, and what to do:
reconnect (the OAuth flow), sync its callbacks, run a backfill and watch it to the end, disconnect.

The actions are the admin API's (``POST /admin/v1/tenants/{id}/backfill``, ``.../callbacks/sync``)
and the CLI's (``tenants disconnect``) functions.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_service.backfill import jobs
from webhook_service.inbound import registrar
from webhook_service.runtime import Runtime
from webhook_service.storage import backfill_state
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Tenant
from webhook_service.tenants import onboarding
from webhook_service.web.console.pages import PAGE_SIZE, cursor, log, one_page, page, refuse, render
from webhook_service.web.console.security import PATH, Session
from webhook_service.web.views import backfill_job_view, callback_view, tenant_view


@page
async def listing(request: Request, runtime: Runtime, session: Session) -> Response:
    after = cursor(request.query_params.get("after"))
    async with runtime.db.sessions() as db:
        rows = await tenant_store.list_page(db, after=after, limit=PAGE_SIZE + 1)
    shown, following = one_page(rows)
    context = {"tenants": [tenant_view(t) for t in shown], "next": following, "current": "tenants"}
    return render(request, "tenants.html", context, session=session)


@page
async def detail(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    async with runtime.db.sessions() as db:
        found = await tenant_store.get(db, tenant_id)
        if found is None:
            return _no_tenant(request, session, tenant_id)
        callbacks = await callback_store.list_all(db, tenant_id=tenant_id)
        backfill = await backfill_state.of_tenant(db, tenant_id)
    job = await jobs.latest(runtime, tenant_id)
    job_view = backfill_job_view(job, utcnow()) if job is not None else None
    running = job_view is not None and job_view["status"] == "running"
    context = {
        "tenant": tenant_view(found),
        "callbacks": [callback_view(callback) for callback in callbacks],
        "backfill": [backfill[resource] for resource in sorted(backfill)],
        "job": job_view,
        "refresh": JOB_REFRESH_SECONDS if running else None,
        "notice": NOTICES.get(request.query_params.get("done", "")),
        "current": "tenants",
    }
    return render(request, "tenant.html", context, session=session)


@page
async def run_backfill(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    try:
        job, new = await jobs.start(runtime, tenant_id)
    except jobs.TenantNotFound:
        return _no_tenant(request, session, tenant_id)
    except jobs.TenantNotActive as exc:
        return refuse(request, session, str(exc), 409)
    if new:
        log.info("console_backfill_started", tenant_id=tenant_id, job_id=job.id)
    return RedirectResponse(f"{PATH}/tenants/{tenant_id}#backfill-job", status_code=303)


async def _tenant(runtime: Runtime, tenant_id: str) -> Tenant | None:
    async with runtime.db.sessions() as db:
        return await tenant_store.get(db, tenant_id)


def _no_tenant(request: Request, session: Session, tenant_id: str) -> Response:
    return refuse(request, session, f"No tenant {tenant_id}.", 404)


@page
async def sync_callbacks(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    found = await _tenant(runtime, tenant_id)
    if found is None:
        return _no_tenant(request, session, tenant_id)
    report = await registrar.sync_tenant(runtime, found)
    log.info("console_callbacks_synced", tenant_id=tenant_id, error=report.error)
    if report.error:
        return refuse(request, session, f"The sync did not finish: {report.error}", 502)
    return RedirectResponse(f"{PATH}/tenants/{tenant_id}?done=synced", status_code=303)


@page
async def confirm_disconnect(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    found = await _tenant(runtime, tenant_id)
    if found is None:
        return _no_tenant(request, session, tenant_id)
    context = {"tenant": tenant_view(found), "current": "tenants"}
    return render(request, "tenant_disconnect.html", context, session=session)


@page
async def disconnect(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    try:
        _, revoke_error = await onboarding.disconnect(runtime, tenant_id)
    except onboarding.OnboardingError as exc:
        return refuse(request, session, str(exc), 404)
    log.info("console_tenant_disconnected", tenant_id=tenant_id, revoked=revoke_error is None)
    done = "disconnected" if revoke_error is None else "disconnected_unrevoked"
    return RedirectResponse(f"{PATH}/tenants/{tenant_id}?done={done}", status_code=303)


JOB_REFRESH_SECONDS = 2
NOTICES = {
    "synced": "Callbacks synced with FreshBooks.",
    "disconnected": "Disconnected: FreshBooks revoked the grant and the tokens are forgotten.",
    "disconnected_unrevoked": (
        "Disconnected here, but FreshBooks did not confirm the revocation: revoke the app's access in FreshBooks "
        "by hand."
    ),
}
