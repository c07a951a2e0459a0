"""The service's periodic duties: what each does every interval, spread over that interval."""

from __future__ import annotations

from webhook_service.backfill import schedule as backfill_schedule
from webhook_service.config import Settings
from webhook_service.core.pacing import every
from webhook_service.duties.holder import Duty
from webhook_service.inbound import registrar
from webhook_service.maintenance import retention
from webhook_service.runtime import Runtime


async def keep_callbacks_in_sync(runtime: Runtime) -> None:
    """Notice callbacks FreshBooks dropped or disabled, and finish pending verifications: every
    tenant once per ``CALLBACK_SYNC_INTERVAL``, the tenants spread over it."""
    settings = runtime.settings
    interval = settings.callback_sync_interval
    await every(
        interval,
        lambda: registrar.sync_all(runtime, over=interval, limit=settings.duty_concurrency, wait=False),
        failure="callbacks_sync_loop_failed",
    )


async def keep_tokens_fresh(runtime: Runtime) -> None:
    """Refresh tokens before they expire, so a quiet tenant's first call does not wait on it; the
    refreshes due in one check are spread over ``TOKEN_CHECK_INTERVAL``."""
    settings = runtime.settings
    interval = settings.token_check_interval
    await every(
        interval,
        lambda: runtime.tokens.refresh_expiring(over=interval, limit=settings.duty_concurrency),
        failure="token_refresher_failed",
    )


def duties(settings: Settings) -> list[Duty]:
    """The duties a worker holds (when free), as configured."""
    found = [
        Duty("callbacks-sync", keep_callbacks_in_sync),
        Duty("token-refresh", keep_tokens_fresh),
        Duty("retention", retention.run_forever),
    ]
    if settings.backfill_enabled:
        found.append(Duty("backfill", backfill_schedule.run_forever))
    return found
