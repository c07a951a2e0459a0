"""Delivery workers: claim due deliveries, sign, POST, record every attempt, schedule the next.

Outcomes: 2xx succeeds; anything else (3xx included: redirects are never followed) fails and is
retried on the schedule (``DELIVERY_RETRY_SCHEDULE``, each delay ±``DELIVERY_RETRY_JITTER``);
429/502/503/504 wait at least as long as ``Retry-After`` asks; ``410 Gone`` disables the
subscription; a subscription failing without a single success for
``SUBSCRIPTION_DISABLE_AFTER_HOURS`` is disabled; after the last attempt a delivery is dead. The
operational events these changes announce (``delivery.dead``, ``subscription.disabled``) are
committed with the change itself.
Scheduling uses the injected clock (tests simulate time); the signature timestamp is always the
real send time, because subscribers check it against theirs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog

from webhook_service.core.batching import Batcher
from webhook_service.core.egress import egress_refusal
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import DELIVERY_ATTEMPT_SECONDS, DELIVERY_ATTEMPTS, labelled
from webhook_service.core.retry_after import parse_retry_after
from webhook_service.delivery import signing
from webhook_service.delivery.outcomes import (
    Outcome,
    attempt_row,
    count_finished,
    dead_event,
    exhausted,
    log_failures,
    outcome_class,
)
from webhook_service.delivery.subscriptions import disable, secrets_for_signing
from webhook_service.runtime import Runtime
from webhook_service.storage import deliveries as claims
from webhook_service.storage import delivery_records as records
from webhook_service.storage import outbox
from webhook_service.storage import subscriptions as subscription_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.leased import EventToSend, HandedDelivery, LeasedDelivery, SubscriptionToSend
from webhook_service.storage.models import Delivery, DeliveryStatus
from webhook_service.storage.session import Conflict, Session

log = get_logger(__name__)

RESPONSE_BODY_LIMIT = 20_000
SLOW_DOWN = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER = 24 * 3600.0
USER_AGENT = "webhook-service (+https://www.standardwebhooks.com)"
MIN_SEND_SECONDS = 1.0


class DeliveryWorker:
    """Sends due deliveries; one runs in each service process, claiming in ``DELIVERY_WORKERS`` loops.

    A delivery is leased only when it can start at once: the process's claims and hand-overs share one
    :class:`~webhook_service.core.signals.Capacity` of ``DELIVERY_CONCURRENCY`` sends, claims ask for no
    more than its room, and the inbox processor hands over no more than that either. So a lease
    never runs while its delivery waits for a slot, and each send's timeout is cut to what is left
    of its lease (keeping ``DELIVERY_LEASE_SECONDS`` for recording the outcome). Outcomes are
    recorded together (group commit) as they come in, each fenced on its lease
    (:func:`~webhook_service.storage.deliveries.fence`): a worker whose lease was lost records
    nothing, and an attempt number is recorded once per delivery (a unique constraint).
    """

    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._runtime = runtime
        self._clock = clock
        self._settings = runtime.settings
        self._recorder: Batcher[tuple[Outcome, LeasedDelivery], None] = Batcher(
            self._record_batch, name="delivery-record", split_on=(Conflict,)
        )
        self._capacity = runtime.delivery_capacity

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self._settings.delivery_lease_seconds + self._settings.delivery_timeout)

    async def run_once(self) -> int:
        """Claim and send one batch of due deliveries; returns how many were claimed."""
        now = self._clock()
        batch = await self._claim(self._settings.delivery_batch_size, now)
        if not batch:
            return 0
        outcomes = await asyncio.gather(*(self._attempt_in_slot(d, e, s, now) for d, e, s in batch))
        sent = [outcome for outcome in outcomes if outcome is not None]
        await self._record(sent, {d.id: d for d, _, _ in batch})
        await self._give_back_unsent(batch, sent)
        return len(batch)

    async def run_forever(self, *, take_handovers: bool = False, loops: int = 1) -> None:
        """Send until cancelled, claiming in ``loops`` loops (``DELIVERY_WORKERS``); with
        ``take_handovers`` (one worker per process) this worker also receives the deliveries this
        process's inbox processor commits, without a claim.

        The loops share this worker's outcome recorder, so a process's outcomes are committed
        together however many loops claim: a recorder per loop split each group commit N ways.
        """
        signals = self._runtime.signals
        lane = signals.delivery_lane
        self._capacity.when_freed(signals.deliveries_ready)
        if take_handovers:
            lane.attach(self._start, lease=self._lease, capacity=self._capacity)
        try:
            await asyncio.gather(*(self._claim_forever() for _ in range(loops)))
        finally:
            if take_handovers:
                lane.detach()

    async def _claim_forever(self) -> None:
        signals = self._runtime.signals
        while True:
            claimed: Sequence[HandedDelivery] = []
            try:
                claimed = await self._claim(self._settings.delivery_batch_size, self._clock())
            except Exception:
                log.exception("delivery_worker_failed")
            self._start(claimed)
            if not claimed:
                await signals.wait_deliveries(self._settings.delivery_poll_interval)

    def _start(self, items: Sequence[HandedDelivery]) -> None:
        """Start sending ``items``, for which capacity is already reserved (one unit each)."""
        now = self._clock()
        for delivery, event, subscription in items:
            self._runtime.tasks.spawn(self._deliver(delivery, event, subscription, now), name="delivery")

    async def _claim(self, limit: int, now: datetime) -> Sequence[HandedDelivery]:
        """Claim up to ``limit`` due deliveries, no more than there is room to start now; the room
        taken stays reserved for what was claimed."""

        async def take(room: int) -> list[HandedDelivery]:
            async with self._runtime.db.sessions() as session:
                return await claims.claim_deliveries(
                    session, owner=self._runtime.lease_owner, now=now, limit=room, lease=self._lease
                )

        claimed = await self._capacity.claim(limit, take)
        if claimed:
            log.debug("deliveries_claimed", count=len(claimed))
        return claimed

    async def _attempt_in_slot(
        self, delivery: LeasedDelivery, event: EventToSend, subscription: SubscriptionToSend, now: datetime
    ) -> Outcome | None:
        """:meth:`_attempt`, its unit of capacity given back as soon as the send is over."""
        try:
            return await self._attempt(delivery, event, subscription, now)
        finally:
            self._capacity.give_back()

    async def _deliver(
        self, delivery: LeasedDelivery, event: EventToSend, subscription: SubscriptionToSend, now: datetime
    ) -> None:
        structlog.contextvars.bind_contextvars(delivery_id=delivery.id, event_id=event.id)  # this task's own context
        outcome = await self._attempt_in_slot(delivery, event, subscription, now)
        if outcome is None:  # no time left in its lease to send: let it be claimed afresh
            await self._give_back_unsent([(delivery, event, subscription)], [])
            return
        try:
            await self._recorder.submit((outcome, delivery))
        except Exception:  # the lease runs out and the delivery is attempted again: at least once
            log.exception("delivery_record_failed", delivery_id=delivery.id)

    async def _give_back_unsent(self, batch: Sequence[HandedDelivery], sent: Sequence[Outcome]) -> None:
        done = {outcome.delivery_id for outcome in sent}
        unsent = {d.id: d.lease_owner for d, _, _ in batch if d.id not in done}
        if unsent:
            log.warning("delivery_lease_too_short", count=len(unsent))
            await claims.release(self._runtime.db, Delivery, unsent)

    async def idle(self) -> None:
        """Wait for the outcomes being recorded (at shutdown, before the process's leases go back:
        a delivery cut off mid-send is sent again, with the same ``webhook-id``, at least once)."""
        await self._recorder.idle()

    async def _record_batch(self, items: Sequence[tuple[Outcome, LeasedDelivery]]) -> list[None]:
        await self._record([outcome for outcome, _ in items], {d.id: d for _, d in items})
        return [None] * len(items)

    # -- one attempt --------------------------------------------------------------------------
    async def _attempt(
        self, delivery: LeasedDelivery, event: EventToSend, subscription: SubscriptionToSend, now: datetime
    ) -> Outcome | None:
        """One send, or None when what is left of the lease cannot cover it (then nothing is sent)."""
        outcome = Outcome(delivery.id, subscription.id, delivery.attempts + 1, now)
        outcome.event_id, outcome.event_type, outcome.tenant_id = event.id, event.type, event.tenant_id
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
        budget = self._send_budget(delivery)
        if budget is None:
            return None
        sent_at = datetime.now(UTC)
        headers = {
            **signing.headers(secrets_for_signing(self._runtime, subscription, now), event.id, sent_at, event.payload),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        started = time.perf_counter()
        try:
            self._runtime.egress.check_request_target(subscription.url)  # IP literals skip the resolver
            async with self._runtime.outbound.post(
                subscription.url,
                data=event.payload.encode("utf-8"),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=budget),
            ) as response:
                body = await _read_limited(response, RESPONSE_BODY_LIMIT)
            outcome.status_code = response.status
            outcome.response_body = body.decode("utf-8", "replace")
            if response.status in SLOW_DOWN:
                outcome.retry_after = parse_retry_after(response.headers.get("retry-after"))
        except TimeoutError:  # asyncio.TimeoutError; aiohttp's ServerTimeoutError is one too
            outcome.error = f"timeout after {budget:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a malformed stored URL
            refusal = egress_refusal(exc)
            outcome.refused = refusal is not None
            outcome.error = str(refusal) if refusal else f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        outcome.latency_ms = round(elapsed * 1000, 2)
        DELIVERY_ATTEMPT_SECONDS.observe(elapsed)
        labelled(DELIVERY_ATTEMPTS, outcome_class(outcome)).inc()
        return outcome

    def _send_budget(self, delivery: LeasedDelivery) -> float | None:
        """Seconds this send may take: ``DELIVERY_TIMEOUT``, cut so that ``DELIVERY_LEASE_SECONDS``
        of the lease are left to record the outcome; None when less than a second would be left."""
        if delivery.lease_until is None:  # not leased (a test drives _attempt directly)
            return self._settings.delivery_timeout
        left = (delivery.lease_until - self._clock()).total_seconds() - self._settings.delivery_lease_seconds
        budget = min(self._settings.delivery_timeout, left)
        return budget if budget >= MIN_SEND_SECONDS else None

    # -- bookkeeping --------------------------------------------------------------------------
    async def _record(self, outcomes: list[Outcome], deliveries: dict[str, LeasedDelivery]) -> None:
        if not outcomes:
            return
        now = self._clock()
        # The rows first, before the fence takes the database's write lock (SQLite's one writer)
        states = {o.delivery_id: self._next_state(deliveries[o.delivery_id], o, now) for o in outcomes}
        async with self._runtime.db.sessions() as session:
            held = {o.delivery_id: deliveries[o.delivery_id].lease_owner for o in outcomes}
            kept = await claims.fence(session, Delivery, held)  # a lost lease records nothing
            outcomes = [outcome for outcome in outcomes if outcome.delivery_id in kept]
            updates = [{"id": o.delivery_id, **states[o.delivery_id]} for o in outcomes]
            sent = [o for o in outcomes if o.deferred_until is None and o.skip_reason is None]
            to_disable = {o.subscription_id: "the endpoint answered 410 Gone" for o in sent if o.status_code == 410}
            await records.record_outcomes(session, updates, [attempt_row(o) for o in sent])  # a few statements
            dead = [dead_event(v, o, now) for v, o in zip(updates, outcomes, strict=True) if exhausted(v, o)]
            await outbox.emit(session, *dead, now=now)
            failing = await self._track_health(session, outcomes, now)
            await session.commit()
        count_finished(updates, outcomes)
        log_failures(updates, outcomes)
        ordered = (deliveries[o.delivery_id].ordering_key for o in outcomes)
        if any(key and v.get("completed_at") for key, v in zip(ordered, updates, strict=True)):
            self._runtime.signals.deliveries_ready()  # the next of a strict-order object may go now
        for subscription_id, since in failing.items():
            hours = self._settings.subscription_disable_after_hours
            if since <= now - timedelta(hours=hours):
                to_disable.setdefault(subscription_id, f"nothing but failures for {hours:g} hours")
        for subscription_id, reason in to_disable.items():
            await disable(self._runtime, subscription_id, reason)
            log.warning("subscription_disabled", subscription_id=subscription_id, reason=reason)

    def _next_state(self, delivery: LeasedDelivery, outcome: Outcome, now: datetime) -> dict[str, object]:
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
            return {**values, "status": DeliveryStatus.DEAD.value, "completed_at": now}
        delay = schedule[position] * random.uniform(
            1 - self._settings.delivery_retry_jitter, 1 + self._settings.delivery_retry_jitter
        )
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        return {**values, "status": DeliveryStatus.FAILED.value, "next_attempt_at": now + timedelta(seconds=delay)}

    async def _track_health(self, session: Session, outcomes: list[Outcome], now: datetime) -> dict[str, datetime]:
        """Clear ``failing_since`` on any success; start it on a first failure. Returns the failing."""
        attempted = [o for o in outcomes if o.deferred_until is None and o.skip_reason is None]
        ok = {o.subscription_id for o in attempted if o.succeeded}
        bad = {o.subscription_id for o in attempted if not o.succeeded} - ok
        # A healthy subscription costs no statement. Its row was read when the delivery was claimed
        # or staged; one failing since then is cleared by the next success read after it.
        if any(o.succeeded and o.subscription_failing for o in attempted):
            await subscription_store.clear_failing(session, ok)
        return await subscription_store.start_failing(session, bad, now)


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
