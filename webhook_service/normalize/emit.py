"""Committing normalized events: the ledger, the events and their deliveries, in the caller's transaction.

The webhook path and the polling backfill both come through here, so a version emitted by one is
never emitted again by the other. Nor is a state older than one already emitted: two fetches of
one object can finish in either order (a slow answer, a sweep's page read before a webhook's GET),
and the older state sent last would leave the subscriber behind for good. "Older" is decided by
when each reading request was sent (``observed_at``), not when it finished: a state read by a
request sent after another one finished is certainly newer, and when two requests overlap, a
wrong call can only hold back the newer state, which the ledger then lacks and the next sweep
emits, never leave the subscriber on the older one. Replicas' clocks are assumed in step (NTP).

Each added event is numbered in its object's sequence (``data.sequence``) here, in the same
transaction, so numbers follow the order in which states are committed. Many events go in a handful
of statements (one ledger lookup, one sequence upsert, three bulk inserts), which is what keeps the
per-event cost of a busy inbox low.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from webhook_service.core.logs import get_logger
from webhook_service.core.signals import Grant
from webhook_service.normalize.events import NormalizedEvent
from webhook_service.storage import ledger as ledger_store
from webhook_service.storage import sequences
from webhook_service.storage import subscriptions as subscription_store
from webhook_service.storage.bulk import Write
from webhook_service.storage.leased import EventToSend, HandedDelivery, LeasedDelivery, SubscriptionToSend
from webhook_service.storage.outbox import delivery_rows, event_row, ordering_key
from webhook_service.storage.session import Session

log = get_logger(__name__)

Staged = tuple[NormalizedEvent, str, int | None]
"""An event, its tenant id, and the inbox event it came from (None for the backfill)."""

HandedRow = tuple[dict[str, Any], dict[str, Any], SubscriptionToSend]
"""A delivery leased under a grant, as its row, its event's row and its subscription."""


def handed(rows: Sequence[HandedRow]) -> list[HandedDelivery]:
    """The deliveries to hand over, as a delivery worker takes them (:mod:`~webhook_service.storage.leased`),
    built once the transaction that staged them is committed, not while it holds SQLite's one writer."""
    events: dict[str, EventToSend] = {}
    built: list[HandedDelivery] = []
    for delivery, event, subscription in rows:
        record = events.get(event["id"])
        if record is None:
            record = events[event["id"]] = EventToSend.of(event)
        built.append((LeasedDelivery.of(delivery), record, subscription))
    return built


async def stage(
    session: Session, event: NormalizedEvent, *, tenant_id: str, inbox_event_id: int | None, now: datetime
) -> bool:
    """Add one event unless its version was already emitted; see :func:`stage_many`."""
    return (await stage_many(session, [(event, tenant_id, inbox_event_id)], now=now))[0]


async def stage_many(session: Session, items: Sequence[Staged], *, now: datetime) -> list[bool]:
    """Add each event (with its ledger row and deliveries) unless its version was already emitted
    or a newer state of its object was (see the module docstring).

    Returns, per item, whether it was added; the caller commits. The objects are locked until then
    (:func:`~webhook_service.storage.ledger.lock_objects`); should a concurrent writer of the same
    version still get in, the ledger's insert raises :class:`~webhook_service.storage.session.Conflict`,
    which means the same.
    """
    return (await stage_leased(session, items, now=now, lease=None)).added


class Staging(NamedTuple):
    added: list[bool]
    """Per item, whether it was added."""
    handed: list[HandedRow]
    """The deliveries leased under the grant, for the caller to hand over (:func:`handed`) once committed."""
    waiting: int
    """New deliveries left unleased, for a claim to take (past the grant's room, or in strict order)."""


Lease = Callable[[int], Grant | None]
"""Room asked for so many deliveries, once they are counted (:meth:`~webhook_service.core.signals.Lane.lease`)."""


