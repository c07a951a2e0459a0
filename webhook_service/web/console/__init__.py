"""The operator console, served by the web role at ``/console``: server-rendered pages (Jinja2) over
the functions the admin API and the CLI use, signed in with ``ADMIN_TOKEN``.

Every asset is served by the service (no CDN, no build step), so it works offline and behind a
firewall; see :mod:`~webhook_service.web.console.security` for the session, CSRF and headers.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from webhook_service.web.console import deliveries, events, overview, pages, sign_in, subscriptions, tenants
from webhook_service.web.console.security import PATH, SecurityHeaders, SignInThrottle


def mount() -> Mount:
    """The console's routes under ``/console``, with a sign-in throttle of their own."""
    throttle = SignInThrottle()

    async def submit_sign_in(request: Request) -> Response:
        return await sign_in.submit(request, throttle)

    return Mount(
        PATH,
        routes=[
            Route("/", overview.show),
            Route("/sign-in", sign_in.form, methods=["GET"]),
            Route("/sign-in", submit_sign_in, methods=["POST"]),
            Route("/sign-out", sign_in.out, methods=["POST"]),
            Route("/tenants", tenants.listing),
            Route("/tenants/{tenant_id}", tenants.detail),
            Route("/tenants/{tenant_id}/backfill", tenants.run_backfill, methods=["POST"]),
            Route("/tenants/{tenant_id}/sync-callbacks", tenants.sync_callbacks, methods=["POST"]),
            Route("/tenants/{tenant_id}/disconnect", tenants.confirm_disconnect, methods=["GET"]),
            Route("/tenants/{tenant_id}/disconnect", tenants.disconnect, methods=["POST"]),
            Route("/subscriptions", subscriptions.listing, methods=["GET"]),
            Route("/subscriptions", subscriptions.create, methods=["POST"]),
            Route("/subscriptions/new", subscriptions.new, methods=["GET"]),
            Route("/subscriptions/{subscription_id}", subscriptions.detail, methods=["GET"]),
            Route("/subscriptions/{subscription_id}", subscriptions.update, methods=["POST"]),
            Route("/subscriptions/{subscription_id}/switch", subscriptions.switch, methods=["POST"]),
            Route("/subscriptions/{subscription_id}/rotate-secret", subscriptions.rotate, methods=["POST"]),
            Route("/subscriptions/{subscription_id}/delete", subscriptions.confirm_delete, methods=["GET"]),
            Route("/subscriptions/{subscription_id}/delete", subscriptions.delete, methods=["POST"]),
            Route("/events", events.listing),
            Route("/events/{event_id}", events.detail),
            Route("/deliveries", deliveries.listing),
            Route("/deliveries/recover", deliveries.recover, methods=["POST"]),
            Route("/deliveries/{delivery_id}", deliveries.detail),
            Route("/deliveries/{delivery_id}/replay", deliveries.replay_one, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
            Route("/{rest:path}", pages.not_found),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )
