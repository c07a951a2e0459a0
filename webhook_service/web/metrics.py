"""``GET /metrics`` in the Prometheus text format (prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.core.metrics import BACKLOG
from webhook_service.runtime import Runtime
from webhook_service.storage.columns import utcnow
from webhook_service.storage.deliveries import backlog


async def metrics(request: Request) -> Response:
    """The queue depths are read from the database now, so they are right whichever replica answers."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.db.sessions() as session:
        inbox, deliveries = await backlog(session, utcnow())
    BACKLOG.labels(queue="inbox").set(inbox)
    BACKLOG.labels(queue="deliveries").set(deliveries)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