async def stage_leased(
    session: Session, items: Sequence[Staged], *, now: datetime, lease: Lease | None, along: Sequence[Write] = ()
) -> Staging:
    """:func:`stage_many`, with as many of the new deliveries as ``lease`` grants room for leased
    under its grant.

    The room is asked for once the deliveries are counted, inside the transaction, not before it
    for all there is: a claim meanwhile would find none, and the deliveries only a claim takes
    (past the room, or in strict order) could then wait through a string of commits that each
    held all of it. Also returns the leased deliveries with their event and subscription, for the
    caller to hand to its delivery worker once committed under the grant ``lease`` made (see
    :class:`~webhook_service.core.signals.Lane`). ``along``: the caller's own writes in this
    transaction, sent with the staged rows (see :func:`~webhook_service.storage.ledger.record`).
    """
    objects = {(tenant_id, e.resource, e.object_id) for e, tenant_id, _ in items if e.version is not None}
    await ledger_store.lock_objects(session, objects)
    emitted = await ledger_store.emitted(session, objects)
    kept: list[Staged] = []
    ledger: list[dict[str, Any]] = []
    added: list[bool] = []
    for event, tenant_id, inbox_event_id in items:
        observed = event.observed_at or now
        if event.version is not None:
            entry = emitted.setdefault((tenant_id, event.resource, event.object_id), ledger_store.Emitted())
            if event.version in entry.versions:
                added.append(False)
                continue
            if entry.newest_read is not None and entry.newest_read > observed:
                log.info("event_superseded", tenant_id=tenant_id, resource=event.resource, object_id=event.object_id)
                added.append(False)
                continue
            entry.versions.add(event.version)  # the same version twice in one batch is emitted once
            entry.newest_read = max(entry.newest_read or observed, observed)
            ledger.append(
                {
                    "tenant_id": tenant_id,
                    "resource": event.resource,
                    "object_id": event.object_id,
                    "version": event.version,
                    "event_id": event.id,
                    "origin": event.origin,
                    "seen_at": now,
                    "observed_at": observed,
                }
            )
        kept.append((event, tenant_id, inbox_event_id))
        added.append(True)
    events, deliveries, handed = await _fan_out(session, kept, now=now, lease=lease)
    await ledger_store.record(session, versions=ledger, events=events, deliveries=deliveries, along=along)
    return Staging(added, handed, len(deliveries) - len(handed))


async def _fan_out(
    session: Session, kept: Sequence[Staged], *, now: datetime, lease: Lease | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[HandedRow]]:
    """The rows of the events to add, numbered in their objects' sequences, and of their deliveries.

    A strict-order subscription's deliveries are never handed over: a claim is what checks that
    the object's earlier deliveries are final.
    """
    numbers = await sequences.advance(session, Counter((tid, e.resource, e.object_id) for e, tid, _ in kept))
    subscriptions = await subscription_store.enabled(session) if kept else []
    by_id = {subscription.id: subscription for subscription in subscriptions}
    events: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    of_event: list[dict[str, Any]] = []
    for event, tenant_id, inbox_event_id in kept:
        key = (tenant_id, event.resource, event.object_id)
        sequence = numbers[key]
        numbers[key] += 1
        document = {**event.document, "data": {**event.document["data"], "sequence": sequence}}
        events.append(
            event_row(
                document,
                tenant_id=tenant_id,
                resource=event.resource,
                object_id=event.object_id,
                origin=event.origin,
                occurred_at=event.occurred_at,
                inbox_event_id=inbox_event_id,
                now=now,
                received_at=event.received_at,
            )
        )
        new = delivery_rows(
            subscriptions,
            event_id=event.id,
            event_type=event.type,
            tenant_id=tenant_id,
            document=document,
            ordered_as=(ordering_key(*key), sequence),
            now=now,
        )
        deliveries.extend(new)
        of_event.extend(events[-1] for _ in new)
    handed: list[HandedRow] = []
    if lease is not None:
        for row in deliveries:  # past the grant's room (or in strict order) they wait unleased for a claim
            row["lease_owner"], row["lease_until"] = None, None
        leasable = [n for n, row in enumerate(deliveries) if row["ordering_key"] is None]
        grant = lease(len(leasable)) if leasable else None
        if grant is not None:
            for n in leasable[: grant.count]:
                row = deliveries[n]
                row["lease_owner"], row["lease_until"] = grant.token, grant.until
                handed.append((row, of_event[n], by_id[row["subscription_id"]]))
    return events, deliveries, handed
