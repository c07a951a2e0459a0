"""The console's pages and actions, over the same functions as the admin API and the CLI.

Each page is a handler decorated with :func:`page` (it needs a signed-in session; without one a
GET is sent to the sign-in form and a POST is refused) and renders a template with the views the
admin API answers with (:mod:`webhook_service.web.views`). Every POST checks the form's CSRF token
first.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from webhook_service.core.logs import get_logger
from webhook_service.inbound.receiver import Refusal
from webhook_service.runtime import Runtime
from webhook_service.storage import backfill_state
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import overview as overview_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.web.console import security
from webhook_service.web.console.security import Session
from webhook_service.web.views import callback_view, tenant_view
from webhook_service.web.webhooks import FORM_TYPE, _read_capped

log = get_logger("webhook_service.console")

FORM_BYTES = 64 * 1024
PAGE_SIZE = 50
REFRESH_SECONDS = 15

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

Handler = Callable[[Request, Runtime, Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` for a signed-in browser only; a POST also needs the form's CSRF token."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        if not security.enabled(runtime):
            return render(request, "disabled.html", status=503)
        session = await security.load(request, runtime)
        if session is None or not session.signed_in:
            if request.method != "GET":
                return render(request, "error.html", {"message": "Sign in first."}, status=403)
            return RedirectResponse(f"{security.PATH}/sign-in", status_code=303)
        if request.method == "POST":
            form = await read_form(request)
            if isinstance(form, Response):
                return form
            if not security.csrf_matches(session, form.get(security.CSRF_FIELD)):
                return refuse_csrf(request, session)
            request.state.form = form
        return await handler(request, runtime, session)

    return guarded


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    session: Session | None = None,
) -> Response:
    return templates.TemplateResponse(
        request, template, {"session": session, "base": security.PATH, **(context or {})}, status_code=status
    )


def refuse_csrf(request: Request, session: Session | None) -> Response:
    log.warning("console_refused", reason="csrf", path=request.url.path[:120])
    message = "This form has expired or did not come from this console. Go back, reload the page and try again."
    return render(request, "error.html", {"message": message}, status=403, session=session)


async def read_form(request: Request) -> FormData | Response:
    """The POSTed form (url-encoded, at most :data:`FORM_BYTES`), or the answer refusing it."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        return render(request, "error.html", {"message": f"Forms are sent as {FORM_TYPE}."}, status=415)
    try:
        body = await _read_capped(request, FORM_BYTES)
        pairs: list[tuple[str, str | UploadFile]] = [
            *parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        ]
    except Refusal as refusal:
        return render(request, "error.html", {"message": refusal.message}, status=refusal.status)
    except UnicodeDecodeError:
        return render(request, "error.html", {"message": "The form is not UTF-8."}, status=400)
    return FormData(pairs)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- signing in and out --------------------------------------------------------------------------


