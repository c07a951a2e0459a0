"""What every console page shares: the guard that wants a signed-in session (and on a POST the
form's CSRF token), rendering, reading a form, and cursors for paged lists.

A page is a handler decorated with :func:`page`: without a session a GET is sent to the sign-in
form and a POST is refused (403). Pages render the views the admin API answers with
(:mod:`webhook_service.web.views`), so both show the same records the same way.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from webhook_service.core.logs import get_logger
from webhook_service.inbound.receiver import Refusal
from webhook_service.runtime import Runtime
from webhook_service.web import admin_token
from webhook_service.web.console import security
from webhook_service.web.console.security import Session
from webhook_service.web.webhooks import FORM_TYPE, _read_capped

log = get_logger("webhook_service.console")

FORM_BYTES = 64 * 1024
PAGE_SIZE = 50

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

Handler = Callable[[Request, Runtime, Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` for a signed-in browser only; a POST also needs the form's CSRF token."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        if not admin_token.enabled(runtime.settings):
            return render(request, "disabled.html", status=503)
        session = await security.load(request, runtime)
        if session is None or not session.signed_in:
            if request.method != "GET":
                return refuse(request, None, "Sign in first.", 403)
            return RedirectResponse(f"{security.PATH}/sign-in", status_code=303)
        if request.method == "POST":
            form = await read_form(request)
            if isinstance(form, Response):  # not a form at all: no token either
                return refuse_csrf(request, session) if form.status_code == 415 else form
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


def refuse(request: Request, session: Session | None, message: str, status: int) -> Response:
    """A page that says what was not done and why (a 404, a 409, a 422...)."""
    return render(request, "error.html", {"message": message}, status=status, session=session)


def refuse_csrf(request: Request, session: Session | None) -> Response:
    log.warning("console_refused", reason="csrf", path=request.url.path[:120])
    message = "This form has expired or did not come from this console. Go back, reload the page and try again."
    return refuse(request, session, message, 403)


async def read_form(request: Request) -> FormData | Response:
    """The POSTed form (url-encoded, at most :data:`FORM_BYTES`), or the answer refusing it."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        return refuse(request, None, f"Forms are sent as {FORM_TYPE}.", 415)
    try:
        body = await _read_capped(request, FORM_BYTES)
        pairs: list[tuple[str, str | UploadFile]] = [
            *parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        ]
    except Refusal as refusal:
        return refuse(request, None, refusal.message, refusal.status)
    except UnicodeDecodeError:
        return refuse(request, None, "The form is not UTF-8.", 400)
    return FormData(pairs)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def not_found(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    session = await security.load(request, runtime)
    return refuse(request, session, "There is no such page.", 404)


class Positioned(Protocol):
    created_at: datetime
    id: str


RowT = TypeVar("RowT", bound=Positioned)


def one_page(rows: Sequence[RowT]) -> tuple[list[RowT], str | None]:
    """Of rows read with a limit of ``PAGE_SIZE + 1``, those shown, and the cursor of the page after
    them (None on the last page: the extra row is how a page knows another follows)."""
    shown = list(rows[:PAGE_SIZE])
    if len(rows) <= PAGE_SIZE:
        return shown, None
    last = shown[-1]
    return shown, base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode().rstrip("=")


def cursor(value: str | None) -> tuple[datetime, str] | None:
    """The position a ``?after=`` names; an unreadable one starts from the beginning."""
    if not value:
        return None
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        moment, _, record_id = text.partition("|")
        return datetime.fromisoformat(moment), record_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
