"""The Starlette application and its lifespan (runtime and background tasks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from webhook_service.backfill import schedule as backfill_schedule
from webhook_service.config import Settings, get_settings
from webhook_service.core.logs import get_logger
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.inbound import registrar
from webhook_service.maintenance import retention
from webhook_service.normalize.processor import InboxProcessor
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.web import admin, health, metrics, oauth, webhooks
from webhook_service.web.errors import http_exception, unhandled_exception
from webhook_service.web.middleware import RequestContextMiddleware

log = get_logger(__name__)

DRAIN_SECONDS = 5.0
"""How long a stop waits, beyond the grace period, for commits already under way."""


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Runtime.open(settings) as runtime:
            app.state.runtime = runtime
            refresher = asyncio.create_task(_keep_tokens_fresh(runtime), name="token-refresher")
            syncer = asyncio.create_task(_keep_callbacks_in_sync(runtime), name="callbacks-sync")
            processor = InboxProcessor(runtime)
            senders = [DeliveryWorker(runtime) for _ in range(settings.delivery_workers)]
            workers = [
                asyncio.create_task(processor.run_forever(), name="inbox-processor"),
                *(
                    asyncio.create_task(sender.run_forever(take_handovers=n == 0), name=f"delivery-worker-{n}")
                    for n, sender in enumerate(senders)
                ),
            ]
            if settings.backfill_enabled:
                workers.append(asyncio.create_task(backfill_schedule.run_forever(runtime), name="backfill-sweep"))
            workers.append(asyncio.create_task(retention.run_forever(runtime), name="retention-purge"))
            log.info(
                "service_started", public_base_url=settings.public_base_url, database=runtime.db.engine.dialect.name
            )
            try:
                yield
            finally:
                for task in (refresher, syncer, *workers):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await _wind_down(runtime, processor, senders)

    return Starlette(
        routes=[*health.routes, *oauth.routes, *webhooks.routes, *metrics.routes, *admin.routes],
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


async def _keep_callbacks_in_sync(runtime: Runtime) -> None:
    """Notice callbacks FreshBooks dropped or disabled, and finish pending verifications."""
    while True:
        try:
            await registrar.sync_all(runtime)
        except Exception:
            log.exception("callbacks_sync_loop_failed")
        await asyncio.sleep(runtime.settings.callback_sync_interval)


async def _keep_tokens_fresh(runtime: Runtime) -> None:
    """Refresh tokens before they expire, so a quiet tenant's first call does not wait on it."""
    while True:
        try:
            await runtime.tokens.refresh_expiring()
        except Exception:
            log.exception("token_refresher_failed")
        await asyncio.sleep(runtime.settings.token_check_interval)
