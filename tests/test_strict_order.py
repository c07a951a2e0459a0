"""Strict order per object: a subscription that asks for it gets an object's events one at a time,
in sequence, while other objects flow; without it, a retry can be overtaken."""

from __future__ import annotations

import json

from test_delivery import Clock, _deliveries, _emit

from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.sandbox.sink import Reply
from webhook_service.storage import sequences


def _seen(sink, path):
    """(object id, sequence) of each request to ``path``, in arrival order."""
    out = []
    for request in sink.sink.received:
        if request.path == path:
            data = json.loads(request.body)["data"]
            out.append((data["object_id"], data["sequence"]))
    return out


async def test_a_failing_first_version_holds_back_only_its_own_object(runtime, tenant, sink):
    clock = Clock()
    strict = await subscriptions.create(runtime, {"url": f"{sink.base_url}/strict", "strict_order": True})
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/loose"})
    failing = True

    def first_version_of_invoice_1_fails(path: str, body: bytes) -> Reply | None:
        data = json.loads(body)["data"]
        return Reply(500) if failing and (data["object_id"], data["sequence"]) == ("1", 1) else None

    sink.sink.respond(first_version_of_invoice_1_fails)
    await _emit(runtime, tenant, clock.now, object_id="1")
    await _emit(runtime, tenant, clock.now, object_id="1", obj={"id": 1, "updated": "2026-11-21 07:00:09"})
    await _emit(runtime, tenant, clock.now, object_id="2")
    worker = DeliveryWorker(runtime, clock=clock)

    await worker.run_once()
    assert sorted(_seen(sink, "/strict")) == [("1", 1), ("2", 1)]  # invoice 1's second version waits
    assert sorted(_seen(sink, "/loose")) == [("1", 1), ("1", 2), ("2", 1)]  # without the option: overtaken

    await _emit(runtime, tenant, clock.now, object_id="2", obj={"id": 2, "updated": "2026-11-21 07:00:09"})
    await worker.run_once()  # other objects keep flowing meanwhile
    assert _seen(sink, "/strict")[-1] == ("2", 2)

    retry_at = min(
        d.next_attempt_at for d in await _deliveries(runtime, strict.subscription.id) if d.status == "failed"
    )
    clock.advance_to(retry_at)
    await worker.run_once()  # the retry fails again: the second version still waits
    assert _seen(sink, "/strict").count(("1", 1)) == 2 and ("1", 2) not in _seen(sink, "/strict")

    failing = False
    failed = [d for d in await _deliveries(runtime, strict.subscription.id) if d.status == "failed"]
    clock.advance_to(min(d.next_attempt_at for d in failed))
    await worker.run_once()  # the first version goes through...
    await worker.run_once()  # ...and only then the second
    strict_seen = _seen(sink, "/strict")
    assert [seen for seen in strict_seen if seen[0] == "1"] == [("1", 1), ("1", 1), ("1", 1), ("1", 2)]
    assert {d.status for d in await _deliveries(runtime, strict.subscription.id)} == {"succeeded"}


async def test_a_dead_first_version_releases_the_next(runtime, tenant, sink):
    clock = Clock()
    strict = await subscriptions.create(runtime, {"url": f"{sink.base_url}/strict", "strict_order": True})
    sink.sink.respond(lambda path, body: Reply(500) if json.loads(body)["data"]["sequence"] == 1 else None)
    await _emit(runtime, tenant, clock.now, object_id="5")
    await _emit(runtime, tenant, clock.now, object_id="5", obj={"id": 5, "updated": "2026-11-21 07:00:09"})
    worker = DeliveryWorker(runtime, clock=clock)
    for _ in range(len(runtime.settings.retry_schedule) + 1):
        due = [d for d in await _deliveries(runtime, strict.subscription.id) if d.status in ("pending", "failed")]
        if not due:
            break
        head = min(due, key=lambda d: d.sequence)  # the later one waits for it, whenever it is due
        clock.advance_to(head.next_attempt_at)
        await worker.run_once()
    statuses = [(d.sequence, d.status) for d in await _deliveries(runtime, strict.subscription.id)]
    assert sorted(statuses) == [(1, "dead"), (2, "succeeded")]
    assert _seen(sink, "/strict")[-1] == ("5", 2)


async def test_a_batch_reserves_consecutive_sequences_per_object(runtime):
    a, b, c = ("t", "invoice", "1"), ("t", "invoice", "2"), ("", "subscription", "sub_1")
    async with runtime.db.sessions() as session:
        assert await sequences.advance(session, {b: 2, a: 3, c: 1}) == {a: 1, b: 1, c: 1}
        assert await sequences.advance(session, {a: 1, b: 1}) == {a: 4, b: 3}
        await session.commit()
    async with runtime.db.sessions() as session:
        assert await sequences.advance(session, {c: 2, ("t", "invoice", "3"): 1}) == {c: 2, ("t", "invoice", "3"): 1}
        await session.rollback()  # numbers reserved by a transaction that rolls back are not taken
    async with runtime.db.sessions() as session:
        assert await sequences.advance(session, {c: 1}) == {c: 2}


async def test_a_large_batch_keeps_each_objects_key_as_written(runtime):
    """Many objects in one statement, ids that only look like numbers kept as the text they are:
    ``0042`` and ``42`` are two objects, each with its own counter."""
    keys = [("t", "invoice", f"{n:04d}") for n in range(300)] + [("t", "invoice", "42"), ("", "invoice", "42")]
    async with runtime.db.sessions() as session:
        first = await sequences.advance(session, {key: 2 for key in keys})
        again = await sequences.advance(session, {key: 1 for key in keys})
        await session.commit()
    assert first == {key: 1 for key in keys}
    assert again == {key: 3 for key in keys}
