"""Liveness and readiness.

``/healthz`` touches nothing but the event loop: it answers as long as the process serves. ``/readyz``
says whether this process can do its job: the database answers, its schema is current, and a write
commits within a couple of seconds (a full disk reads fine and fails every write). Each failure
is named: ``busy`` (locked by another process, or no connection free), ``full``, ``error``.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import Route

from webhook_service.runtime import Runtime
from webhook_service.storage import migrate, probes
from webhook_service.storage.database import unavailable
from webhook_service.web.responses import JSONResponse

PROBE_SECONDS = 2.0


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await probes.ping(runtime.db)
            pending = await migrate.pending_revisions(runtime.db)
        if not pending:
            await runtime.db.probe_write(PROBE_SECONDS)
    except Exception as exc:
        reason = unavailable(exc)
        body = {"status": "unavailable", "database": reason or type(exc).__name__}
        if reason is not None:
            body["writes"] = reason
        return JSONResponse(body, status_code=503)
    if pending:
        return JSONResponse({"status": "unavailable", "pending_migrations": pending}, status_code=503)
    return JSONResponse({"status": "ok"})


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
