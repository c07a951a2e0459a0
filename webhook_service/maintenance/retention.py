"""Retention inside the service: a purge every ``RETENTION_INTERVAL``, by one replica at a time.

What is kept and what goes is ``storage/retention.py``'s to say; this is only the schedule. Every
replica tries every interval; a lease (``storage/leases.py``) lets one purge, and it keeps the
lease between purges (it lasts most of an interval, and at least ``MIN_LEASE``), so purges do
not pile up when the interval is short, and another replica takes over when the holder stops
renewing it. A purge longer than its lease renews it between batches, and stops if the lease was
lost meanwhile: two purges never run at once (they would only do the same work twice).

The first purge waits an interval (at most ``FIRST_PURGE_AFTER``), so a starting replica serves its
backlog first and a short-lived process (a test, a CLI-launched service) does not purge at all.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime, timedelta

from webhook_service.config import Settings
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import RETENTION_BODIES_CLEARED, RETENTION_PURGED
from webhook_service.runtime import Runtime
from webhook_service.storage import leases
from webhook_service.storage import retention as store
from webhook_service.storage.database import Database

log = get_logger(__name__)

LEASE_NAME = "retention"
MIN_LEASE = timedelta(minutes=1)
FIRST_PURGE_AFTER = 60.0


class LeaseLost(Exception):
    """Another replica holds the retention lease now: this purge stops where it is."""


def policy(settings: Settings) -> store.Retention:
    return store.Retention(
        days=settings.retention_days,
        response_body_days=settings.retention_response_body_days,
        batch_size=settings.retention_batch_size,
    )


def lease_length(settings: Settings) -> timedelta:
    return max(timedelta(seconds=settings.retention_interval * 0.9), MIN_LEASE)


async def purge_if_free(runtime: Runtime, owner: str, *, now: datetime | None = None) -> store.PurgeReport | None:
    """Purge if the lease is free or already ``owner``'s; None when another replica holds it."""
    ttl = lease_length(runtime.settings)
    if not await leases.acquire(runtime.db, LEASE_NAME, owner, ttl):
        return None
    started = time.monotonic()
    report = await store.purge(
        runtime.db, policy(runtime.settings), now=now, progress=_Progress(runtime.db, owner, ttl)
    )
    log.info(
        "retention_purged",
        deleted=report.total,
        **{table: rows for table, rows in report.deleted.items() if rows},
        response_bodies_cleared=report.response_bodies_cleared,
        sqlite_pages_freed=report.sqlite_pages_freed,
        cutoff=report.cutoff.isoformat(),
        seconds=round(time.monotonic() - started, 3),
    )
    return report


async def run_forever(runtime: Runtime) -> None:
    owner = f"{runtime.lease_owner}.retention-{secrets.token_hex(4)}"  # given back by the stop's release_owner
    interval = runtime.settings.retention_interval
    await asyncio.sleep(min(interval, FIRST_PURGE_AFTER))
    while True:
        try:
            await purge_if_free(runtime, owner)
        except LeaseLost:
            log.warning("retention_lease_lost", owner=owner)
        except Exception:
            log.exception("retention_purge_failed")
        await asyncio.sleep(interval)


class _Progress:
    """After each batch: count it, and renew the lease once a third of it has passed."""

    def __init__(self, db: Database, owner: str, ttl: timedelta) -> None:
        self._db = db
        self._owner = owner
        self._ttl = ttl
        self._renewed = time.monotonic()

    async def __call__(self, table: str, rows: int) -> None:
        if table == store.RESPONSE_BODY:
            RETENTION_BODIES_CLEARED.inc(rows)
        else:
            RETENTION_PURGED.labels(table=table).inc(rows)
        if time.monotonic() - self._renewed < self._ttl.total_seconds() / 3:
            return
        if not await leases.acquire(self._db, LEASE_NAME, self._owner, self._ttl):
            raise LeaseLost(LEASE_NAME)
        self._renewed = time.monotonic()
