"""A delivery attempt's outcome, and what is made of it once recorded: its row, logs and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from webhook_service.contract.operational import Operational, delivery_dead
from webhook_service.contract.types import is_operational
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import DELIVERIES_FINISHED, INBOUND_TO_DELIVERED_SECONDS, labelled
from webhook_service.storage.models import DeliveryStatus

log = get_logger("webhook_service.delivery.worker")  # the worker's lines, under its name as before


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
    event_id: str = ""
    event_type: str = ""
    tenant_id: str | None = None  # the event's

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


ATTEMPT_FIELDS = ("delivery_id", "number", "started_at", "status_code", "latency_ms", "error", "response_body")
"""What a delivery attempt's row holds, each from the outcome's field of the same name."""


def attempt_row(outcome: Outcome) -> dict[str, object]:
    return {name: getattr(outcome, name) for name in ATTEMPT_FIELDS}


def log_failures(updates: list[dict[str, object]], outcomes: list[Outcome]) -> None:
    """A warning per failed attempt (what failed, and when the next try is), once it is recorded."""
    for values, outcome in zip(updates, outcomes, strict=True):
        if outcome.succeeded or outcome.deferred_until is not None or outcome.skip_reason is not None:
            continue
        failure = {
            "delivery_id": outcome.delivery_id,
            "subscription_id": outcome.subscription_id,
            "attempt": outcome.number,
            "status": outcome.status_code,
            "error": outcome.error,
        }
        if values.get("status") == DeliveryStatus.DEAD.value:
            log.warning("delivery_dead", **failure)
        else:
            next_at = values.get("next_attempt_at")
            log.warning(
                "delivery_attempt_failed",
                **failure,
                next_attempt_at=next_at.isoformat() if isinstance(next_at, datetime) else None,
            )


def exhausted(values: dict[str, object], outcome: Outcome) -> bool:
    """Whether this recorded attempt made its delivery dead by using up the retry schedule: what
    ``delivery.dead`` announces. Not for a 410 (``subscription.disabled`` says it), nor for a
    delivery of an operational event (a dead ``delivery.dead`` announcing itself would never end).
    """
    return (
        values.get("status") == DeliveryStatus.DEAD.value
        and outcome.skip_reason is None
        and outcome.status_code != 410
        and not is_operational(outcome.event_type)
    )


def dead_event(values: dict[str, object], outcome: Outcome, now: datetime) -> Operational:
    return delivery_dead(
        delivery_id=outcome.delivery_id,
        event_id=outcome.event_id,
        event_type=outcome.event_type,
        tenant_id=outcome.tenant_id,
        subscription_id=outcome.subscription_id,
        attempts=outcome.number,
        last_status_code=outcome.status_code,
        last_error=str(values["last_error"]) if values.get("last_error") else None,
        at=now,
    )


def outcome_class(outcome: Outcome) -> str:
    if outcome.status_code is not None:
        return f"{outcome.status_code // 100}xx"
    if outcome.refused:
        return "refused"
    return "timeout" if outcome.error and outcome.error.startswith("timeout") else "error"


def count_finished(updates: list[dict[str, object]], outcomes: list[Outcome]) -> None:
    """Metrics for what was just committed: final states, and the pipeline latency of successes."""
    now = datetime.now(UTC)
    for values, outcome in zip(updates, outcomes, strict=True):
        status = values.get("status")
        if status in (DeliveryStatus.SUCCEEDED.value, DeliveryStatus.DEAD.value):
            labelled(DELIVERIES_FINISHED, status).inc()
        if status == DeliveryStatus.SUCCEEDED.value and outcome.received_at is not None:
            labelled(INBOUND_TO_DELIVERED_SECONDS, outcome.origin or "unknown").observe(
                max(0.0, (now - outcome.received_at).total_seconds())
            )
