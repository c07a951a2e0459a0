"""The inbound benchmarks' baselines: a bare Starlette endpoint at the service's webhook path, and
the same endpoint made durable.

Bare, it does what any handler of a FreshBooks webhook must do and nothing else: read the form body,
parse it, answer 200 with a small JSON document. No database, no signature check, no middleware.

With ``--durable PATH --verifier V`` it also does the least a *durable* receiver must: it checks
the ``X-FreshBooks-Hmac-SHA256`` signature (FreshBooks' scheme, the service's own function) and
answers only once the webhook is a committed row of a SQLite file (WAL, ``synchronous=FULL``, as
the service opens it), written in group commits: the requests that arrive while one commit is on
its thread share the next. The table has an index on (callback, body hash, arrival), the key the
service finds redeliveries by. No duplicate lookup, no log line, no request id, no metrics: the
floor a durable receiver on this stack (Python, Starlette, uvicorn, ``sqlite3``) stands on, so the
distance between the service and the bare endpoint splits into what durability costs and what the
service's own work does.

Both are served exactly as ``webhook-service serve`` serves the real app (``uvicorn.run`` with
``log_config=None``, ``access_log=False``, ``proxy_headers=True``, uvicorn's default loop and HTTP
implementation), so the difference is the service's own work.

    .venv/bin/python tests/benchmarks/bare_app.py --port 9100
    .venv/bin/python tests/benchmarks/bare_app.py --port 9100 --durable /tmp/floor.db --verifier V
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl

from floor_deliverer import GroupCommit, open_durable  # a sibling: the script's directory is on sys.path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhook_service.freshbooks.signature import verify_signature

_ids = itertools.count(1)

Handler = Callable[[Request], Awaitable[JSONResponse]]


def _fields(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


async def receive(request: Request) -> JSONResponse:
    fields = _fields(await request.body())
    if not fields.get("name"):
        return JSONResponse({"error": "malformed_body"}, status_code=400)
    return JSONResponse({"status": "accepted", "id": next(_ids)})


INBOX = (  # the inbox row and the index on the key the service finds redeliveries by
    "CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY, callback TEXT, body TEXT, body_hash TEXT, "
    "received_at REAL)",
    "CREATE INDEX IF NOT EXISTS inbox_dedupe ON inbox (callback, body_hash, received_at)",
)


def durable(path: str, verifier: str) -> Handler:
    db = open_durable(path)
    for statement in INBOX:
        db.execute(statement)

    def write(rows: list[tuple[object, ...]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO inbox (callback, body, body_hash, received_at) VALUES (?, ?, ?, ?)", rows)
        db.execute("COMMIT")

    commits = GroupCommit(ThreadPoolExecutor(1), write)

    async def receive_durably(request: Request) -> JSONResponse:
        body = await request.body()
        fields = _fields(body)
        if not fields.get("name"):
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        if not verify_signature(verifier, fields, request.headers.get("x-freshbooks-hmac-sha256", "")):
            return JSONResponse({"error": "bad_signature"}, status_code=401)
        key = request.path_params["endpoint_key"]
        await commits.add((key, body.decode("utf-8"), hashlib.sha256(body).hexdigest(), time.time()))
        return JSONResponse({"status": "accepted", "id": next(_ids)})

    return receive_durably


def app(handler: Handler = receive) -> Starlette:
    return Starlette(routes=[Route("/webhooks/freshbooks/{endpoint_key}", handler, methods=["POST"])])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--durable", metavar="PATH", help="commit each webhook to this SQLite file before answering")
    parser.add_argument("--verifier", help="with --durable: the callback's verifier the bodies are signed with")
    args = parser.parse_args()
    if args.durable and not args.verifier:
        parser.error("--durable needs --verifier")
    handler = durable(args.durable, args.verifier) if args.durable else receive
    uvicorn.run(app(handler), host=args.host, port=args.port, log_config=None, access_log=False, proxy_headers=True)


if __name__ == "__main__":
    main()
