"""Subscriptions: list, create, edit, rotate the secret, enable, disable, delete.

The forms are read into the admin API's own models (:mod:`webhook_service.web.schemas`) and handed
to the same functions (:mod:`webhook_service.delivery.subscriptions`), so a subscription made here
is checked exactly as one made through the API or the CLI. A new or rotated secret is shown once,
on the page that answers the POST (never in a URL, and the page is not cached).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_service.delivery import subscriptions
from webhook_service.runtime import Runtime
from webhook_service.storage import subscriptions as subscription_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.web import schemas
from webhook_service.web.console.pages import PAGE_SIZE, cursor, log, one_page, page, refuse, render
from webhook_service.web.console.security import PATH, Session
from webhook_service.web.views import subscription_view


@page
async def listing(request: Request, runtime: Runtime, session: Session) -> Response:
    async with runtime.db.sessions() as db:
        rows = await subscription_store.list_page(
            db, after=cursor(request.query_params.get("after")), limit=PAGE_SIZE + 1
        )
    shown, following = one_page(rows)
    context = {"subscriptions": [subscription_view(s) for s in shown], "next": following, "current": "subscriptions"}
    return render(request, "subscriptions.html", context, session=session)


@page
async def new(request: Request, runtime: Runtime, session: Session) -> Response:
    return await _form(request, runtime, session, None, {"event_types": "*"})


@page
async def create(request: Request, runtime: Runtime, session: Session) -> Response:
    form: FormData = request.state.form
    try:
        body = _read(form, schemas.SubscriptionCreate, editing=False)
        created = await subscriptions.create(runtime, body.model_dump(exclude_unset=True))
    except (ValidationError, ValueError, subscriptions.SubscriptionError) as exc:
        return await _form(request, runtime, session, None, dict(form), problem=_problem(exc), status=422)
    log.info("console_subscription_created", subscription_id=created.subscription.id)
    view = subscription_view(created.subscription, created.secret)
    return render(request, "secret.html", {"subscription": view, "created": True}, session=session)


@page
async def detail(request: Request, runtime: Runtime, session: Session) -> Response:
    subscription = await _found(runtime, request.path_params["subscription_id"])
    if subscription is None:
        return _missing(request, session)
    return await _form(request, runtime, session, subscription_view(subscription), None)


@page
async def update(request: Request, runtime: Runtime, session: Session) -> Response:
    subscription_id = request.path_params["subscription_id"]
    form: FormData = request.state.form
    try:
        body = _read(form, schemas.SubscriptionUpdate, editing=True)
        await subscriptions.modify(runtime, subscription_id, body.model_dump(exclude_unset=True))
    except subscriptions.SubscriptionNotFound:
        return _missing(request, session)
    except (ValidationError, ValueError, subscriptions.SubscriptionError) as exc:
        current = await _found(runtime, subscription_id)
        if current is None:
            return _missing(request, session)
        shown = subscription_view(current)
        return await _form(request, runtime, session, shown, dict(form), problem=_problem(exc), status=422)
    log.info("console_subscription_updated", subscription_id=subscription_id)
    return RedirectResponse(f"{PATH}/subscriptions/{subscription_id}?saved=1", status_code=303)


@page
async def switch(request: Request, runtime: Runtime, session: Session) -> Response:
    """Enable or disable (the button says which)."""
    subscription_id = request.path_params["subscription_id"]
    enabled = request.state.form.get("enabled") == "true"
    try:
        await subscriptions.modify(runtime, subscription_id, {"enabled": enabled})
    except subscriptions.SubscriptionNotFound:
        return _missing(request, session)
    log.info("console_subscription_switched", subscription_id=subscription_id, enabled=enabled)
    return RedirectResponse(f"{PATH}/subscriptions/{subscription_id}", status_code=303)


@page
async def rotate(request: Request, runtime: Runtime, session: Session) -> Response:
    subscription_id = request.path_params["subscription_id"]
    try:
        rotated = await subscriptions.rotate_secret(runtime, subscription_id)
    except subscriptions.SubscriptionNotFound:
        return _missing(request, session)
    log.info("console_subscription_secret_rotated", subscription_id=subscription_id)
    view = subscription_view(rotated.subscription, rotated.secret)
    return render(request, "secret.html", {"subscription": view, "created": False}, session=session)


@page
async def confirm_delete(request: Request, runtime: Runtime, session: Session) -> Response:
    subscription = await _found(runtime, request.path_params["subscription_id"])
    if subscription is None:
        return _missing(request, session)
    context = {"subscription": subscription_view(subscription), "current": "subscriptions"}
    return render(request, "subscription_delete.html", context, session=session)


@page
async def delete(request: Request, runtime: Runtime, session: Session) -> Response:
    subscription_id = request.path_params["subscription_id"]
    try:
        await subscriptions.remove(runtime, subscription_id)
    except subscriptions.SubscriptionNotFound:
        return _missing(request, session)
    log.info("console_subscription_deleted", subscription_id=subscription_id)
    return RedirectResponse(f"{PATH}/subscriptions", status_code=303)


# --- the form ------------------------------------------------------------------------------------


async def _form(
    request: Request,
    runtime: Runtime,
    session: Session,
    subscription: dict[str, Any] | None,
    entered: dict[str, Any] | None,
    *,
    problem: str | None = None,
    status: int = 200,
) -> Response:
    """The create form (``subscription`` None) or a subscription's page with its edit form; the
    fields show what was entered when a POST was refused, else the subscription's values."""
    async with runtime.db.sessions() as db:
        tenants = await tenant_store.list_all(db)
    values = entered if entered is not None else _values(subscription or {})
    context = {
        "subscription": subscription,
        "values": values,
        "tenants": [(t.id, t.name or t.id) for t in tenants],
        "problem": problem,
        "saved": request.query_params.get("saved") == "1",
        "current": "subscriptions",
    }
    return render(request, "subscription.html", context, status=status, session=session)


