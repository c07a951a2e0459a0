"""Delivery workers: claim due deliveries, sign, POST, record every attempt, schedule the next.

Outcomes: 2xx succeeds; anything else (3xx included: redirects are never followed) fails and is
retried on the schedule (``DELIVERY_RETRY_SCHEDULE``, each delay ±``DELIVERY_RETRY_JITTER``);
429/502/503/504 wait at least as long as ``Retry-After`` asks; ``410 Gone`` disables the
subscription; a subscription failing without a single success for
``SUBSCRIPTION_DISABLE_AFTER_HOURS`` is disabled; after the last attempt a delivery is dead.
Scheduling uses the injected clock (tests simulate time); the signature timestamp is always the
real send time, because subscribers check it against theirs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.batching import Batcher
from webhook_service.delivery import signing
from webhook_service.delivery.egress import egress_refusal
from webhook_service.delivery.subscriptions import disable, secrets_for_signing
from webhook_service.logs import get_logger
from webhook_service.metrics import (
    DELIVERIES_FINISHED,
    DELIVERY_ATTEMPT_SECONDS,
    DELIVERY_ATTEMPTS,
    INBOUND_TO_DELIVERED_SECONDS,
)
from webhook_service.retry_after import parse_retry_after
from webhook_service.runtime import Runtime
from webhook_service.signals import HandedDelivery
from webhook_service.storage import deliveries as claims
from webhook_service.storage.bulk import insert_rows, update_by_id
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Subscription

log = get_logger(__name__)

RESPONSE_BODY_LIMIT = 20_000
SLOW_DOWN = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 24 * 3600.0
USER_AGENT = "webhook-service (+https://www.standardwebhooks.com)"


@dataclass
class Outcome:
    delivery_id: str
    subscription_id: str
    number: int
    started_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None
    deferred_until: datetime | None = None  # rate limited: not an attempt
    skip_reason: str | None = None  # subscription disabled: no attempt
    refused: bool = False  # the egress guard stopped it
    subscription_failing: bool = False  # as last read: a success must clear ``failing_since``
    origin: str | None = None
    received_at: datetime | None = None  # when the change reached the service (for the metric)

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker:
    """Sends due deliveries; ``DELIVERY_WORKERS`` of these run in each service process.

    ``run_forever`` keeps up to ``DELIVERY_BATCH_SIZE`` attempts in flight and claims more as soon
    as any finishes, so one slow subscriber does not hold up a batch; outcomes are recorded
    together (group commit) as they come in.
    """

    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._runtime = runtime
        self._clock = clock
        self._settings = runtime.settings
        self._recorder: Batcher[tuple[Outcome, Delivery], None] = Batcher(self._record_batch, name="delivery-record")
        self._capacity = self._settings.delivery_batch_size
        self._in_flight: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # ids of leased deliveries whose outcome is not recorded yet

    async def run_once(self) -> int:
        """Claim and send one batch of due deliveries; returns how many were claimed."""
        now = self._clock()
        batch = await self._claim(self._settings.delivery_batch_size, now)
        if not batch:
            return 0
        outcomes = await asyncio.gather(*(self._attempt(d, e, s, now) for d, e, s in batch))
        await self._record(outcomes, {d.id: d for d, _, _ in batch})
        return len(batch)

    async def run_forever(self, *, take_handovers: bool = False) -> None:
        """Send until cancelled; with ``take_handovers`` (one worker per process) this worker also
        receives the deliveries this process's inbox processor commits, without a claim."""
        signals = self._runtime.signals
        lane = signals.delivery_lane
        if take_handovers:
            lease = timedelta(seconds=self._settings.delivery_lease_seconds + self._settings.delivery_timeout)
            lane.attach(self._start, lease=lease, ready=lambda: len(self._in_flight) < self._capacity)
        try:
            while True:
                claimed: list[HandedDelivery] = []
                if len(self._in_flight) < self._capacity:
                    try:
                        claimed = await self._claim(self._capacity - len(self._in_flight), self._clock())
                    except Exception:
                        log.exception("delivery_worker_failed")
                self._start(claimed)
                if not claimed:
                    await signals.wait_deliveries(self._settings.delivery_poll_interval)
        finally:
            if take_handovers:
                lane.detach()

    def _start(self, items: Sequence[HandedDelivery]) -> None:
        now = self._clock()
        for delivery, event, subscription in items:
            self._held.add(delivery.id)
            task = self._runtime.tasks.spawn(self._deliver(delivery, event, subscription, now), name="delivery")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        was_full = len(self._in_flight) >= self._capacity
        self._in_flight.discard(task)
        if was_full:  # room again: claim what waited
            self._runtime.signals.deliveries_ready()

    async def _claim(self, limit: int, now: datetime) -> list[HandedDelivery]:
        lease = timedelta(seconds=self._settings.delivery_lease_seconds + self._settings.delivery_timeout)
        async with self._runtime.db.sessions() as session:
            return await claims.claim_deliveries(session, now=now, limit=limit, lease=lease)

    async def _deliver(self, delivery: Delivery, event: Event, subscription: Subscription, now: datetime) -> None:
        structlog.contextvars.bind_contextvars(delivery_id=delivery.id, event_id=event.id)  # this task's own context
        outcome = await self._attempt(delivery, event, subscription, now)
        try:
            await self._recorder.submit((outcome, delivery))
        except Exception:  # the lease runs out and the delivery is attempted again: at least once
            log.exception("delivery_record_failed", delivery_id=delivery.id)
        self._held.discard(delivery.id)  # not reached when cancelled: release_held() gives it back

    async def release_held(self) -> int:
        """Give back the leases of deliveries taken but not recorded (at shutdown, after cancelling).

        One may have reached its subscriber already: it is sent again, with the same ``webhook-id``
        (at least once), rather than wait ``DELIVERY_LEASE_SECONDS`` for anyone to try.
        """
        held, self._held = self._held, set()
        return await claims.release(self._runtime.db, Delivery, held)

    async def _record_batch(self, items: Sequence[tuple[Outcome, Delivery]]) -> list[None]:
        await self._record([outcome for outcome, _ in items], {d.id: d for _, d in items})
        return [None] * len(items)

    # -- one attempt --------------------------------------------------------------------------
    async def _attempt(self, delivery: Delivery, event: Event, subscription: Subscription, now: datetime) -> Outcome:
        outcome = Outcome(delivery.id, subscription.id, delivery.attempts + 1, now)
        outcome.subscription_failing = subscription.failing_since is not None
        if delivery.schedule_base == 0:  # a replay's latency says nothing about the pipeline
            outcome.origin, outcome.received_at = event.origin, event.received_at
        if not subscription.enabled:
            outcome.skip_reason = f"subscription disabled: {subscription.disabled_reason or 'by an operator'}"
            return outcome
        limit = subscription.rate_limit_per_second
        if limit is not None:
            async with self._runtime.db.sessions() as session:
                if not await claims.take_rate_slot(session, subscription.id, limit, now):
                    outcome.deferred_until = datetime.fromtimestamp(int(now.timestamp()) + 1, UTC)
                    return outcome
        sent_at = datetime.now(UTC)
        headers = {
            **signing.headers(secrets_for_signing(self._runtime, subscription, now), event.id, sent_at, event.payload),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        started = time.perf_counter()
        async with self._runtime.delivery_slots:
            try:
                self._runtime.egress.check_request_target(subscription.url)  # IP literals skip the resolver
                async with self._runtime.outbound.post(
                    subscription.url, data=event.payload.encode("utf-8"), headers=headers, allow_redirects=False
                ) as response:
                    body = await _read_limited(response, RESPONSE_BODY_LIMIT)
                outcome.status_code = response.status
                outcome.response_body = body.decode("utf-8", "replace")
                if response.status in SLOW_DOWN:
                    outcome.retry_after = parse_retry_after(response.headers.get("retry-after"))
            except TimeoutError:  # asyncio.TimeoutError; aiohttp's ServerTimeoutError is one too
                outcome.error = f"timeout after {self._settings.delivery_timeout:g} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a malformed stored URL
                refusal = egress_refusal(exc)
                outcome.refused = refusal is not None
                outcome.error = str(refusal) if refusal else f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        outcome.latency_ms = round(elapsed * 1000, 2)
        DELIVERY_ATTEMPT_SECONDS.observe(elapsed)
        DELIVERY_ATTEMPTS.labels(outcome=_outcome_class(outcome)).inc()
        return outcome

    # -- bookkeeping --------------------------------------------------------------------------
    async def _record(self, outcomes: list[Outcome], deliveries: dict[str, Delivery]) -> None:
        now = self._clock()
        to_disable: dict[str, str] = {}
        updates: list[dict[str, object]] = []
        attempts: list[dict[str, object]] = []
        for outcome in outcomes:
            delivery = deliveries[outcome.delivery_id]
            updates.append({"id": delivery.id, **self._next_state(delivery, outcome, now)})
            if outcome.deferred_until is not None or outcome.skip_reason is not None:
                continue
            attempts.append(
                {
                    "delivery_id": delivery.id,
                    "number": outcome.number,
                    "started_at": outcome.started_at,
                    "status_code": outcome.status_code,
                    "latency_ms": outcome.latency_ms,
                    "error": outcome.error,
                    "response_body": outcome.response_body,
                }
            )
            if outcome.status_code == 410:
                to_disable[outcome.subscription_id] = "the endpoint answered 410 Gone"
        async with self._runtime.db.sessions() as session:
            # one executemany each: a batch costs three statements, not two per delivery
            await update_by_id(session, Delivery, updates)
            await insert_rows(session, DeliveryAttempt, attempts)
            failing = await self._track_health(session, outcomes, now)
            await session.commit()
        _count_finished(updates, outcomes)
        for subscription_id, since in failing.items():
            hours = self._settings.subscription_disable_after_hours
            if since <= now - timedelta(hours=hours):
                to_disable.setdefault(subscription_id, f"nothing but failures for {hours:g} hours")
        for subscription_id, reason in to_disable.items():
            await disable(self._runtime, subscription_id, reason)
            log.warning("subscription_disabled", subscription_id=subscription_id, reason=reason)

    def _next_state(self, delivery: Delivery, outcome: Outcome, now: datetime) -> dict[str, object]:
        values: dict[str, object] = {"lease_owner": None, "lease_until": None, "updated_at": now}
        if outcome.deferred_until is not None:
            return {**values, "next_attempt_at": outcome.deferred_until}
        if outcome.skip_reason is not None:
            return {
                **values,
                "status": DeliveryStatus.DEAD.value,
                "last_error": outcome.skip_reason,
                "completed_at": now,
            }
        values.update(
            attempts=outcome.number,
            last_status_code=outcome.status_code,
            last_error=outcome.error or (None if outcome.succeeded else f"HTTP {outcome.status_code}"),
        )
        if outcome.succeeded:
            return {**values, "status": DeliveryStatus.SUCCEEDED.value, "completed_at": now, "last_error": None}
        schedule = self._settings.retry_schedule
        position = outcome.number - delivery.schedule_base  # attempts made in this schedule
        if position >= len(schedule) or outcome.status_code == 410:
            log.warning("delivery_dead", delivery_id=delivery.id, attempts=outcome.number)
            return {**values, "status": DeliveryStatus.DEAD.value, "completed_at": now}
        delay = schedule[position] * random.uniform(
            1 - self._settings.delivery_retry_jitter, 1 + self._settings.delivery_retry_jitter
        )
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        return {**values, "status": DeliveryStatus.FAILED.value, "next_attempt_at": now + timedelta(seconds=delay)}

    async def _track_health(self, session: AsyncSession, outcomes: list[Outcome], now: datetime) -> dict[str, datetime]:
        """Clear ``failing_since`` on any success; start it on a first failure. Returns the failing."""
        attempted = [o for o in outcomes if o.deferred_until is None and o.skip_reason is None]
        ok = {o.subscription_id for o in attempted if o.succeeded}
        bad = {o.subscription_id for o in attempted if not o.succeeded} - ok
        # A healthy subscription costs no statement. Its row was read when the delivery was claimed
        # or staged; one failing since then is cleared by the next success read after it.
        if any(o.succeeded and o.subscription_failing for o in attempted):
            await session.execute(
                update(Subscription)
                .where(Subscription.id.in_(ok), Subscription.failing_since.is_not(None))
                .values(failing_since=None)
                .execution_options(synchronize_session=False)
            )
        failing: dict[str, datetime] = {}
        for subscription_id in bad:
            subscription = await session.get(Subscription, subscription_id, populate_existing=True)
            if subscription is None:
                continue
            if subscription.failing_since is None:
                subscription.failing_since = now
            failing[subscription_id] = subscription.failing_since
        return failing


def _outcome_class(outcome: Outcome) -> str:
    if outcome.status_code is not None:
        return f"{outcome.status_code // 100}xx"
    if outcome.refused:
        return "refused"
    return "timeout" if outcome.error and outcome.error.startswith("timeout") else "error"


def _count_finished(updates: list[dict[str, object]], outcomes: list[Outcome]) -> None:
    """Metrics for what was just committed: final states, and the pipeline latency of successes."""
    now = datetime.now(UTC)
    for values, outcome in zip(updates, outcomes, strict=True):
        status = values.get("status")
        if status in (DeliveryStatus.SUCCEEDED.value, DeliveryStatus.DEAD.value):
            DELIVERIES_FINISHED.labels(status=status).inc()
        if status == DeliveryStatus.SUCCEEDED.value and outcome.received_at is not None:
            INBOUND_TO_DELIVERED_SECONDS.labels(origin=outcome.origin or "unknown").observe(
                max(0.0, (now - outcome.received_at).total_seconds())
            )


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; the rest is not read (a huge body cannot hurt us).

    Leaving the rest unread makes aiohttp close the connection on release instead of reusing it.
    """
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
