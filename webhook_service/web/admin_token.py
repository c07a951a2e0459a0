"""``ADMIN_TOKEN``: what the admin API's bearer token and the console's sign-in are checked against."""

from __future__ import annotations

import hmac

from webhook_service.config import Settings


def enabled(settings: Settings) -> bool:
    """Without a token the admin API and the console are disabled (503)."""
    token = settings.admin_token
    return token is not None and bool(token.get_secret_value())


def matches(settings: Settings, presented: str) -> bool:
    """``presented`` is the admin token (compared in constant time); never true while it is unset."""
    token = settings.admin_token
    expected = token.get_secret_value() if token is not None else ""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())
