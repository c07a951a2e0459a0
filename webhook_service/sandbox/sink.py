"""A local subscriber endpoint that records what it receives and answers as scripted.

Used by the tests, the benchmarks and the demo: every request is kept (headers and raw body), and
the next responses can be scripted (status, headers, body) to play a failing subscriber, and held
(recorded on arrival, answered only on release) to play a slow one with requests in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.sandbox.serving import BackgroundServer


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
        self._held = False
        self._delay = 0.0
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._responder: Callable[[str, bytes], Reply | None] | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["POST", "GET"])])

    def script(self, *replies: Reply | int) -> None:
        """The next responses, in order; after them, 200."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def respond(self, responder: Callable[[str, bytes], Reply | None] | None) -> None:
        """Answer each request for which ``responder(path, body)`` gives a reply with that reply
        (before the script): a subscriber that fails some events and takes others. None: stop."""
        with self._lock:
            self._responder = responder

    def hold(self) -> None:
        """From now on, record each request as it arrives but answer it only after ``release``.

        The sender sees a subscriber that never answers: its attempts stay in flight.
        """
        with self._lock:
            self._held = True

    def slow(self, seconds: float) -> None:
        """From now on, answer each request ``seconds`` after it arrived (a slow subscriber)."""
        with self._lock:
            self._delay = seconds

    def release(self) -> None:
        """Answer every held request and stop holding."""
        with self._lock:
            self._held = False
            waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            loop.call_soon_threadsafe(_answer, future)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` requests have arrived (a condition, not a sleep)."""
        return self.wait_until(lambda received: len(received) >= count, timeout, f"{count} requests")

    def wait_until(
        self, condition: Callable[[list[Received]], bool], timeout: float = 10.0, what: str = "the condition"
    ) -> list[Received]:
        """Block until ``condition(received)`` holds (checked on each arrival); the requests so far."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: condition(self.received), timeout):
                raise TimeoutError(f"waited {timeout:g} s for {what}; {len(self.received)} requests arrived")
            return list(self.received)

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        held: asyncio.Future[None] | None = None
        with self._arrived:
            self.received.append(Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body))
            chosen = self._responder(request.url.path, body) if self._responder else None
            reply = chosen or (self._script.popleft() if self._script else Reply())
            if self._held:
                loop = asyncio.get_running_loop()
                held = loop.create_future()
                self._waiting.append((loop, held))
            delay = self._delay
            self._arrived.notify_all()
        if held is not None:
            await held
        if delay:
            await asyncio.sleep(delay)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)


def _answer(held: asyncio.Future[None]) -> None:
    if not held.done():  # the client may have gone (and the request been cancelled) meanwhile
        held.set_result(None)


class SinkServer(BackgroundServer):
    def __init__(self, sink: Sink | None = None, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.sink = sink or Sink()
        super().__init__(self.sink.app, host, port, **kwargs)

    def stop(self) -> None:
        self.sink.release()  # held requests would otherwise stall the graceful shutdown
        super().stop()