def _values(view: dict[str, Any]) -> dict[str, Any]:
    """A subscription's fields as the form's inputs hold them."""
    return {
        "url": view.get("url", ""),
        "description": view.get("description", ""),
        "event_types": ", ".join(view.get("event_types", ["*"])),
        "tenant_id": view.get("tenant_id") or "",
        "rate_limit_per_second": "" if view.get("rate_limit_per_second") is None else view["rate_limit_per_second"],
        "filter": "" if view.get("filter") is None else json.dumps(view["filter"], indent=2),
        "strict_order": "on" if view.get("strict_order") else "",
    }


def _read(form: FormData, model: Any, *, editing: bool) -> Any:
    """The form as ``model``: the same checks as the admin API's body."""
    values: dict[str, Any] = {
        "url": str(form.get("url", "")).strip(),
        "description": str(form.get("description", "")),
        "event_types": [part for part in str(form.get("event_types", "")).replace(",", " ").split() if part] or ["*"],
        "tenant_id": str(form.get("tenant_id", "")) or None,
        "strict_order": form.get("strict_order") == "on",
    }
    limit = str(form.get("rate_limit_per_second", "")).strip()
    values["rate_limit_per_second"] = int(limit) if limit.isdigit() else (limit or None)
    written = str(form.get("filter", "")).strip()
    try:
        values["filter"] = json.loads(written) if written else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"The filter is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    return model.model_validate(values)


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'the form'}: {error['msg']}" for error in exc.errors()
        )
    return str(exc)


async def _found(runtime: Runtime, subscription_id: str) -> Any:
    try:
        return await subscriptions.get(runtime, subscription_id)
    except subscriptions.SubscriptionNotFound:
        return None


def _missing(request: Request, session: Session) -> Response:
    return refuse(request, session, "There is no such subscription.", 404)
