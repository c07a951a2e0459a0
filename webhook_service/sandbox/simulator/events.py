"""Callbacks (webhook subscriptions) API: ``/events/account/{account_id}/events/callbacks``.

Addressed by ``account_id`` with a Bearer token like accounting (a wrong or
inaccessible account is the same unhelpful 404); bodies are wrapped in
``{"response": {"result": ...}}``; validation errors are the newer
``{"errno": 422, "message", "details"}`` shape. Lists page exactly like the
accounting lists (``paging.Page``).

One ``PUT`` does three different things depending on the body: a
``verifier`` verifies, ``resend: true`` re-sends the verification, anything
else updates ``event``/``uri`` (an empty update changes nothing).

A verification POST is only let go once the response to the request that
caused it has been sent (``HeldResponse``), as FreshBooks sends it after
answering: a service must cope with the verifier arriving before it has
even stored the callback id it just got back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .auth import require_identity, simulator_state
from .callbacks import CallbackError
from .delivery import DeliveryHold
from .errors import account_not_found, callback_not_found, events_error
from .identity import Business, Identity
from .paging import Page
from .state import SimulatorState

PREFIX = "/events/account/{account_id}/events/callbacks"


class HeldResponse(JSONResponse):
    """A JSON response that releases a ``DeliveryHold`` once it is sent (or sending failed)."""

    def __init__(self, content: Any, state: SimulatorState, hold: DeliveryHold) -> None:
        super().__init__(content)
        self._state = state
        self._hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.release_deliveries(self._hold)


def _result(callback: dict[str, Any]) -> dict[str, Any]:
    return {"response": {"result": {"callback": callback}}}


def _account(request: Request) -> tuple[Identity, Business]:
    identity = require_identity(request)
    account_id: str = request.path_params["account_id"]
    business = identity.business_by_account_id(account_id)
    if business is None:
        raise account_not_found(account_id)
    return identity, business


async def _callback_fields(request: Request) -> dict[str, Any]:
    """The ``callback`` object of a JSON body."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise events_error(400, "body", "Invalid JSON.") from None
    fields = body.get("callback") if isinstance(body, dict) else None
    if not isinstance(fields, dict):
        raise events_error(422, "callback", "Field required.")
    return fields


def _held(state: SimulatorState, action: Callable[[DeliveryHold], dict[str, Any]]) -> Response:
    """Run a state change whose POSTs must wait for this response; 422 on ``CallbackError``."""
    hold = DeliveryHold()
    try:
        callback = action(hold)
    except BaseException as exc:
        state.release_deliveries(hold)
        if isinstance(exc, CallbackError):
            raise events_error(422, exc.field, exc.message) from None
        raise
    return HeldResponse(_result(callback), state, hold)


async def callbacks(request: Request) -> Response:
    """``GET`` lists (paged, ``search[event]`` exact), ``POST`` creates."""
    identity, business = _account(request)
    state = simulator_state(request)
    if request.method == "POST":
        fields = await _callback_fields(request)
        event: Any = fields.get("event")  # untrusted: the state validates it (422)
        uri: Any = fields.get("uri")
        return _held(state, lambda hold: state.create_callback(business.id, event, uri, identity.id, hold=hold))
    query = request.query_params
    items = state.business_callbacks(business, query.get("search[event]"))
    page = Page.from_query(query)
    return JSONResponse({"response": {"result": {"callbacks": page.slice(items), **page.meta(len(items))}}})


async def callback(request: Request) -> Response:
    """``GET`` one, ``PUT`` verify / resend / update, ``DELETE`` (204)."""
    _, business = _account(request)
    state = simulator_state(request)
    raw_id: str = request.path_params["callback_id"]
    try:
        if not raw_id.isdigit():
            raise KeyError(raw_id)
        callback_id = int(raw_id)
        if request.method == "GET":
            found = state.business_callback(business, callback_id)
            if found is None:
                raise KeyError(raw_id)
            return JSONResponse(_result(found))
        if request.method == "DELETE":
            state.delete_callback(callback_id, business)
            return Response(status_code=204)
        return await _put(request, state, business, callback_id)
    except KeyError:  # unknown, another business's, or deleted meanwhile
        raise callback_not_found(raw_id) from None


async def _put(request: Request, state: SimulatorState, business: Business, callback_id: int) -> Response:
    fields = await _callback_fields(request)
    resend = fields.get("resend", False)
    if not isinstance(resend, bool):
        raise events_error(422, "resend", "Input should be a valid boolean.")
    if "verifier" in fields:
        try:
            return JSONResponse(_result(state.verify_callback(callback_id, fields["verifier"], business)))
        except CallbackError as exc:
            raise events_error(422, exc.field, exc.message) from None
    if resend:
        return _held(state, lambda hold: state.resend_verification(callback_id, business, hold=hold))
    return _held(
        state,
        lambda hold: state.update_callback(callback_id, fields.get("event"), fields.get("uri"), business, hold=hold),
    )


def routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, callbacks, methods=["GET", "POST"]),
        Route(PREFIX + "/{callback_id}", callback, methods=["GET", "PUT", "DELETE"]),
    ]
