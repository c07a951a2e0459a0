"""Liveness and readiness."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhook_service.runtime import Runtime
from webhook_service.storage import migrate


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        async with runtime.db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        pending = await migrate.pending_revisions(runtime.db)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    if pending:
        return JSONResponse({"status": "unavailable", "pending_migrations": pending}, status_code=503)
    return JSONResponse({"status": "ok"})


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
