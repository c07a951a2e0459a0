"""``/_sim/`` control routes: drive a running simulator over HTTP.

For tests in another process and for operators poking a simulator started
from the CLI. No auth (it is a local test double), not logged, never failed
by ``fail_next``. Each route is a thin shim over the ``SimulatorState``
Python API; ``KeyError`` becomes 404, ``ValueError``/``TypeError`` 400 and
``TimeoutError`` (deliveries not drained) 504.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import simulator_state
from .clock import iso_utc, normalize, parse_iso_utc
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
        except TimeoutError as exc:
            return JSONResponse({"error": str(exc)}, status_code=504)
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
async def token_delay(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    """``{"seconds": 7}`` holds each token-issuing answer that long (``0``: answer at once)."""
    if "seconds" in body:
        state.token_delay = body["seconds"]
    return {"seconds": state.token_delay}


@control
async def identities(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return {"identity_id": state.add_identity(list(body["memberships"]))}


@control
async def businesses(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    """Many connected businesses in one call (see ``SimulatorState.connect_businesses``)."""
    specs = body["businesses"]
    if not isinstance(specs, list):
        raise ValueError("businesses must be a list")
    return {"businesses": await run_in_threadpool(state.connect_businesses, specs)}


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


@control
async def send_event(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    ref = state.business_ref(str(body["account_id"]))
    fields = body.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise ValueError("fields must be a JSON object")
    return {"queued": state.send_event(ref, str(body["name"]), body["object_id"], fields)}


@control
async def flush_deliveries(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    # On a worker thread: blocking the event loop would also block the responses
    # whose deliveries are being waited for (and any receiver on this loop).
    await run_in_threadpool(state.flush_deliveries, float(body.get("timeout", 10.0)))
    return {}


@control
async def delivery_log(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    return state.delivery_log()


@control
async def delivery_settings(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    """Change only what the body names; answer the settings now in force."""
    if "drop_rate" in body:
        state.delivery_drop_rate = float(body["drop_rate"])
    if "disable_after_failures" in body:
        state.disable_after_failures = body["disable_after_failures"]
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise ValueError("paused must be true or false")
        (state.pause_deliveries if body["paused"] else state.resume_deliveries)()
    return {
        "drop_rate": state.delivery_drop_rate,
        "paused": state.deliveries_paused,
        "disable_after_failures": state.disable_after_failures,
    }


@control
async def clock(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    """``{"frozen": true}`` (or ``"frozen_at": ISO 8601``) freezes object stamps, ``{"frozen": false}`` thaws."""
    if "frozen_at" in body:
        moment = parse_iso_utc(str(body["frozen_at"]))
        state.freeze_clock(moment)
    elif "frozen" in body:
        if not isinstance(body["frozen"], bool):
            raise ValueError("frozen must be true or false")
        if body["frozen"]:
            state.freeze_clock()
        else:
            state.thaw_clock()
    return {"frozen": state.clock_frozen, "now": iso_utc(normalize(state.now()), suffix_z=True)}


@control
async def callback_list(request: Request, state: SimulatorState, body: dict[str, Any]) -> Any:
    """The business's callbacks, each with its current ``verifier`` (so another process can sign)."""
    return [
        {**found, "verifier": state.callback_verifier(found["callbackid"])}
        for found in state.list_callbacks(_ref(request, state))
    ]


def routes() -> list[BaseRoute]:
    objects = "/_sim/objects/{account_id}/{resource}"
    return [
        Route("/_sim/refresh-tokens", refresh_tokens, methods=["POST"]),
        Route("/_sim/authorization-codes", authorization_codes, methods=["POST"]),
        Route("/_sim/expire-access-tokens", expire_access_tokens, methods=["POST"]),
        Route("/_sim/fail-next", fail_next, methods=["POST"]),
        Route("/_sim/token-delay", token_delay, methods=["GET", "POST"]),
        Route("/_sim/identities", identities, methods=["POST"]),
        Route("/_sim/businesses", businesses, methods=["POST"]),
        Route("/_sim/seed", seed, methods=["POST"]),
        Route(objects, create_object, methods=["POST"]),
        Route(objects + "/{object_id:int}", object_item, methods=["GET", "PUT", "DELETE"]),
        Route(objects + "/{object_id:int}/archive", archive_object, methods=["POST"]),
        Route("/_sim/requests", request_log, methods=["GET"]),
        Route("/_sim/token-requests", token_request_log, methods=["GET"]),
        Route("/_sim/reset-logs", reset_logs, methods=["POST"]),
        Route("/_sim/events", send_event, methods=["POST"]),
        Route("/_sim/flush-deliveries", flush_deliveries, methods=["POST"]),
        Route("/_sim/deliveries", delivery_log, methods=["GET"]),
        Route("/_sim/delivery-settings", delivery_settings, methods=["POST"]),
        Route("/_sim/callbacks/{account_id}", callback_list, methods=["GET"]),
        Route("/_sim/clock", clock, methods=["GET", "POST"]),
    ]
