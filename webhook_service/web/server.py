"""How the service's HTTP server is configured: uvicorn, with limits on what a slow client can hold.

uvicorn limits idle keep-alive connections (``timeout_keep_alive``) and the connections it serves
(``limit_concurrency``), but not how long a client may take to *send* a request: the first byte of
a request cancels its keep-alive timer and nothing replaces it. So a client sending one header byte
every few seconds holds a connection for ever, and a few hundred of them hold the service
(slowloris). The protocol classes here add two deadlines to uvicorn's:

* the request head (request line and headers) must be complete within ``HTTP_HEADER_TIMEOUT`` of
  the connection opening, or of the previous response ending on a keep-alive connection;
* the request body must be complete within ``HTTP_BODY_TIMEOUT`` of the head.

When one passes, the connection is closed: after a ``408 Request Timeout`` if the client had begun a
request that has no response yet, silently if it was idle between requests. The app sees a client
that went away (``http.disconnect``), as when one hangs up mid-body. With httptools the head's size
is bounded too (h11 bounds it itself), so a fast client cannot fill memory within the deadline.

Beyond ``HTTP_MAX_CONNECTIONS`` open connections a new one is still accepted and its head read
(under the same deadline), then answered ``503 Service Unavailable`` with ``Connection: close``,
without reaching the app.

Both uvicorn HTTP implementations are covered; the service runs httptools, as uvicorn's ``auto``
would (``uvicorn[standard]``, a dependency, installs it; it is the faster parser). The subclasses
rely on uvicorn's protocol internals (0.55): ``connection_made``/``connection_lost``/``data_received``, the
``on_response_complete`` callback and ``timeout_keep_alive_task`` (set when a connection goes idle),
the request cycle's ``more_body``/``response_started``/``disconnected``/``message_event``; with
httptools the parser callbacks and ``_start_asgi_task``, with h11 ``handle_events`` and
``conn.trailing_data``. ``tests/test_slow_clients.py`` runs against both, so an upgrade that moves
these fails there first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, Protocol

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn._types import ASGI3Application, HTTPScope
from uvicorn.protocols.http import h11_impl, httptools_impl

from webhook_service.config import Settings
from webhook_service.core.logs import get_logger

log = get_logger("webhook_service.http")

Implementation = Literal["auto", "httptools", "h11"]

#: The most bytes a request head may take with httptools, which has no bound of its own; h11's
#: default bound, so both implementations refuse the same heads.
MAX_HEAD_BYTES = 16 * 1024

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nRequest Header Fields Too Large"
)


class ServerConfig(uvicorn.Config):
    """uvicorn's Config plus the two deadlines it has no setting for (read by the protocols here)."""

    def __init__(self, app: ASGIApp, *, header_timeout: float, body_timeout: float, **options: Any) -> None:
        super().__init__(app, **options)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout


def build_config(
    settings: Settings, app: ASGIApp, *, implementation: Implementation = "auto", **options: Any
) -> ServerConfig:
    """The uvicorn configuration ``webhook-service serve`` runs ``app`` with.

    ``options`` are uvicorn's own (``host``, ``port``, ``lifespan``...) and win over the service's;
    ``implementation`` picks the HTTP parser (tests run both).
    """
    service: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(implementation),
        # uvicorn counts the connection asking among the open ones: N + 1 serves N at once.
        "limit_concurrency": settings.http_max_connections + 1,
        "ws": "none",  # no WebSocket routes; an upgrade would leave these deadlines behind
        "log_config": None,  # logs.configure_logging routes uvicorn's loggers through structlog
        "access_log": False,  # the request middleware logs requests, without query strings
        "proxy_headers": True,
    }
    return ServerConfig(
        app,
        header_timeout=settings.http_header_timeout,
        body_timeout=settings.http_body_timeout,
        **{**service, **options},
    )


def protocol_class(implementation: Implementation = "auto") -> type[asyncio.Protocol]:
    """The HTTP protocol with deadlines; ``auto`` is httptools."""
    return H11Protocol if implementation == "h11" else HttpToolsProtocol


class _Cycle(Protocol):
    """What both implementations' request cycles share and the body deadline uses."""

    scope: HTTPScope
    more_body: bool
    response_started: bool
    disconnected: bool
    message_event: asyncio.Event


