"""The Starlette application and its lifespan (runtime and background tasks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from webhook_service.config import Role, Settings, get_settings
from webhook_service.core.logs import get_logger
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.duties.holder import hold, lease_name
from webhook_service.duties.periodic import duties
from webhook_service.normalize.processor import InboxProcessor
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.web import admin, console, health, metrics, oauth, webhooks
from webhook_service.web.errors import http_exception, unhandled_exception
from webhook_service.web.middleware import RequestContextMiddleware

log = get_logger(__name__)

DUTY_STAGGER = 0.25
"""Seconds between a process's first attempts at its duties (see :func:`~webhook_service.duties.holder.hold`)."""
DRAIN_SECONDS = 5.0
"""How long a stop waits, beyond the grace period, for commits already under way."""


def create_app(settings: Settings | None = None, *, role: Role | None = None) -> Starlette:
    """The service as ``role`` (``SERVE_ROLE``): ``web`` answers webhooks, the admin API and OAuth
    and does nothing else (a webhook is committed to the inbox, answered, and left for a worker);
    ``worker`` processes the inbox, delivers and holds the periodic duties, and answers only the
    probes and ``/metrics``; ``all`` is both in one process."""
    settings = settings or get_settings()
    role = role or settings.serve_role
    works = role in ("all", "worker")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Runtime.open(settings) as runtime:
            app.state.runtime = runtime
            processor = InboxProcessor(runtime)
            senders = [DeliveryWorker(runtime)] if works and settings.delivery_workers else []
            tasks = []
            if works:
                tasks = [
                    asyncio.create_task(processor.run_forever(), name="inbox-processor"),
                    *(
                        asyncio.create_task(
                            sender.run_forever(take_handovers=True, loops=settings.delivery_workers),
                            name="delivery-worker",
                        )
                        for sender in senders
                    ),
                    *(
                        asyncio.create_task(hold(runtime, duty, first_try=n * DUTY_STAGGER), name=lease_name(duty))
                        for n, duty in enumerate(duties(settings))
                    ),
                ]
            log.info(
                "service_started",
                role=role,
                public_base_url=settings.public_base_url,
                database=runtime.db.engine.dialect.name,
            )
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await _wind_down(runtime, processor, senders)

    routes: list[BaseRoute] = [*health.routes, *metrics.routes]
    if role != "worker":  # webhooks first: the router tries routes in order, and they are most of the traffic
        routes = [*webhooks.routes, *routes, *oauth.routes, *admin.routes, console.mount()]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers={HTTPException: http_exception, Exception: unhandled_exception},
        lifespan=lifespan,
    )


async def _wind_down(runtime: Runtime, processor: InboxProcessor, senders: list[DeliveryWorker]) -> None:
    """Let work in flight finish for ``SHUTDOWN_GRACE_SECONDS``, then stop it and give back every
    lease this process holds, so a rolling restart delays nothing by a lease's length.

    The stages' loops are already cancelled (so nothing new is claimed or handed over). The group
    commits still running are let finish before the leases go back: one of them may be leasing
    rows to this process as it commits, and a lease given back before that commit would be taken
    again by it.
    """
    grace = runtime.settings.shutdown_grace_seconds
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.tasks.idle(), grace)
    await runtime.tasks.cancel_all()
    committers = [runtime.inbox_writer.idle(), processor.idle(), *(sender.idle() for sender in senders)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*committers, return_exceptions=True), grace + DRAIN_SECONDS)
    try:
        released = await claims.release_owner(runtime.db, runtime.lease_owner)
    except Exception:  # the leases then run out as after a crash
        log.exception("lease_release_failed")
        released = 0
    log.info("service_stopped", leases_released=released)
