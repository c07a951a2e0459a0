"""The admin HTTP API under ``/admin/v1``: subscriptions, read-only views, delivery replay.

Every route but the OpenAPI document needs ``Authorization: Bearer <ADMIN_TOKEN>`` (compared in
constant time); without ``ADMIN_TOKEN`` the API is disabled and answers 503. Handlers are thin:
they parse the request with the helpers below, call the package function and return a view from
:mod:`webhook_service.web.views`, so no token, verifier or secret leaves here, except a subscription's
new secret in the answers to create and rotate-secret. Every refusal is an :func:`error_response`,
and no input leads to a 500. :mod:`webhook_service.web.admin_openapi` documents all of it.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
from collections.abc import Awaitable, Callable
from datetime import MAXYEAR, UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook_service.core.logs import get_logger
from webhook_service.delivery import replay, subscriptions
from webhook_service.inbound.receiver import Refusal
from webhook_service.runtime import Runtime
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import events as event_store
from webhook_service.storage import inbox as inbox_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import DeliveryStatus, Event, InboxStatus
from webhook_service.web.admin_openapi import (
    DEFAULT_LIMIT,
    MAX_BODY_BYTES,
    MAX_GRACE_HOURS,
    MAX_LIMIT,
    PREFIX,
    build_document,
)
from webhook_service.web.errors import error_response
from webhook_service.web.views import (
    callback_view,
    delivery_view,
    event_view,
    inbox_view,
    subscription_view,
    tenant_view,
)
from webhook_service.web.webhooks import _read_capped

log = get_logger("webhook_service.admin")

Handler = Callable[[Request], Awaitable[Response]]
DOCUMENT = build_document(PREFIX)


class AdminError(Exception):
    """A refusal raised by the parsing helpers: the status, error slug and message for the client."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


# --- request parsing ---------------------------------------------------------------------------


async def read_json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read with a cap (413); ``optional``: an empty body is ``{}``."""
    try:
        body = await _read_capped(request, MAX_BODY_BYTES)
    except Refusal as refusal:
        raise AdminError(refusal.status, refusal.reason, refusal.message) from refusal
    if optional and not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge numbers, deep nesting
        raise AdminError(400, "bad_json", "The body is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise AdminError(400, "bad_json", "The body must be a JSON object.")
    if not _storable(value):
        raise AdminError(422, "invalid_text", "Strings must not contain NUL characters or unpaired surrogates.")
    return value


def parse_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _SMALL_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise AdminError(422, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}.")
    return int(raw)


def parse_choice(request: Request, name: str, choices: type[StrEnum]) -> str | None:
    """An optional query parameter that must be one of ``choices``."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    allowed = [choice.value for choice in choices]
    if raw not in allowed:
        raise AdminError(422, f"invalid_{name}", f"{name} must be one of: {', '.join(allowed)}.")
    return raw


def text_query(request: Request, name: str) -> str | None:
    """An optional free-text filter; NUL cannot be stored, so a filter holding one is refused."""
    raw = request.query_params.get(name)
    if raw is not None and "\x00" in raw:
        raise AdminError(422, f"invalid_{name}", f"{name} must not contain NUL characters.")
    return raw


def parse_time(value: object, name: str) -> datetime:
    """An RFC 3339 / ISO 8601 time with an offset or ``Z``, as an aware UTC datetime.

    A time without an offset is refused: guessing its zone would silently shift the window.
    """
    problem = f"{name} must be an ISO 8601 time with an offset, like 2026-01-31T09:30:00Z or ...+01:00."
    if not isinstance(value, str) or (match := _RFC3339.fullmatch(value)) is None:
        raise AdminError(422, f"invalid_{name}", problem)
    text, leap = value.upper(), match["second"] == "60"
    if leap:  # 23:59:60 is the second after 23:59:59
        text = text[: match.start("second")] + "59" + text[match.end("second") :]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:  # no such date, or an offset of 24 hours or more
        raise AdminError(422, f"invalid_{name}", problem) from exc
    try:
        return (moment + timedelta(seconds=int(leap))).astimezone(UTC)
    except OverflowError:  # within a day of the ends of the calendar: as early or as late as can be
        return (datetime.max if moment.year == MAXYEAR else datetime.min).replace(tzinfo=UTC)


