"""A local subscriber endpoint that records what it receives and answers as scripted.

Used by the tests, the benchmarks and the demo: every request is kept (headers and raw body), and
the next responses can be scripted (status, headers, body) to play a failing or slow subscriber.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.serving import BackgroundServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Sink:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["POST", "GET"])])

    def script(self, *replies: Reply | int) -> None:
        """The next responses, in order; after them, 200."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` requests have arrived (a condition, not a sleep)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{len(self.received)} of {count} requests arrived")
            return list(self.received)

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self._arrived:
            self.received.append(Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body))
            reply = self._script.popleft() if self._script else Reply()
            self._arrived.notify_all()
        return Response(reply.body, status_code=reply.status, headers=reply.headers)


class SinkServer(BackgroundServer):
    def __init__(self, sink: Sink | None = None, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.sink = sink or Sink()
        super().__init__(self.sink.app, host, port, **kwargs)
