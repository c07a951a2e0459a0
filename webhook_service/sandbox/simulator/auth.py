"""Bearer authentication for API routes.

Every API route needs a live access token; the identity behind it decides
which businesses are visible (others are simply not found).
"""

from __future__ import annotations

from starlette.requests import Request

from .errors import from_oauth
from .identity import Identity
from .state import SimulatorState
from .tokens import OAuthError


def simulator_state(request: Request) -> SimulatorState:
    """The ``SimulatorState`` the app was created with."""
    state: SimulatorState = request.app.state.simulator
    return state


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (scheme case-insensitive)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_identity(request: Request) -> Identity:
    """The caller's identity; raises a 401 ``ApiError`` otherwise."""
    try:
        return simulator_state(request).authenticate(bearer_token(request))
    except OAuthError as exc:
        raise from_oauth(exc) from None