def path_id(request: Request, name: str) -> str:
    """A path id; one holding NUL cannot exist (and cannot be queried on PostgreSQL)."""
    value: str = request.path_params[name]
    if "\x00" in value:
        raise AdminError(404, "not_found", f"No record with id {value!r}.")
    return value


_SMALL_NUMBER = re.compile(r"0*[0-9]{1,5}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:(?P<second>\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: object) -> bool:
    """No string in ``value`` (keys included) holds NUL or an unpaired surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def _subscription_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The body for ``delivery.subscriptions``: JSON Schema counts 5.0 as an integer, so this API does too."""
    limit = body.get("rate_limit_per_second")
    if isinstance(limit, float) and limit.is_integer():
        return {**body, "rate_limit_per_second": int(limit)}
    return body


def _grace(body: dict[str, Any]) -> timedelta | None:
    unknown = set(body) - {"grace_hours"}
    if unknown:
        raise AdminError(422, "invalid_request", f"unknown fields: {', '.join(sorted(unknown))}")
    if "grace_hours" not in body:
        return None
    hours = body["grace_hours"]
    if (
        isinstance(hours, bool)
        or not isinstance(hours, int | float)
        or not math.isfinite(hours)
        or not 0 <= hours <= MAX_GRACE_HOURS
    ):
        raise AdminError(422, "invalid_grace_hours", f"grace_hours must be a number from 0 to {MAX_GRACE_HOURS:g}.")
    return timedelta(hours=hours)


def _recover_request(body: dict[str, Any]) -> tuple[str, datetime]:
    unknown = set(body) - {"subscription_id", "since"}
    if unknown:
        raise AdminError(422, "invalid_request", f"unknown fields: {', '.join(sorted(unknown))}")
    subscription_id = body.get("subscription_id")
    if not isinstance(subscription_id, str):
        raise AdminError(422, "invalid_subscription_id", "subscription_id must be a string.")
    return subscription_id, parse_time(body.get("since"), "since")


# --- authentication and error mapping ----------------------------------------------------------


def _refusal(request: Request) -> Response | None:
    """503 while ADMIN_TOKEN is unset, 401 unless the bearer token matches; None to go on."""
    expected = _runtime(request).settings.admin_token
    where = {"method": request.method, "path": request.url.path[:120]}
    if expected is None or not expected.get_secret_value():
        log.warning("admin_refused", reason="admin_disabled", **where)
        return error_response(request, 503, "admin_disabled", "set ADMIN_TOKEN to enable the admin API")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        return None
    log.warning("admin_refused", reason="wrong_credentials" if presented else "missing_credentials", **where)
    response = error_response(request, 401, "unauthorized", "Send Authorization: Bearer <ADMIN_TOKEN>.")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _admin(handler: Handler, query: frozenset[str] = frozenset()) -> Handler:
    """Authenticate, then run ``handler``, turning the package's refusals into error responses.

    ``query``: the query parameters the operation documents. Any other one is refused (422) rather
    than ignored, so a misspelt filter (``?staus=dead``) cannot silently list every row.
    """

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        refused = _refusal(request)
        if refused is not None:
            return refused
        unknown = sorted(set(request.query_params) - query)
        if unknown:
            names = ", ".join(repr(name[:40]) for name in unknown[:5])
            return error_response(request, 422, "unknown_query_parameter", f"Unknown query parameters: {names}.")
        try:
            return await handler(request)
        except AdminError as exc:
            return error_response(request, exc.status, exc.error, exc.message)
        except subscriptions.SubscriptionError as exc:
            return error_response(request, 422, "invalid_subscription", str(exc))
        except subscriptions.SubscriptionNotFound as exc:
            return error_response(request, 404, "not_found", f"No subscription {exc}.")
        except replay.DeliveryNotFound as exc:  # a delivery's or, for recover, a subscription's id
            return error_response(request, 404, "not_found", f"No record with id {exc}.")
        except replay.ReplayError as exc:
            return error_response(request, 409, "not_replayable", str(exc))

    return guarded


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _data(rows: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"data": rows})


