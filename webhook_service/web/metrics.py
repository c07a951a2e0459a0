"""``GET /metrics`` in the Prometheus text format (prometheus-client's default registry)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
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
    return Response(
        generate_latest(_registry(runtime.settings.prometheus_multiproc_dir)), media_type=CONTENT_TYPE_LATEST
    )


def _registry(multiproc_dir: str) -> CollectorRegistry:
    """This process's metrics; under ``serve --workers`` (``PROMETHEUS_MULTIPROC_DIR``, set by the
    supervisor) every process's, from the files prometheus-client's multiprocess mode keeps."""
    if not multiproc_dir:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)
    return registry


routes = [Route("/metrics", metrics, methods=["GET"])]
