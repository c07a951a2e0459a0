"""Request log and failure injection, in front of every route.

Pure ASGI so it sees the real status of every response, including ones from
exception handlers. The token endpoint is logged by its own handler (it needs
the parsed body for ``token_requests``), so an injected failure for it is
handed over in the ASGI scope instead of answered here. The ``/_sim/``
control routes are neither logged nor failed: they are not FreshBooks.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .failures import CONTROL_PREFIX
from .state import SimulatorState

TOKEN_PATH = "/auth/oauth/token"
FAILURE_SCOPE_KEY = "simulator.failure"
ARRIVED_SCOPE_KEY = "simulator.arrived"


class TrafficMiddleware:
    """Logs each request as it arrives and fails it if a burst is switched on."""

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        path: str = scope["path"]
        failure = self.state.take_failure(path)
        if path == TOKEN_PATH:
            scope[ARRIVED_SCOPE_KEY] = arrived
            if failure is not None:
                scope[FAILURE_SCOPE_KEY] = failure
            await self.app(scope, receive, send)
            return

        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        authorization = Headers(scope=scope).get("authorization")
        entry = self.state.log_request(scope["method"], path, query, authorization, arrived)
        if failure is not None:
            self.state.set_status(entry, failure.status)
            response = JSONResponse(failure.body(), status_code=failure.status, headers=failure.headers())
            await response(scope, receive, send)
            return

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Recorded before the client can see the response, so a test
                # that has its answer always finds the status in the log.
                self.state.set_status(entry, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if entry["status"] is None:
                self.state.set_status(entry, 500)
