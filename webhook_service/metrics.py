"""Prometheus metrics (prometheus-client), defined once and shared by every part of the service."""

from __future__ import annotations

from prometheus_client import Counter

BACKFILL_RECOVERED = Counter(
    "webhook_service_backfill_recovered_events_total",
    "Events the polling backfill emitted because no webhook had delivered that object version.",
    ["resource"],
)
