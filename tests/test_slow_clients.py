"""Slow clients cannot hold the service: request heads and bodies have deadlines, connections a cap.

The service runs as ``webhook-service serve`` runs it (``http_server.build_config``), on each of
uvicorn's HTTP implementations, with one-second deadlines. Clients are raw sockets. A test waits for
the server to close a connection (``recv`` returns ``b""``) and fails only if it is held past
``HELD_FOREVER``, a bound far above any deadline here: the point is "not held for ever", not how
fast. Trickling clients pace themselves by waiting for the server (``select``) between bytes.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from webhook_service.app import create_app
from webhook_service.sandbox.serving import BackgroundServer
from webhook_service.storage.models import Callback
from webhook_service.web.server import MAX_HEAD_BYTES, build_config, protocol_class

HELD_FOREVER = 30.0
"""Seconds after which a connection the server should have closed counts as held for ever."""
PACE = 0.1
"""Seconds a trickling client waits for the server between two bytes."""
HEAD = b"GET /healthz HTTP/1.1\r\nHost: service\r\n"


@pytest.fixture(params=["httptools", "h11"])
def implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(settings, service_socket, implementation) -> Iterator[Callable[..., BackgroundServer]]:
    """Start the service with the production server configuration; setting overrides as keywords."""
    servers: list[BackgroundServer] = []

    def start(**overrides: object) -> BackgroundServer:
        values = {"http_header_timeout": 1.0, "http_body_timeout": 1.0, **overrides}
        # The web role: these tests are about its HTTP server. A worker's callback-sync duty would
        # replace the hand-made callback below (FreshBooks does not know it) while a test uses it.
        app = create_app(settings.model_copy(update=values), role="web")
        config = build_config(
            settings.model_copy(update=values),
            app,
            implementation=implementation,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        server = BackgroundServer(app, sock=service_socket, config=config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _connect(server: BackgroundServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=HELD_FOREVER)


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    deadline = time.monotonic() + HELD_FOREVER
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server held the connection past {HELD_FOREVER:g} s") from None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body) on a connection that stays open."""
    sock.settimeout(HELD_FOREVER)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {buffer!r}"
        buffer += chunk
    head, body = buffer.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def _trickle(sock: socket.socket, between: Callable[[], None] = lambda: None) -> bytes:
    """Send a byte, wait ``PACE`` for the server, repeat, until it closes; what it sent back.

    ``between`` runs after each byte (requests on other connections).
    """
    deadline = time.monotonic() + HELD_FOREVER
    received = b""
    while time.monotonic() < deadline:
        try:
            sock.send(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return received
        between()
        readable, _, _ = select.select([sock], [], [], PACE)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"a trickling client held its connection past {HELD_FOREVER:g} s")


def _healthy(server: BackgroundServer) -> None:
    assert httpx.get(f"{server.base_url}/healthz", timeout=HELD_FOREVER).status_code == 200


def test_a_trickled_head_is_cut_off_while_others_are_served(serve):
    server = serve()
    answered = 0

    def others_are_served() -> None:
        nonlocal answered
        _healthy(server)
        answered += 1

    with _connect(server) as slow:
        slow.sendall(HEAD + b"X-Slow: ")
        received = _trickle(slow, between=others_are_served)
    # A reset may swallow the 408 (a byte in flight as the server closes); if anything came, it is that.
    assert received == b"" or received.startswith(b"HTTP/1.1 408 ")
    assert answered >= 1
    _healthy(server)


def test_a_stalled_head_gets_408_then_the_connection_closes(serve):
    server = serve()
    with _connect(server) as stalled:
        stalled.sendall(HEAD + b"X-Half: a")
        received = _until_closed(stalled)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in received.lower()