def _not_found(kind: str, record_id: str) -> AdminError:
    return AdminError(404, "not_found", f"No {kind} {record_id}.")


# --- handlers ----------------------------------------------------------------------------------


async def openapi_document(request: Request) -> Response:
    return JSONResponse(DOCUMENT)


async def list_subscriptions(request: Request) -> Response:
    return _data([subscription_view(s) for s in await subscriptions.list_all(_runtime(request))])


async def create_subscription(request: Request) -> Response:
    body = _subscription_fields(await read_json_object(request))
    created = await subscriptions.create(_runtime(request), body)
    log.info("admin_subscription_created", subscription_id=created.subscription.id)
    return JSONResponse({**subscription_view(created.subscription), "secret": created.secret}, status_code=201)


async def get_subscription(request: Request) -> Response:
    subscription = await subscriptions.get(_runtime(request), path_id(request, "subscription_id"))
    return JSONResponse(subscription_view(subscription))


async def update_subscription(request: Request) -> Response:
    subscription_id = path_id(request, "subscription_id")
    body = _subscription_fields(await read_json_object(request))
    subscription = await subscriptions.modify(_runtime(request), subscription_id, body)
    log.info("admin_subscription_updated", subscription_id=subscription_id, fields=sorted(body))
    return JSONResponse(subscription_view(subscription))


