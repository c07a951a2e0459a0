"""Prometheus metrics (prometheus-client), defined once and shared by every part of the service.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Label values
are bounded sets (refusal reasons, outcome classes, resource names), never ids.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

Metric = TypeVar("Metric", Counter, Gauge, Histogram)

#: Latency buckets from a millisecond to a minute: the hot path is milliseconds, retries are not.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

INBOUND_ACCEPTED = Counter(
    "webhook_service_inbound_accepted_total",
    "FreshBooks deliveries accepted (committed to the inbox), by kind: event, duplicate, verification.",
    ["kind"],
)
INBOUND_REFUSED = Counter(
    "webhook_service_inbound_refused_total",
    "FreshBooks deliveries refused (nothing stored), by reason.",
    ["reason"],
)
INGEST_SECONDS = Histogram(
    "webhook_service_inbound_ingest_seconds",
    "From the start of an accepted webhook request to its inbox row being committed.",
    buckets=_LATENCY,
)
BACKLOG = Gauge(
    "webhook_service_backlog",
    "Work due now in the database (all replicas), read at scrape time: inbox events to process and deliveries to send.",
    ["queue"],
    multiprocess_mode="mostrecent",  # under `serve --workers` only the web process sets it
)
DELIVERY_ATTEMPTS = Counter(
    "webhook_service_delivery_attempts_total",
    "Delivery attempts by outcome: 2xx, 3xx, 4xx, 5xx (status class), timeout, error (no response), "
    "refused (egress guard).",
    ["outcome"],
)
DELIVERY_ATTEMPT_SECONDS = Histogram(
    "webhook_service_delivery_attempt_seconds",
    "Duration of one delivery attempt (connect, send, read the response).",
    buckets=_LATENCY,
)
DELIVERIES_FINISHED = Counter(
    "webhook_service_deliveries_finished_total",
    "Deliveries that reached a final state: succeeded or dead.",
    ["status"],
)
INBOUND_TO_DELIVERED_SECONDS = Histogram(
    "webhook_service_inbound_to_delivered_seconds",
    "From receiving the FreshBooks webhook (or the backfill finding the change) to the subscriber's "
    "2xx, per successful delivery.",
    ["origin"],
    buckets=_LATENCY,
)
TOKEN_REFRESHES = Counter(
    "webhook_service_token_refreshes_total",
    "FreshBooks token refreshes by outcome: ok, refused (FreshBooks said no), error (network, storage).",
    ["outcome"],
)
BACKFILL_RECOVERED = Counter(
    "webhook_service_backfill_recovered_events_total",
    "Events the polling backfill emitted because no webhook had delivered that object version.",
    ["resource"],
)
LEASES_LOST = Counter(
    "webhook_service_leases_lost_total",
    "Writes that found their lease gone (expired and taken by another worker or process, or cleared by "
    "an operator) and so changed nothing, by kind: delivery, inbox, token_refresh.",
    ["kind"],
)
STORAGE_UNAVAILABLE = Counter(
    "webhook_service_storage_unavailable_total",
    "Webhooks answered 503 because the inbox could not commit in time, by reason: busy (locked or "
    "slow), full (disk full), error (other database failure), queue_full.",
    ["reason"],
)
SQLITE_WRITER_HELD_SECONDS = Counter(
    "webhook_service_sqlite_writer_held_seconds_total",
    "SQLite only: seconds this process held SQLite's one writer (PATH-writer.lock), reported about once a "
    "second. Summed over the processes, its rate is the share of time the writer was busy: near 1, more "
    "processes cannot write more.",
)
RETENTION_PURGED = Counter(
    "webhook_service_retention_purged_rows_total",
    "Rows the retention purge deleted, by table: delivery_attempts, deliveries, events, inbox_events, "
    "object_versions, pending_connections, leases.",
    ["table"],
)
RETENTION_BODIES_CLEARED = Counter(
    "webhook_service_retention_response_bodies_cleared_total",
    "Delivery attempts whose subscriber response body the retention purge cleared (the attempt stays).",
)

_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Metric, *values: str) -> Metric:
    """``metric.labels(*values)``, looked up once per metric and values. ``labels`` takes a lock and
    builds its key on every call, and the hot path counts every webhook, attempt and delivery; the
    label values are bounded sets (see above), so this stays small."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child  # type: ignore[no-any-return]
