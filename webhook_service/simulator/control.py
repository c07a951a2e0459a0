"""``/_sim/`` control routes: drive a running simulator over HTTP.

For tests in another process and for operators poking a simulator started
from the CLI. No auth (it is a local test double), not logged, never failed
by ``fail_next``. Each route is a thin shim over the ``SimulatorState``
Python API; ``KeyError`` becomes 404 and ``ValueError``/``TypeError`` 400.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import simulator_state
from .state import BusinessRef, SimulatorState

Handler = Callable[[Request, SimulatorState, dict[str, Any]], Awaitable[Any]]


def control(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Parse an optional JSON object body, call ``handler``, render errors as JSON."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            return JSONResponse(await handler(request, simulator_state(request), body))
        except KeyError as exc:
            return JSONResponse({"error": str(exc.args[0] if exc.args else exc)}, status_code=404)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return endpoint


def _ref(request: Request, state: SimulatorState) -> BusinessRef:
    return state.business_ref(request.path_params["account_id"])


@control
async def refresh_tokens(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return {"refresh_token": state.issue_refresh_token(body.get("identity_id"))}


@control
async def authorization_codes(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    code = state.issue_authorization_code(body["redirect_uri"], body.get("identity_id"), body.get("scope"))
    return {"code": code}


@control
async def expire_access_tokens(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return {"expired": state.expire_access_tokens(body.get("identity_id"))}


@control
async def fail_next(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    state.fail_next(
        int(body.get("count", 1)), int(body.get("status", 429)), body.get("retry_after", "1"), body.get("paths_prefix")
    )
    return {}


@control
async def identities(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return {"identity_id": state.add_identity(list(body["memberships"]))}


@control
async def seed(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    ref = state.business_ref(str(body["account_id"]))
    objects = state.seed(ref, str(body["resource"]), int(body["count"]))
    return {"count": len(objects), "ids": [obj["id"] for obj in objects]}


@control
async def create_object(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return state.create_object(_ref(request, state), request.path_params["resource"], body)


@control
async def object_item(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    ref, resource, oid = _ref(request, state), request.path_params["resource"], request.path_params["object_id"]
    if request.method == "PUT":
        return state.update_object(ref, resource, oid, body)
    if request.method == "DELETE":
        return state.delete_object(ref, resource, oid)
    found = state.get_object(ref, resource, oid)
    if found is None:
        raise KeyError(f"no {resource} {oid}")
    return found


@control
async def archive_object(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return state.archive_object(_ref(request, state), request.path_params["resource"], request.path_params["object_id"])


def _log_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(row) for row in rows]


@control
async def request_log(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return _log_rows(state.requests)


@control
async def token_request_log(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return _log_rows(state.token_requests)


@control
async def reset_logs(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    state.reset_logs()
    return {}


def routes() -> list[BaseRoute]:
    objects = "/_sim/objects/{account_id}/{resource}"
    return [
        Route("/_sim/refresh-tokens", refresh_tokens, methods=["POST"]),
        Route("/_sim/authorization-codes", authorization_codes, methods=["POST"]),
        Route("/_sim/expire-access-tokens", expire_access_tokens, methods=["POST"]),
        Route("/_sim/fail-next", fail_next, methods=["POST"]),
        Route("/_sim/identities", identities, methods=["POST"]),
        Route("/_sim/seed", seed, methods=["POST"]),
        Route(objects, create_object, methods=["POST"]),
        Route(objects + "/{object_id:int}", object_item, methods=["GET", "PUT", "DELETE"]),
        Route(objects + "/{object_id:int}/archive", archive_object, methods=["POST"]),
        Route("/_sim/requests", request_log, methods=["GET"]),
        Route("/_sim/token-requests", token_request_log, methods=["GET"]),
        Route("/_sim/reset-logs", reset_logs, methods=["POST"]),
    ]