async def delete_subscription(request: Request) -> Response:
    subscription_id = path_id(request, "subscription_id")
    await subscriptions.remove(_runtime(request), subscription_id)
    log.info("admin_subscription_deleted", subscription_id=subscription_id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    subscription_id = path_id(request, "subscription_id")
    grace = _grace(await read_json_object(request, optional=True))
    rotated = await subscriptions.rotate_secret(_runtime(request), subscription_id, grace)
    log.info("admin_subscription_secret_rotated", subscription_id=subscription_id)
    return JSONResponse({**subscription_view(rotated.subscription), "secret": rotated.secret})


async def list_tenants(request: Request) -> Response:
    async with _runtime(request).db.sessions() as session:
        tenants = await tenant_store.list_all(session)
    return _data([tenant_view(t) for t in tenants])


async def get_tenant(request: Request) -> Response:
    tenant_id = path_id(request, "tenant_id")
    async with _runtime(request).db.sessions() as session:
        tenant = await tenant_store.get(session, tenant_id)
    if tenant is None:
        raise _not_found("tenant", tenant_id)
    return JSONResponse(tenant_view(tenant))


async def list_callbacks(request: Request) -> Response:
    tenant_id = text_query(request, "tenant_id")
    async with _runtime(request).db.sessions() as session:
        callbacks = await callback_store.list_all(session, tenant_id=tenant_id)
    return _data([callback_view(c) for c in callbacks])


async def list_inbox_events(request: Request) -> Response:
    tenant_id, status = text_query(request, "tenant_id"), parse_choice(request, "status", InboxStatus)
    limit = parse_limit(request)
    async with _runtime(request).db.sessions() as session:
        events = await inbox_store.list_events(session, tenant_id=tenant_id, status=status, limit=limit)
    return _data([inbox_view(e) for e in events])


async def list_events(request: Request) -> Response:
    tenant_id, event_type = text_query(request, "tenant_id"), text_query(request, "type")
    async with _runtime(request).db.sessions() as session:
        events = await event_store.list_events(
            session, tenant_id=tenant_id, event_type=event_type, limit=parse_limit(request)
        )
    return _data([event_view(e, with_payload=False) for e in events])


async def get_event(request: Request) -> Response:
    event_id = path_id(request, "event_id")
    async with _runtime(request).db.sessions() as session:
        event = await session.get(Event, event_id)
    if event is None:
        raise _not_found("event", event_id)
    return JSONResponse(event_view(event))


async def list_deliveries(request: Request) -> Response:
    deliveries = await replay.list_deliveries(
        _runtime(request),
        status=parse_choice(request, "status", DeliveryStatus),
        subscription_id=text_query(request, "subscription_id"),
        event_id=text_query(request, "event_id"),
        limit=parse_limit(request),
    )
    return _data([delivery_view(d) for d in deliveries])


async def get_delivery(request: Request) -> Response:
    delivery_id = path_id(request, "delivery_id")
    try:
        delivery, attempts = await replay.get_with_attempts(_runtime(request), delivery_id)
    except replay.DeliveryNotFound:
        raise _not_found("delivery", delivery_id) from None
    return JSONResponse(delivery_view(delivery, attempts))


async def replay_delivery(request: Request) -> Response:
    delivery_id = path_id(request, "delivery_id")
    delivery = await replay.replay(_runtime(request), delivery_id)
    log.info("admin_delivery_replayed", delivery_id=delivery_id)
    return JSONResponse(delivery_view(delivery), status_code=202)


async def recover_deliveries(request: Request) -> Response:
    subscription_id, since = _recover_request(await read_json_object(request))
    recovered = await replay.recover(_runtime(request), subscription_id, since)
    log.info("admin_deliveries_recovered", subscription_id=subscription_id, count=len(recovered))
    return JSONResponse({"recovered": recovered, "count": len(recovered)}, status_code=202)


def _one_route(path: str, handlers: dict[str, Handler], *, guarded: bool = True) -> Route:
    """One route per path, so a wrong method gets a 405 whose ``Allow`` lists every method there.

    ``guarded`` handlers run behind :func:`_admin`, with the query parameters the document lists.
    """
    if guarded:
        handlers = {method: _admin(handler, _documented_query(path, method)) for method, handler in handlers.items()}

    async def dispatch(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    dispatch.__name__ = "_".join(handler.__name__ for handler in handlers.values())
    return Route(path, dispatch, methods=list(handlers))


def _documented_query(path: str, method: str) -> frozenset[str]:
    operation = DOCUMENT["paths"][path][method.lower()]
    return frozenset(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")


routes = [
    _one_route(f"{PREFIX}/openapi.json", {"GET": openapi_document}, guarded=False),
    _one_route(f"{PREFIX}/subscriptions", {"GET": list_subscriptions, "POST": create_subscription}),
    _one_route(
        f"{PREFIX}/subscriptions/{{subscription_id}}",
        {"GET": get_subscription, "PATCH": update_subscription, "DELETE": delete_subscription},
    ),
    _one_route(f"{PREFIX}/subscriptions/{{subscription_id}}/rotate-secret", {"POST": rotate_secret}),
    _one_route(f"{PREFIX}/tenants", {"GET": list_tenants}),
    _one_route(f"{PREFIX}/tenants/{{tenant_id}}", {"GET": get_tenant}),
    _one_route(f"{PREFIX}/callbacks", {"GET": list_callbacks}),
    _one_route(f"{PREFIX}/inbox-events", {"GET": list_inbox_events}),
    _one_route(f"{PREFIX}/events", {"GET": list_events}),
    _one_route(f"{PREFIX}/events/{{event_id}}", {"GET": get_event}),
    _one_route(f"{PREFIX}/deliveries", {"GET": list_deliveries}),
    _one_route(f"{PREFIX}/deliveries/recover", {"POST": recover_deliveries}),
    _one_route(f"{PREFIX}/deliveries/{{delivery_id}}", {"GET": get_delivery}),
    _one_route(f"{PREFIX}/deliveries/{{delivery_id}}/replay", {"POST": replay_delivery}),
]
