"""Holding a duty: one process at a time, through a renewed lease; the work stops when it is lost.

Every worker tries to take every duty; the lease (``duty:NAME`` in :mod:`~webhook_service.storage.leases`)
lets one hold it. The holder renews it every third of ``DUTY_LEASE_SECONDS`` and runs the duty's
loop meanwhile. A renewal that finds the lease taken, or that cannot reach the database before the
lease runs out, stops the loop at once: by the time another worker can take the duty, this one no
longer runs it (a lease is a promise). The work itself is guarded again below (a tenant's refresh
lease, a sweep's turn, the retention lease), so an overlap of a few milliseconds costs at most a
repeated request, never a wrong write.

The lease's owner is ``PROCESS.duty-…``: a stop gives it back with the process's other leases
(:func:`~webhook_service.storage.deliveries.release_owner`), so another worker takes the duty over
at its next try rather than when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from webhook_service.core.logs import get_logger
from webhook_service.core.pacing import background
from webhook_service.runtime import Runtime
from webhook_service.storage import leases

log = get_logger(__name__)

_held: Counter[str] = Counter()  # process lease owner -> duties it holds now


@dataclass(frozen=True)
class Duty:
    name: str
    run: Callable[[Runtime], Awaitable[None]]
    """The duty's loop: runs until cancelled, spreading its work over its interval."""


def lease_name(duty: Duty) -> str:
    return f"duty:{duty.name}"


async def hold(runtime: Runtime, duty: Duty, *, first_try: float = 0.0) -> None:
    """Take ``duty`` whenever it is free, run it while the lease is ours; until cancelled.

    ``first_try``: seconds before the first attempt. A process's duties are staggered, and one
    already holding duties lets other processes reach for a free one first, so workers started
    together share the duties (one holder each) instead of the first taking them all.
    """
    ttl = runtime.settings.duty_lease_seconds
    owner = f"{runtime.lease_owner}.duty-{secrets.token_hex(4)}"
    await asyncio.sleep(first_try)
    while True:
        await asyncio.sleep(_held[runtime.lease_owner] * ttl / 15)
        expires = await _take(runtime, duty, owner, ttl)
        if expires:
            log.info("duty_taken", duty=duty.name)
            _held[runtime.lease_owner] += 1
            try:
                await _run_while_held(runtime, duty, owner, ttl, expires)
            finally:
                _held[runtime.lease_owner] -= 1
        await asyncio.sleep(ttl / 3 * random.uniform(0.8, 1.2))  # the holder may stop: look again


async def _take(
    runtime: Runtime, duty: Duty, owner: str, ttl: float, *, within: float | None = None
) -> float | Literal[False] | None:
    """The loop time by which the lease runs out, if it is ours now; False if another process holds
    it; None if the database did not answer within ``within`` seconds (a third of the lease by
    default): whether it is still ours is then unknown."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    try:
        async with asyncio.timeout(ttl / 3 if within is None else within):
            taken = await leases.acquire(runtime.db, lease_name(duty), owner, timedelta(seconds=ttl))
    except Exception as exc:
        log.warning("duty_lease_unreachable", duty=duty.name, error=type(exc).__name__)
        return None
    return asked + ttl if taken else False


async def _run_while_held(runtime: Runtime, duty: Duty, owner: str, ttl: float, expires: float) -> None:
    """Run the duty, renewing every third of the lease; stop it a sixth of the lease before the
    lease could run out unrenewed, and at once when another process has it."""
    loop = asyncio.get_running_loop()
    margin = ttl / 6
    with background(runtime.settings.freshbooks_background_rate):  # the duty's tasks inherit the pace
        work = asyncio.create_task(_guarded(runtime, duty), name=f"duty:{duty.name}")
    try:
        renew_at = loop.time() + ttl / 3
        while True:
            await asyncio.wait({work}, timeout=max(0.0, min(renew_at, expires - margin) - loop.time()))
            if work.done():
                return
            left = expires - margin - loop.time()
            renewed = await _take(runtime, duty, owner, ttl, within=min(ttl / 3, left)) if left > 0 else None
            if renewed:
                expires, renew_at = renewed, loop.time() + ttl / 3
            elif renewed is False or loop.time() >= expires - margin:
                log.warning("duty_lost", duty=duty.name, taken=renewed is False)
                return
            else:
                renew_at = loop.time() + ttl / 12  # unreachable: try again soon, while the lease lasts
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


async def _guarded(runtime: Runtime, duty: Duty) -> None:
    try:
        await duty.run(runtime)
    except asyncio.CancelledError:
        raise
    except Exception:  # a duty's loop catches its own failures; this is the last net
        log.exception("duty_failed", duty=duty.name)
