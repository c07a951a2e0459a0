"""The console's session: a signed, expiring, HttpOnly, ``SameSite=Strict`` cookie; CSRF tokens;
slowing down repeated failed sign-ins; and the headers every console answer carries.

The admin token is typed once, into the sign-in form (a POST body, never a URL), and is never
stored: the cookie holds a fingerprint of it (an HMAC under the service's key), so changing
``ADMIN_TOKEN`` signs every browser out, and a stolen cookie does not reveal the token. The cookie
is signed with the service's key for this purpose only (itsdangerous) and names a row of
``console_sessions``: signing out ends that row, so the cookie is worth nothing afterwards, on every
replica, even to someone who copied it. A session ends ``CONSOLE_SESSION_HOURS`` after signing in,
whatever the browser does with its cookie.

Every form carries the session's CSRF token, and every POST is refused (403) without it, the
sign-in form included (it has a session of its own before signing in, holding only that token).
``SameSite=Strict`` already keeps other sites' forms from sending the cookie; the token does not
rely on browsers honouring it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook_service.runtime import Runtime
from webhook_service.storage import console_sessions
from webhook_service.storage.columns import utcnow
from webhook_service.web import admin_token

COOKIE = "console_session"
PATH = "/console"
CSRF_FIELD = "csrf_token"

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
"""Scripts and styles from the service alone (nothing inline, no other origin), no framing, no
referrer (a console URL names tenants and deliveries), and no page kept in a shared cache."""


@dataclass(frozen=True)
class Session:
    csrf: str
    id: str | None = None
    """The ``console_sessions`` row of a signed-in browser; None before signing in."""

    @property
    def signed_in(self) -> bool:
        return self.id is not None


async def load(request: Request, runtime: Runtime) -> Session | None:
    """The browser's session, if its cookie is ours and unexpired; signed in only while its row is
    live and it was signed in with today's token."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        data = runtime.box.serializer("console-session").loads(value, max_age=_lifetime(runtime))
    except BadSignature:  # forged, altered, or expired (SignatureExpired is one)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    session_id, who = data.get("sid"), data.get("who")
    if not (isinstance(session_id, str) and isinstance(who, str) and admin_token.enabled(runtime.settings)):
        return Session(csrf=data["csrf"])
    if not hmac.compare_digest(who, _fingerprint(runtime)):
        return Session(csrf=data["csrf"])
    async with runtime.db.sessions() as db:
        live = await console_sessions.is_live(db, session_id, now=utcnow())
    return Session(csrf=data["csrf"], id=session_id if live else None)


async def sign_in(response: Response, runtime: Runtime) -> Session:
    """A new signed-in session, recorded, on ``response``; its CSRF token is fresh too, so a session
    fixed beforehand by someone else is worth nothing."""
    session = Session(csrf=secrets.token_urlsafe(32), id=secrets.token_urlsafe(32))
    assert session.id is not None
    async with runtime.db.sessions() as db:
        await console_sessions.start(db, session.id, now=utcnow(), lifetime=timedelta(seconds=_lifetime(runtime)))
        await db.commit()
    store(response, runtime, session)
    return session


async def sign_out(response: Response, runtime: Runtime, session: Session) -> None:
    if session.id is not None:
        async with runtime.db.sessions() as db:
            await console_sessions.end(db, session.id, now=utcnow())
            await db.commit()
    forget(response, runtime)


def anonymous() -> Session:
    """A session before signing in: it holds only the sign-in form's CSRF token."""
    return Session(csrf=secrets.token_urlsafe(32))


def store(response: Response, runtime: Runtime, session: Session) -> None:
    signed = {"sid": session.id, "who": _fingerprint(runtime)} if session.id is not None else {}
    response.set_cookie(
        COOKIE,
        runtime.box.serializer("console-session").dumps({"csrf": session.csrf, **signed}),
        max_age=_lifetime(runtime),
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=runtime.settings.console_cookie_is_secure,
    )


def forget(response: Response, runtime: Runtime) -> None:
    response.delete_cookie(
        COOKIE, path=PATH, httponly=True, samesite="strict", secure=runtime.settings.console_cookie_is_secure
    )


def csrf_matches(session: Session | None, presented: object) -> bool:
    return (
        session is not None
        and isinstance(presented, str)
        and hmac.compare_digest(presented.encode(), session.csrf.encode())
    )


def _fingerprint(runtime: Runtime) -> str:
    token = runtime.settings.admin_token
    secret = token.get_secret_value() if token is not None else ""
    return hmac.new(runtime.box.signing_key.encode(), secret.encode(), hashlib.sha256).hexdigest()[:32]


def _lifetime(runtime: Runtime) -> int:
    return int(runtime.settings.console_session_hours * 3600)


class SignInThrottle:
    """Failed sign-ins per client address: the first few are free; past them each try waits
    longer (30 s, doubling, at most 15 minutes) and is answered 429 until then. Kept in the process
    (a web process's own count; behind several replicas each keeps its own)."""

    FREE = 5
    WINDOW = 900.0
    FIRST_WAIT = 30.0
    LONGEST_WAIT = 900.0
    REMEMBERED = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def wait(self, client: str) -> int:
        """Seconds before ``client`` may try again (0: now)."""
        now = self._clock()
        failures = [at for at in self._failures.get(client, []) if at > now - self.WINDOW]
        if len(failures) < self.FREE:
            return 0
        lock = min(self.LONGEST_WAIT, self.FIRST_WAIT * 2 ** (len(failures) - self.FREE))
        return max(0, int(failures[-1] + lock - now + 0.999))

    def failed(self, client: str) -> None:
        now = self._clock()
        if client not in self._failures and len(self._failures) >= self.REMEMBERED:
            self._failures.clear()  # many addresses at once: start over rather than grow
        kept = [at for at in self._failures.get(client, []) if at > now - self.WINDOW]
        self._failures[client] = [*kept, now]

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class SecurityHeaders:
    """Adds :data:`HEADERS` to every answer of the app it wraps (pages, redirects, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {name for name, _ in headers}
                headers.extend(header for header in HEADERS if header[0] not in present)
            await send(message)

        await self.app(scope, receive, with_headers)