def test_many_trickling_connections_are_all_closed_and_the_service_still_answers(serve):
    server = serve()
    with contextlib.ExitStack() as stack:
        open_ = [stack.enter_context(_connect(server)) for _ in range(50)]
        for sock in open_:
            sock.sendall(HEAD + b"X-Slow: ")
        deadline = time.monotonic() + HELD_FOREVER
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} of 50 trickling connections held"
            for sock in list(open_):
                try:
                    sock.send(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    open_.remove(sock)
            _healthy(server)
            readable, _, _ = select.select(open_, [], [], PACE)
            for sock in readable:
                try:
                    closed = sock.recv(65536) == b""  # else the 408: the close follows
                except ConnectionResetError:
                    closed = True
                if closed:
                    open_.remove(sock)
    _healthy(server)


@pytest.fixture
async def endpoint(runtime, tenant, settings) -> str:
    """A callback's URI path (pending verification: its webhooks are read, then refused with 403)."""
    key = secrets.token_urlsafe(16)
    async with runtime.db.sessions() as session:
        session.add(
            Callback(
                id=secrets.token_hex(8),
                tenant_id=tenant.id,
                event="invoice",
                endpoint_key=key,
                uri=f"{settings.webhook_base_url}{key}",
            )
        )
        await session.commit()
    return f"/webhooks/freshbooks/{key}"


def _webhook_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: service\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_trickled_body_gets_408_and_the_connection_closes(serve, endpoint):
    server = serve()
    with _connect(server) as prompt:  # the same request, sent whole, is read and answered as usual
        body = b"name=invoice.update&object_id=1"
        prompt.sendall(_webhook_head(endpoint, len(body)) + body)
        status, _, answer = _response(prompt)
        assert (status, b"callback_not_verified" in answer) == (403, True)

    with _connect(server) as stalled:
        stalled.sendall(_webhook_head(endpoint, 1000) + b"name=invoice.update")
        assert _until_closed(stalled).startswith(b"HTTP/1.1 408 Request Timeout\r\n")

    with _connect(server) as trickling:
        trickling.sendall(_webhook_head(endpoint, 5000) + b"name=")
        received = _trickle(trickling)
    assert received == b"" or received.startswith(b"HTTP/1.1 408 ")
    _healthy(server)


def test_an_idle_keep_alive_connection_is_closed(serve):
    server = serve()
    with _connect(server) as idle:
        idle.sendall(HEAD + b"\r\n")
        assert _response(idle)[0] == 200
        assert _until_closed(idle) == b""  # idle between requests: closed without a word

    with _connect(server) as slow_second:  # the keep-alive timer alone stops at the next byte
        slow_second.sendall(HEAD + b"\r\n")
        assert _response(slow_second)[0] == 200
        slow_second.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert _until_closed(slow_second).startswith(b"HTTP/1.1 408 ")


def test_beyond_the_connection_cap_a_request_gets_503(serve):
    # A long header deadline: the connections holding the cap must not time out during the test.
    server = serve(http_max_connections=2, http_header_timeout=60.0)
    with _connect(server) as first, _connect(server) as second:
        for held in (first, second):  # both served at once: the cap is 2, not 1
            held.sendall(HEAD + b"\r\n")
            assert _response(held)[0] == 200
            held.sendall(b"GET /healthz HTTP/1.1\r\n")  # and kept open, a request under way
        with _connect(server) as third:
            third.sendall(HEAD + b"\r\n")
            received = _until_closed(third)
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close" in received.lower()


def test_an_oversized_head_is_refused(serve, implementation):
    server = serve()
    with _connect(server) as big:
        big.sendall(HEAD + b"X-Big: " + b"a" * (MAX_HEAD_BYTES + 4096))
        received = _until_closed(big)
    # httptools has no bound of its own (the service's is 431); h11 refuses with uvicorn's 400.
    expected = b"HTTP/1.1 431 " if implementation == "httptools" else b"HTTP/1.1 400 "
    assert received.startswith(expected)
    _healthy(server)


def test_the_configuration_follows_the_settings(settings):
    app = create_app(settings)
    config = build_config(settings.model_copy(update={"http_max_connections": 7}), app, port=0)
    assert config.limit_concurrency == 8  # uvicorn counts the asking connection: 8 serves 7
    assert config.http is protocol_class("httptools")
    assert (config.header_timeout, config.body_timeout) == (10.0, 10.0)
    assert (config.port, config.ws, config.access_log, config.log_config) == (0, "none", False, None)
