"""Projects-family routes: projects, time entries, services.

Addressed by the integer ``business_id`` (an ``account_id`` here is a 404).
Not wrapped in ``response``; lists carry ``meta``. Timestamps are UTC
(projects without the ``Z``, time entries with it). ``updated_since`` keeps
objects with ``updated_at >= since``; services have no timestamps and
ignore it. Deletes are hard: a deleted object is a 404 afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import require_identity, simulator_state
from .catalog import RESOURCES, ResourceSpec
from .clock import parse_iso_utc
from .errors import projects_bad_request, projects_not_found
from .identity import Business
from .paging import Page

Endpoint = Callable[[Request], Awaitable[Response]]


def prefix(spec: ResourceSpec) -> str:
    return f"/{spec.service_prefix}/business/{{business_id}}/"


def _business(request: Request, spec: ResourceSpec) -> Business:
    identity = require_identity(request)
    business = simulator_state(request).visible_business(identity, spec, request.path_params["business_id"])
    if business is None:
        raise projects_not_found("Business")
    return business


def _filters(spec: ResourceSpec, request: Request) -> dict[str, Any]:
    raw = request.query_params.get("updated_since")
    if raw is None or not spec.honours_updated_filters:
        return {}
    try:
        return {"since": parse_iso_utc(raw)}
    except ValueError:
        raise projects_bad_request(f"updated_since: invalid datetime {raw!r}") from None


def list_endpoint(spec: ResourceSpec) -> Endpoint:
    async def list_objects(request: Request) -> Response:
        business = _business(request, spec)
        items = simulator_state(request).query(spec, business, **_filters(spec, request))
        page = Page.from_query(request.query_params)
        return JSONResponse({spec.plural: page.slice(items), "meta": page.meta(len(items))})

    list_objects.__name__ = f"list_{spec.plural}"
    return list_objects


def item_endpoint(spec: ResourceSpec) -> Endpoint:
    async def get_object(request: Request) -> Response:
        business = _business(request, spec)
        raw_id: str = request.path_params["object_id"]
        obj = simulator_state(request).lookup(spec, business, int(raw_id)) if raw_id.isdigit() else None
        if obj is None:
            raise projects_not_found(spec.name.replace("_", " ").capitalize())
        return JSONResponse({spec.singular: obj})

    get_object.__name__ = f"get_{spec.singular}"
    return get_object


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for spec in RESOURCES.values():
        if spec.family != "projects":
            continue
        table.append(Route(prefix(spec) + spec.list_path, list_endpoint(spec), methods=["GET"]))
        table.append(Route(prefix(spec) + spec.item_path + "/{object_id}", item_endpoint(spec), methods=["GET"]))
    return table
