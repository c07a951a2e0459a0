"""The Starlette app: route modules plus the traffic middleware.

Each API family lives in its own route module (``oauth``, ``accounting``,
``projects``, ``events`` (callbacks), ``control``); a new one is one more
``routes()`` in the list below.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import accounting, control, events, oauth, projects
from .errors import ApiError, route_not_found
from .middleware import TrafficMiddleware
from .state import SimulatorState


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer JSON, like the API does."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return route_not_found().response()
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(state: SimulatorState) -> Starlette:
    """A FreshBooks stand-in serving ``state`` (auth host and API host in one)."""
    app = Starlette(
        routes=[*oauth.routes(), *accounting.routes(), *projects.routes(), *events.routes(), *control.routes()],
        middleware=[Middleware(TrafficMiddleware, state=state)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.simulator = state
    return app