async def sign_in_form(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not security.enabled(runtime):
        return render(request, "disabled.html", status=503)
    session = await security.load(request, runtime)
    if session is not None and session.signed_in:
        return RedirectResponse(f"{security.PATH}/", status_code=303)
    return _sign_in_page(request, runtime, session)


def _sign_in_page(
    request: Request, runtime: Runtime, session: Session | None, *, problem: str | None = None, status: int = 200
) -> Response:
    fresh = session is None or session.signed_in
    shown = security.anonymous() if fresh or session is None else session
    response = render(request, "sign_in.html", {"problem": problem, "csrf": shown.csrf}, status=status)
    if fresh:  # a session of its own before signing in, holding the form's CSRF token
        security.store(response, runtime, shown)
    return response


async def sign_in(request: Request, throttle: security.SignInThrottle) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not security.enabled(runtime):
        return render(request, "disabled.html", status=503)
    client = client_of(request)
    wait = throttle.wait(client)
    if wait:
        log.warning("console_sign_in_refused", reason="too_many_failures", client=client, retry_after=wait)
        response = render(
            request, "error.html", {"message": f"Too many failed sign-ins. Try again in {wait} s."}, status=429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    session = await security.load(request, runtime)
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    if not security.csrf_matches(session, form.get(security.CSRF_FIELD)):
        return refuse_csrf(request, None)
    presented = form.get("token")
    if not isinstance(presented, str) or not security.is_admin_token(runtime, presented.strip()):
        throttle.failed(client)
        log.warning("console_sign_in_failed", client=client)
        return _sign_in_page(request, runtime, session, problem="That is not this service's admin token.", status=401)
    throttle.succeeded(client)
    response = RedirectResponse(f"{security.PATH}/", status_code=303)
    await security.sign_in(response, runtime)
    log.info("console_signed_in", client=client)
    return response


@page
async def sign_out(request: Request, runtime: Runtime, session: Session) -> Response:
    response = RedirectResponse(f"{security.PATH}/sign-in", status_code=303)
    await security.sign_out(response, runtime, session)
    log.info("console_signed_out", client=client_of(request))
    return response


# --- overview ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    received: float
    delivered: float
    label: str
    received_count: int
    delivered_count: int


CHART_WIDTH, CHART_HEIGHT = 720, 160


def chart(view: overview_store.Overview) -> list[Bar]:
    """The chart's bars, scaled to its box: events received and deliveries made, per hour."""
    top = max([1, *view.received, *view.delivered])
    step = CHART_WIDTH / max(1, len(view.bucket_starts))
    return [
        Bar(
            x=round(n * step, 1),
            received=round(CHART_HEIGHT * received / top, 1),
            delivered=round(CHART_HEIGHT * delivered / top, 1),
            label=start.strftime("%H:00"),
            received_count=received,
            delivered_count=delivered,
        )
        for n, (start, received, delivered) in enumerate(
            zip(view.bucket_starts, view.received, view.delivered, strict=True)
        )
    ]


@page
async def overview(request: Request, runtime: Runtime, session: Session) -> Response:
    async with runtime.db.sessions() as db:
        view = await overview_store.read(db, utcnow())
    context = {
        "view": view,
        "waiting": [tenant_view(tenant) for tenant in view.waiting],
        "bars": chart(view),
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT},
        "refresh": REFRESH_SECONDS,
        "current": "overview",
    }
    return render(request, "overview.html", context, session=session)


# --- tenants -------------------------------------------------------------------------------------


@page
async def tenants(request: Request, runtime: Runtime, session: Session) -> Response:
    after = _cursor(request.query_params.get("after"))
    async with runtime.db.sessions() as db:
        rows = await tenant_store.list_page(db, after=after, limit=PAGE_SIZE + 1)
    shown = rows[:PAGE_SIZE]
    following = _next_cursor(shown[-1].created_at, shown[-1].id) if len(rows) > PAGE_SIZE else None
    context = {"tenants": [tenant_view(t) for t in shown], "next": following, "current": "tenants"}
    return render(request, "tenants.html", context, session=session)


@page
async def tenant(request: Request, runtime: Runtime, session: Session) -> Response:
    tenant_id = request.path_params["tenant_id"]
    async with runtime.db.sessions() as db:
        found = await tenant_store.get(db, tenant_id)
        if found is None:
            return render(request, "error.html", {"message": f"No tenant {tenant_id}."}, status=404, session=session)
        callbacks = await callback_store.list_all(db, tenant_id=tenant_id)
        backfill = await backfill_state.of_tenant(db, tenant_id)
    context = {
        "tenant": tenant_view(found),
        "callbacks": [callback_view(callback) for callback in callbacks],
        "backfill": [backfill[resource] for resource in sorted(backfill)],
        "current": "tenants",
    }
    return render(request, "tenant.html", context, session=session)


async def not_found(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    session = await security.load(request, runtime)
    return render(request, "error.html", {"message": "There is no such page."}, status=404, session=session)


def _next_cursor(created_at: datetime, record_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{record_id}".encode()).decode().rstrip("=")


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    """The position a ``?after=`` names; an unreadable one starts from the beginning."""
    if not value:
        return None
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        moment, _, record_id = text.partition("|")
        return datetime.fromisoformat(moment), record_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
