"""The browser flow that connects a FreshBooks business.

``state`` is signed and expires (``OAUTH_STATE_TTL``), and it is bound to the browser that started
the flow by a nonce cookie, so a link forged by someone else cannot attach their business here.
"""

from __future__ import annotations

import secrets
from html import escape
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, SignatureExpired
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from webhook_service.core.logs import get_logger
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.inbound import registrar
from webhook_service.runtime import Runtime
from webhook_service.storage.models import Tenant
from webhook_service.tenants import onboarding

log = get_logger(__name__)

NONCE_COOKIE = "fb_oauth_nonce"
COOKIE_PATH = "/oauth/freshbooks"


async def start(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not runtime.settings.freshbooks_client_id:
        return _page("Not configured", "FRESHBOOKS_CLIENT_ID is not set on this service.", 503)
    business_id = _int_param(request, "business_id")
    if business_id is False:
        return _page("Bad request", "business_id must be an integer.", 400)
    nonce = secrets.token_urlsafe(24)
    state = runtime.box.serializer("oauth-state").dumps({"n": nonce, "b": business_id})
    response = RedirectResponse(runtime.oauth.authorize_url(state), status_code=302)
    response.set_cookie(
        NONCE_COOKIE,
        nonce,
        max_age=runtime.settings.oauth_state_ttl,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=runtime.settings.public_base_url.startswith("https://"),
    )
    return response


async def callback(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    if "error" in params:
        return _page("Not connected", f"FreshBooks did not authorize the connection: {params['error']}.", 400)
    code, raw_state = params.get("code"), params.get("state")
    if not code or not raw_state:
        return _page("Bad request", "The callback needs both code and state.", 400)
    try:
        state: dict[str, Any] = runtime.box.serializer("oauth-state").loads(
            raw_state, max_age=runtime.settings.oauth_state_ttl
        )
    except SignatureExpired:
        log.warning("oauth_state_refused", reason="expired")
        return _page("Link expired", "This authorization took too long. Start again.", 400)
    except BadSignature:
        log.warning("oauth_state_refused", reason="bad_signature")
        return _page("Bad request", "The state parameter is invalid. Start again.", 400)
    cookie = request.cookies.get(NONCE_COOKIE)
    if not cookie or not secrets.compare_digest(cookie, str(state.get("n", ""))):
        log.warning("oauth_state_refused", reason="nonce_mismatch")
        return _page("Bad request", "This authorization was started in another browser. Start again.", 400)
    business_id = _int_param(request, "business_id")
    if business_id is False:
        return _page("Bad request", "business_id must be an integer.", 400)
    chosen = business_id if business_id is not None else state.get("b")
    try:
        outcome = await onboarding.connect_with_code(runtime, code, chosen)
    except FreshBooksError as exc:
        log.warning("oauth_code_exchange_failed", status=exc.status, code=str(exc.code))
        return _page("Not connected", f"FreshBooks refused the authorization: {exc.message}", 502)
    except onboarding.HeldPairError as exc:
        log.error("oauth_identity_failed", pending_id=exc.pending_id, error=str(exc.__cause__))
        return _page("Not connected", "FreshBooks did not answer as expected. Please try again.", 502)
    except onboarding.OnboardingError as exc:
        return _page("Cannot connect this login", str(exc), 403)
    response = _outcome_page(runtime, outcome)
    response.delete_cookie(NONCE_COOKIE, path=COOKIE_PATH)
    return response


async def select(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    business_id = _int_param(request, "business_id")
    if not business_id:
        return _page("Bad request", "business_id must be an integer.", 400)
    try:
        pending_id = runtime.box.serializer("pending").loads(
            request.query_params.get("pending", ""), max_age=runtime.settings.oauth_state_ttl
        )
    except BadSignature:
        return _page("Link expired", "This choice has expired or is invalid. Start again.", 400)
    try:
        outcome = await onboarding.complete(runtime, str(pending_id), business_id)
    except onboarding.OnboardingError as exc:
        return _page("Cannot connect", str(exc), 403)
    except FreshBooksError as exc:
        return _page("Not connected", f"FreshBooks refused: {exc.message}", 502)
    return _outcome_page(runtime, outcome)


def _outcome_page(runtime: Runtime, outcome: Tenant | onboarding.ChooseBusiness) -> HTMLResponse:
    if isinstance(outcome, Tenant):
        runtime.tasks.spawn(registrar.sync_tenant(runtime, outcome), name=f"callbacks-sync:{outcome.id}")
        return _page(
            "Connected",
            f"“{outcome.name}” (account {outcome.account_id}, business {outcome.business_id}) is connected "
            f"as tenant {outcome.id}.",
            200,
        )
    signed = runtime.box.serializer("pending").dumps(outcome.pending_id)
    items = "".join(
        f'<li><a href="{COOKIE_PATH}/select?{escape(urlencode({"pending": signed, "business_id": m.business_id}))}">'
        f"{escape(m.name)}</a> ({escape(m.role)}, account {escape(m.account_id or '')})</li>"
        for m in outcome.memberships
    )
    return HTMLResponse(_html("Choose a business", f"<p>Which business should be connected?</p><ul>{items}</ul>"))


def _int_param(request: Request, name: str) -> int | None | bool:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        return False


def _page(title: str, message: str, status: int) -> HTMLResponse:
    return HTMLResponse(_html(title, f"<p>{escape(message)}</p>"), status_code=status)


def _html(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


routes = [
    Route(f"{COOKIE_PATH}/start", start),
    Route(f"{COOKIE_PATH}/callback", callback),
    Route(f"{COOKIE_PATH}/select", select),
]
