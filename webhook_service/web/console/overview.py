"""The overview: is everything flowing, and what is stuck? It refreshes itself."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from webhook_service.runtime import Runtime
from webhook_service.storage import overview as overview_store
from webhook_service.storage.columns import utcnow
from webhook_service.web.console.pages import page, render
from webhook_service.web.console.security import Session
from webhook_service.web.views import tenant_view

REFRESH_SECONDS = 15


@dataclass(frozen=True)
class Bar:
    x: float
    received: float
    delivered: float
    label: str
    received_count: int
    delivered_count: int


CHART_WIDTH, CHART_HEIGHT = 720, 160


def chart(view: overview_store.Overview) -> list[Bar]:
    """The chart's bars, scaled to its box: events received and deliveries made, per hour."""
    top = max([1, *view.received, *view.delivered])
    step = CHART_WIDTH / max(1, len(view.bucket_starts))
    return [
        Bar(
            x=round(n * step, 1),
            received=round(CHART_HEIGHT * received / top, 1),
            delivered=round(CHART_HEIGHT * delivered / top, 1),
            label=start.strftime("%H:00"),
            received_count=received,
            delivered_count=delivered,
        )
        for n, (start, received, delivered) in enumerate(
            zip(view.bucket_starts, view.received, view.delivered, strict=True)
        )
    ]


@page
async def show(request: Request, runtime: Runtime, session: Session) -> Response:
    async with runtime.db.sessions() as db:
        view = await overview_store.read(db, utcnow())
    context = {
        "view": view,
        "waiting": [tenant_view(tenant) for tenant in view.waiting],
        "bars": chart(view),
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT},
        "refresh": REFRESH_SECONDS,
        "current": "overview",
    }
    return render(request, "overview.html", context, session=session)
