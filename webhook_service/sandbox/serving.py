"""Serving an ASGI app with uvicorn on a background thread (simulator, sinks, tests, demo).

The listening socket is bound (and ``listen()``-ing) before uvicorn starts, so the port is known at
once and early connections queue in the backlog instead of being refused: no polling or sleeping
for startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import uvicorn
from starlette.types import ASGIApp

SHUTDOWN_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _ThreadedServer(uvicorn.Server):
    """uvicorn's server, but ``request_exit`` wakes the main loop at once.

    Stock uvicorn polls ``should_exit`` every 0.1 s; tests start and stop servers per test, so
    waking the loop from the stopping thread keeps teardown short. Signal handlers are left alone:
    this server does not own the process.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def install_signal_handlers(self) -> None:
        return None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await super().startup(sockets)

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        assert self._wake is not None
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def request_exit(self) -> None:
        """Thread-safe: ask the server to stop and wake its loop."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)


class BackgroundServer:
    """An ASGI app served on a daemon thread: ``with BackgroundServer(app) as server: server.base_url``.

    With ``lifespan="on"`` (or a ``config`` whose lifespan is not ``off``) entering waits until the
    app's startup has finished (or failed, which raises here), so callers can use it at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: Literal["on", "off"] | None = None,
        sock: socket.socket | None = None,
        config: uvicorn.Config | None = None,
    ) -> None:
        """``sock``: an already bound socket, for apps that must know their own URL before starting.

        ``config``: serve ``app`` with this uvicorn configuration (the service's own, from
        :func:`webhook_service.web.server.build_config`) instead of a plain one; its ``lifespan``
        applies, and it serves one start (uvicorn loads a configuration once).
        """
        if config is not None and (config.app is not app or lifespan is not None):
            raise ValueError("config must be built for app, and carries the lifespan itself")
        self.app = app
        self.host = host
        self.port = port
        self.lifespan: Literal["on", "off"] = lifespan or "off"
        self._config = config
        self.base_url = ""
        self._given_socket = sock
        self._socket: socket.socket | None = None
        self._server: _ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("server already running")
        self._socket = self._given_socket or bind_socket(self.host, self.port)
        self.host, self.port = self._socket.getsockname()[:2]
        self.base_url = f"http://{url_host(self.host)}:{self.port}"
        config = self._config or uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan=self.lifespan,
            timeout_graceful_shutdown=2,
        )
        self._server = server = _ThreadedServer(config)
        self._finished.clear()

        sock = self._socket

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                self._finished.set()

        self._thread = threading.Thread(target=serve, name=f"asgi:{self.port}", daemon=True)
        self._thread.start()
        if config.lifespan != "off":
            self._wait_started(server)
        return self

    def _wait_started(self, server: _ThreadedServer) -> None:
        """Block until uvicorn has run the app's startup; uvicorn sets ``started`` after it."""
        while not server.started:
            if self._finished.wait(0.01):
                self.stop()
                raise RuntimeError("the app failed to start (see the log)")

    def run_coroutine(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's event loop and wait for its result (from another thread)."""
        loop = self._server._loop if self._server is not None else None
        if loop is None:
            coro.close()
            raise RuntimeError("server is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.request_exit()
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Joining blocks; in a thread so the caller's event loop keeps serving meanwhile.
        await asyncio.to_thread(self.stop)
