"""Accounting API routes: ``/accounting/account/{account_id}/...``.

Addressed by ``account_id`` (a business's integer id here is a 404, as in
FreshBooks). Bodies are wrapped in ``{"response": {"result": ...}}``.
Deleted (``vis_state`` 1) and archived (2) objects are listed and readable
unless ``search[vis_state]`` asks otherwise. ``search[updated_min|max]``
compare US/Eastern *days* of ``updated``, inclusive; resources whose spec
says ``honours_updated_filters=False`` (taxes, categories) ignore them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import require_identity, simulator_state
from .catalog import RESOURCES, ResourceSpec
from .clock import parse_day
from .errors import account_not_found, accounting_bad_request, accounting_not_found
from .identity import Business
from .paging import Page

Endpoint = Callable[[Request], Awaitable[Response]]

PREFIX = "/accounting/account/{account_id}/"


def wants_lines(spec: ResourceSpec, query: QueryParams) -> bool:
    """Lines are related data: present only with ``include[]=lines``."""
    return spec.has_lines and "lines" in query.getlist("include[]")


def render(obj: dict[str, Any], include_lines: bool) -> dict[str, Any]:
    """The object as served; stored dicts are never mutated, so no deep copy."""
    if include_lines or "lines" not in obj:
        return obj
    return {k: v for k, v in obj.items() if k != "lines"}


def search_filters(spec: ResourceSpec, query: QueryParams) -> dict[str, Any]:
    """``search[...]`` parameters as store filters; 400 on values that do not parse."""
    filters: dict[str, Any] = {}
    raw_vis = query.get("search[vis_state]")
    if raw_vis is not None:
        try:
            filters["vis_state"] = int(raw_vis)
        except ValueError:
            raise accounting_bad_request("vis_state", "Invalid vis_state.", raw_vis) from None
    if spec.honours_updated_filters:
        for param, key in (("search[updated_min]", "day_min"), ("search[updated_max]", "day_max")):
            raw = query.get(param)
            if raw is None:
                continue
            try:
                filters[key] = parse_day(raw)
            except ValueError:
                raise accounting_bad_request(param[7:-1], "Invalid date, expected YYYY-MM-DD.", raw) from None
    return filters


def _business(request: Request, spec: ResourceSpec) -> Business:
    identity = require_identity(request)
    account_id: str = request.path_params["account_id"]
    business = simulator_state(request).visible_business(identity, spec, account_id)
    if business is None:
        raise account_not_found(account_id)
    return business


def list_endpoint(spec: ResourceSpec) -> Endpoint:
    async def list_objects(request: Request) -> Response:
        business = _business(request, spec)
        query = request.query_params
        items = simulator_state(request).query(spec, business, **search_filters(spec, query))
        page = Page.from_query(query)
        lines = wants_lines(spec, query)
        result = {spec.plural: [render(obj, lines) for obj in page.slice(items)], **page.meta(len(items))}
        return JSONResponse({"response": {"result": result}})

    list_objects.__name__ = f"list_{spec.plural}"
    return list_objects


def item_endpoint(spec: ResourceSpec) -> Endpoint:
    async def get_object(request: Request) -> Response:
        business = _business(request, spec)
        raw_id: str = request.path_params["object_id"]
        obj = simulator_state(request).lookup(spec, business, int(raw_id)) if raw_id.isdigit() else None
        if obj is None:
            raise accounting_not_found(spec, raw_id)
        served = render(obj, wants_lines(spec, request.query_params))
        return JSONResponse({"response": {"result": {spec.singular: served}}})

    get_object.__name__ = f"get_{spec.singular}"
    return get_object


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for spec in RESOURCES.values():
        if spec.family != "accounting":
            continue
        table.append(Route(PREFIX + spec.list_path, list_endpoint(spec), methods=["GET"]))
        table.append(Route(PREFIX + spec.item_path + "/{object_id}", item_endpoint(spec), methods=["GET"]))
    return table
