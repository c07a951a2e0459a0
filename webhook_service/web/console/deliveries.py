"""Deliveries: filtered lists that refresh themselves, each delivery's attempts as a timeline,
replaying one, and recovering every failed or dead delivery of a subscription since a time.

The same functions as ``POST /admin/v1/deliveries/{id}/replay`` and ``/deliveries/recover``
(:mod:`webhook_service.delivery.replay`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_service.delivery import replay, subscriptions
from webhook_service.runtime import Runtime
from webhook_service.storage.deliveries import DUE
from webhook_service.storage.models import DeliveryStatus
from webhook_service.web.console.pages import PAGE_SIZE, cursor, log, one_page, page, refuse, render
from webhook_service.web.console.security import PATH, Session
from webhook_service.web.views import delivery_view

REFRESH_SECONDS = 10
STATUSES = [status.value for status in DeliveryStatus]


@page
async def listing(request: Request, runtime: Runtime, session: Session) -> Response:
    params = request.query_params
    status = params.get("status") if params.get("status") in STATUSES else None
    subscription_id = params.get("subscription_id") or None
    rows = await replay.list_deliveries(
        runtime,
        status=status,
        subscription_id=subscription_id,
        limit=PAGE_SIZE + 1,
        before=cursor(params.get("before")),
    )
    shown, before = one_page(rows)
    kept = {"status": status or "", "subscription_id": subscription_id or ""}
    following = urlencode({**kept, "before": before}) if before else None
    context = {
        "deliveries": [delivery_view(delivery) for delivery in shown],
        "subscriptions": [(s.id, s.url) for s in await subscriptions.list_all(runtime)],
        "statuses": STATUSES,
        "status": status or "",
        "subscription_id": subscription_id or "",
        "next": following,
        "refresh": REFRESH_SECONDS,
        "recovered": params.get("recovered"),
        "current": "deliveries",
    }
    return render(request, "deliveries.html", context, session=session)


@page
async def detail(request: Request, runtime: Runtime, session: Session) -> Response:
    delivery_id = request.path_params["delivery_id"]
    try:
        delivery, attempts = await replay.get_with_attempts(runtime, delivery_id)
    except replay.DeliveryNotFound:
        return refuse(request, session, "There is no such delivery.", 404)
    context = {
        "delivery": delivery_view(delivery, attempts),
        "replayed": request.query_params.get("replayed") == "1",
        "refresh": REFRESH_SECONDS if delivery.status in DUE else None,
        "current": "deliveries",
    }
    return render(request, "delivery.html", context, session=session)


@page
async def replay_one(request: Request, runtime: Runtime, session: Session) -> Response:
    delivery_id = request.path_params["delivery_id"]
    try:
        await replay.replay(runtime, delivery_id)
    except replay.DeliveryNotFound:
        return refuse(request, session, "There is no such delivery.", 404)
    except replay.ReplayError as exc:
        return refuse(request, session, str(exc), 409)
    log.info("console_delivery_replayed", delivery_id=delivery_id)
    return RedirectResponse(f"{PATH}/deliveries/{delivery_id}?replayed=1", status_code=303)


@page
async def recover(request: Request, runtime: Runtime, session: Session) -> Response:
    form = request.state.form
    subscription_id = str(form.get("subscription_id", ""))
    try:
        since = datetime.fromisoformat(str(form.get("since", ""))).replace(tzinfo=UTC)
    except ValueError:
        message = "Give the time to recover from as a date and time (UTC)."
        return refuse(request, session, message, 422)
    try:
        recovered = await replay.recover(runtime, subscription_id, since)
    except replay.DeliveryNotFound:
        return refuse(request, session, "There is no such subscription.", 404)
    except replay.ReplayError as exc:
        return refuse(request, session, str(exc), 409)
    log.info("console_deliveries_recovered", subscription_id=subscription_id, count=len(recovered))
    query = urlencode({"subscription_id": subscription_id, "recovered": len(recovered)})
    return RedirectResponse(f"{PATH}/deliveries?{query}", status_code=303)
