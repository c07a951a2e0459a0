"""Signing in with the admin token, and out (see :mod:`~webhook_service.web.console.security`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_service.runtime import Runtime
from webhook_service.web import admin_token
from webhook_service.web.console import security
from webhook_service.web.console.pages import client_of, log, page, read_form, refuse, refuse_csrf, render
from webhook_service.web.console.security import Session


async def form(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not admin_token.enabled(runtime.settings):
        return render(request, "disabled.html", status=503)
    session = await security.load(request, runtime)
    if session is not None and session.signed_in:
        return RedirectResponse(f"{security.PATH}/", status_code=303)
    return _sign_in_page(request, runtime, session)


def _sign_in_page(
    request: Request, runtime: Runtime, session: Session | None, *, problem: str | None = None, status: int = 200
) -> Response:
    shown = session if session is not None and not session.signed_in else security.anonymous()
    response = render(request, "sign_in.html", {"problem": problem, "csrf": shown.csrf}, status=status)
    if shown is not session:  # a session of its own before signing in, holding the form's CSRF token
        security.store(response, runtime, shown)
    return response


async def submit(request: Request, throttle: security.SignInThrottle) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not admin_token.enabled(runtime.settings):
        return render(request, "disabled.html", status=503)
    client = client_of(request)
    wait = throttle.wait(client)
    if wait:
        log.warning("console_sign_in_refused", reason="too_many_failures", client=client, retry_after=wait)
        response = refuse(request, None, f"Too many failed sign-ins. Try again in {wait} s.", 429)
        response.headers["Retry-After"] = str(wait)
        return response
    session = await security.load(request, runtime)
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    if not security.csrf_matches(session, form.get(security.CSRF_FIELD)):
        return refuse_csrf(request, None)
    presented = form.get("token")
    if not isinstance(presented, str) or not admin_token.matches(runtime.settings, presented.strip()):
        throttle.failed(client)
        log.warning("console_sign_in_failed", client=client)
        return _sign_in_page(request, runtime, session, problem="That is not this service's admin token.", status=401)
    throttle.succeeded(client)
    response = RedirectResponse(f"{security.PATH}/", status_code=303)
    await security.sign_in(response, runtime)
    log.info("console_signed_in", client=client)
    return response


@page
async def out(request: Request, runtime: Runtime, session: Session) -> Response:
    response = RedirectResponse(f"{security.PATH}/sign-in", status_code=303)
    await security.sign_out(response, runtime, session)
    log.info("console_signed_out", client=client_of(request))
    return response