class _Timer:
    """One pending call at a time: armed anew (replacing the one pending), disarmed, or run."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, delay: float, expired: Callable[[], None]) -> None:
        self.disarm()
        self._handle = self._loop.call_later(delay, self._run, expired)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self, expired: Callable[[], None]) -> None:
        self._handle = None  # a handle that ran is spent: not armed while ``expired`` runs
        expired()


class Deadlines:
    """A connection's two deadlines, and what happens when one passes; one per connection."""

    def __init__(self, config: uvicorn.Config, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        if not isinstance(config, ServerConfig):
            raise TypeError("the service's HTTP protocols need a ServerConfig (see build_config)")
        self._config = config
        self._transport = transport
        self._head = _Timer(loop)
        self._body = _Timer(loop)

    @property
    def awaiting_head(self) -> bool:
        return self._head.armed

    def await_head(self, began: Callable[[], bool]) -> None:
        """From now the next request head has ``HTTP_HEADER_TIMEOUT``; ``began()`` says whether
        part of it has arrived when that runs out (then the client is told 408)."""
        self._head.arm(self._config.header_timeout, lambda: self._head_expired(began))

    def head_received(self) -> None:
        self._head.disarm()

    def await_body(self, cycle: _Cycle) -> None:
        """``cycle``'s app is running and its body still arriving: it has ``HTTP_BODY_TIMEOUT``."""
        self._body.arm(self._config.body_timeout, lambda: self._body_expired(cycle))

    def body_received(self) -> None:
        self._body.disarm()

    def cancel(self) -> None:
        self.head_received()
        self.body_received()

    def refuse_head(self) -> None:
        """The head grew past :data:`MAX_HEAD_BYTES`: 431 and close."""
        self.cancel()
        if not self._transport.is_closing():
            log.info("http_head_too_large", client=_client(self._transport))
            self._transport.write(_HEAD_TOO_LARGE)
            self._transport.close()

    def _head_expired(self, began: Callable[[], bool]) -> None:
        if self._transport.is_closing():
            return
        if began():
            log.info("http_header_timeout", client=_client(self._transport))
            self._transport.write(_REQUEST_TIMEOUT)
        self._transport.close()

    def _body_expired(self, cycle: _Cycle) -> None:
        if self._transport.is_closing():
            return
        log.warning(
            "http_body_timeout",
            method=cycle.scope["method"],
            path=cycle.scope["path"],
            client=_client(self._transport),
        )
        if not cycle.response_started:
            self._transport.write(_REQUEST_TIMEOUT)
        # As uvicorn's connection_lost does, now: the app's sends go nowhere and its receive says
        # the client left, so nothing it writes can follow the 408.
        cycle.disconnected = True
        cycle.message_event.set()
        self._transport.close()


def _client(transport: asyncio.Transport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol with the head and body deadlines (h11 bounds the head's size)."""

    deadlines: Deadlines

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadlines = Deadlines(self.config, self.loop, transport)
        self.deadlines.await_head(self._head_began)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.cancel()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        # Runs on every read and after each response; a new cycle means a request head arrived.
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not before and cycle is not None:
            self.deadlines.head_received()
            if cycle.more_body and not cycle.response_complete:
                self.deadlines.await_body(cycle)
        if cycle is not None and not cycle.more_body:
            self.deadlines.body_received()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.deadlines.cancel()  # the connection is the WebSocket protocol's now
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        self.deadlines.body_received()  # a body still arriving now delays only the next head
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn found the connection idle
            self.deadlines.await_head(self._head_began)

    def _head_began(self) -> bool:
        """Part of a new request head is buffered: h11 holds it until the head is whole."""
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol with the head and body deadlines and a bound on the head's size."""

    deadlines: Deadlines

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadlines = Deadlines(self.config, self.loop, transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_began and self.deadlines.awaiting_head:  # still incomplete after this read
            self._head_size += len(data)  # a whole read, though the head may begin inside it
            if self._head_size > MAX_HEAD_BYTES:
                self.deadlines.refuse_head()

    def on_message_begin(self) -> None:
        self._head_began = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.deadlines.head_received()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: httptools_impl.RequestResponseCycle, app: ASGI3Application) -> None:
        # A request's app starts here: at once, or after the response before it (pipelining).
        super()._start_asgi_task(cycle, app)
        if cycle.more_body:
            self.deadlines.await_body(cycle)

    def on_message_complete(self) -> None:
        self.deadlines.body_received()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self.deadlines.cancel()  # the connection is the WebSocket protocol's now
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        self.deadlines.body_received()  # a body still arriving now delays only the next head
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn found the connection idle
            self._await_head()

    def _await_head(self) -> None:
        self._head_began = False  # set by the parser at a request's first byte
        self._head_size = 0
        self.deadlines.await_head(lambda: self._head_began)
