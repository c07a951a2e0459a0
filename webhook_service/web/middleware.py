"""Request ids and request logging, as a pure ASGI middleware.

Every log line emitted while a request is handled carries its ``request_id`` (structlog context
variables), and the response returns it in ``X-Request-ID`` so a client can quote it. The query
string is never logged: OAuth codes and states travel there.

Each request ends in one ``http_request`` line; a route adds what the request became to that line
(:func:`describe_request`) rather than logging a line of its own: a webhook, the bulk of the
traffic, is one line, not two.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook_service.core.logs import get_logger

log = get_logger("webhook_service.http")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PROCESS = secrets.token_hex(4)
_DESCRIBED = "log_fields"
_OWN_FIELDS = frozenset({"event", "method", "path", "status", "duration_ms"})
_SEQUENCE = itertools.count(1)
"""Request ids are this process's random prefix and a counter: unique, and no call to the system's
random source on every request."""


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or f"req_{_PROCESS}{next(_SEQUENCE):08x}"
        described: dict[str, object] = {}
        state = scope.setdefault("state", {})
        state["request_id"], state[_DESCRIBED] = request_id, described
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        # bind and reset, not ``bound_contextvars``, which copies the whole context to restore it
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "http_request",
                **described,
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.reset_contextvars(**tokens)


def describe_request(request: Request, **fields: object) -> None:
    """Add ``fields`` to this request's ``http_request`` line (the line's own fields keep theirs)."""
    described = request.scope.get("state", {}).get(_DESCRIBED)
    if described is not None:
        for name in fields.keys() - _OWN_FIELDS:
            described[name] = fields[name]


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.match(text) else None
    return None
