"""OAuth routes: authorize, token, revoke, and the users/me identity call.

One server plays both ``auth.freshbooks.com`` (``/oauth/authorize``) and the
API host (``/auth/...``). Refresh tokens are single-use and every decision is
taken under the state's lock, so concurrent refreshes with one token give
exactly one winner and ``invalid_grant`` for the rest. ``state.token_delay``
(``/_sim/token-delay``) makes the token endpoint slow: the grant is decided on
arrival, its answer held back without blocking the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import require_identity, simulator_state
from .failures import FailureRule
from .middleware import ARRIVED_SCOPE_KEY, FAILURE_SCOPE_KEY
from .state import SimulatorState
from .tokens import OAuthError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: How often a held token answer looks at ``token_delay`` again.
_HOLD_STEP_SECONDS = 0.05


def _error_page(status: int, error: str, description: str) -> HTMLResponse:
    """The authorize endpoint answers a browser, so errors are a page, not JSON."""
    html = f"<!doctype html><title>{error}</title><h1>{error}</h1><p>{description}</p>"
    return HTMLResponse(html, status_code=status)


def redirect_uri_problem(redirect_uri: str | None) -> str | None:
    """Why FreshBooks would refuse this redirect URI, or ``None`` if it is fine.

    FreshBooks requires HTTPS and no query string (state travels in
    ``state``). Plain HTTP is let through for loopback hosts only, so tests
    on 127.0.0.1 work while a real-looking ``http://`` host is refused.
    """
    if not redirect_uri:
        return "Missing required parameter: redirect_uri."
    parts = urlsplit(redirect_uri)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)
    if not secure or not parts.hostname:
        return "The redirect URI must be an absolute HTTPS URL."
    if parts.query or parts.fragment:
        return "The redirect URI must not contain a query string or fragment; use the state parameter."
    return None


async def authorize(request: Request) -> Response:
    """Validate and auto-approve for the default identity: 302 back with ``code`` and ``state``."""
    params = request.query_params
    redirect_uri = params.get("redirect_uri")
    if params.get("client_id") != simulator_state(request).client_id:
        return _error_page(400, "invalid_client", "Unknown client_id.")
    if params.get("response_type") != "code":
        return _error_page(400, "unsupported_response_type", "response_type must be 'code'.")
    problem = redirect_uri_problem(redirect_uri)
    if problem or redirect_uri is None:
        return _error_page(400, "invalid_redirect_uri", problem or "")
    code = simulator_state(request).authorize(params.get("client_id"), redirect_uri, params.get("scope"))
    answer = [("code", code)]
    if "state" in params:
        answer.append(("state", params["state"]))
    return RedirectResponse(f"{redirect_uri}?{urlencode(answer)}", status_code=302)


async def read_body(request: Request) -> dict[str, Any] | None:
    """JSON (FreshBooks' documented form) or form-encoded; ``None`` if neither parses."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        try:
            data = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            return data
        if content_type == "application/json":
            return None
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (ValueError, UnicodeDecodeError):
        return None


def _failure_response(failure: FailureRule) -> JSONResponse:
    return JSONResponse(failure.body(), status_code=failure.status, headers=failure.headers())


async def token(request: Request) -> Response:
    """``POST /auth/oauth/token``: authorization_code and refresh_token grants."""
    state = simulator_state(request)
    arrived = request.scope.get(ARRIVED_SCOPE_KEY, time.monotonic())
    body = await read_body(request)
    failure: FailureRule | None = request.scope.get(FAILURE_SCOPE_KEY)
    if failure is not None:
        state.log_token_request(body or {}, failure.status, None, arrived)
        return _failure_response(failure)
    try:
        if body is None:
            raise OAuthError(400, "invalid_request", "The request body must be a JSON object.")
        answer = state.grant_token(body)
    except OAuthError as exc:
        state.log_token_request(body or {}, exc.status, exc.error, arrived)
        return JSONResponse(exc.body(), status_code=exc.status, headers=NO_STORE)
    state.log_token_request(body, 200, None, arrived)
    await _hold_answer(state, arrived)
    return JSONResponse(answer, headers=NO_STORE)


async def _hold_answer(state: SimulatorState, arrived: float) -> None:
    """Wait until ``state.token_delay`` has passed since ``arrived`` (see that property).

    Sleeps on the event loop in short steps (other requests go on; the state's lock is never held
    while waiting) and reads the delay on every step, so changing it takes effect at once.
    """
    while (remaining := arrived + state.token_delay - time.monotonic()) > 0:
        await asyncio.sleep(min(remaining, _HOLD_STEP_SECONDS))


async def revoke(request: Request) -> Response:
    """``POST /auth/oauth/revoke``: the token's whole grant stops working."""
    body = await read_body(request)
    try:
        if body is None:
            raise OAuthError(400, "invalid_request", "The request body must be a JSON object.")
        simulator_state(request).revoke_token(body)
    except OAuthError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return JSONResponse({})


async def users_me(request: Request) -> Response:
    """``GET /auth/api/v1/users/me``: identity and business memberships."""
    return JSONResponse(require_identity(request).users_me())


def routes() -> list[BaseRoute]:
    return [
        Route("/oauth/authorize", authorize, methods=["GET"]),
        Route("/auth/oauth/token", token, methods=["POST"]),
        Route("/auth/oauth/revoke", revoke, methods=["POST"]),
        Route("/auth/api/v1/users/me", users_me, methods=["GET"]),
    ]
