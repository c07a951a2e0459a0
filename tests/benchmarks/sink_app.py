"""A minimal subscriber for the benchmarks: answers every POST with 200 and an empty body.

It is a bare ASGI callable (no framework routing or middleware) so that the sink costs as little
as possible and the benchmark measures the service, not the sink. Every POST is recorded as
``(arrival time.time(), webhook-id header or "")``; the arrival time is taken when the request
reaches the app, before its body is read.

Routes:

* ``POST <any path>``  → 200, empty body; recorded.
* ``GET /stats``       → ``{"count": N, "arrivals": [[time, webhook_id], ...]}``
* ``GET /count``       → ``{"count": N}`` (cheap, for polling)
* ``POST /_reset``     → forget everything recorded so far (not recorded itself).

Run it in its own process::

    .venv/bin/python tests/benchmarks/sink_app.py --port 9000
    # or, from the repository root:
    .venv/bin/python -m uvicorn tests.benchmarks.sink_app:app --port 9000 --log-level warning --no-access-log
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EMPTY_OK_HEADERS = [(b"content-length", b"0")]


class RecordingSink:
    """The ASGI app; ``arrivals`` holds what was received, in arrival order."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan="off"; nothing else to handle
            return
        arrived = time.time()
        await _drain_body(receive)
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/stats":
            await _send_json(send, {"count": len(self.arrivals), "arrivals": self.arrivals})
        elif method == "GET" and path == "/count":
            await _send_json(send, {"count": len(self.arrivals)})
        elif method == "POST" and path == "/_reset":
            self.arrivals = []
            await _send_json(send, {"count": 0})
        else:
            self.arrivals.append((arrived, _header(scope, b"webhook-id")))
            await send({"type": "http.response.start", "status": 200, "headers": EMPTY_OK_HEADERS})
            await send({"type": "http.response.body", "body": b""})


async def _drain_body(receive: Receive) -> None:
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:  # ASGI servers hand over lower-cased header names
            return str(value.decode("latin-1"))
    return ""


async def _send_json(send: Send, value: Any) -> None:
    body = json.dumps(value).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = RecordingSink()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
