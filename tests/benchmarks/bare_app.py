"""The inbound benchmark's baseline: a bare Starlette endpoint at the service's webhook path.

It does what any handler of a FreshBooks webhook must do and nothing else: read the form body,
parse it, answer 200 with a small JSON document. No database, no signature check, no middleware.
It is served exactly as ``webhook-service serve`` serves the real app (``uvicorn.run`` with
``log_config=None``, ``access_log=False``, ``proxy_headers=True``, uvicorn's default loop and HTTP
implementation), so the difference between the two is the service's own work.

    .venv/bin/python tests/benchmarks/bare_app.py --port 9100
"""

from __future__ import annotations

import argparse
import itertools
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_ids = itertools.count(1)


async def receive(request: Request) -> JSONResponse:
    fields = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
    if not fields.get("name"):
        return JSONResponse({"error": "malformed_body"}, status_code=400)
    return JSONResponse({"status": "accepted", "id": next(_ids)})


app = Starlette(routes=[Route("/webhooks/freshbooks/{endpoint_key}", receive, methods=["POST"])])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, proxy_headers=True)


if __name__ == "__main__":
    main()
