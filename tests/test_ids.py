"""Event and delivery ids: the published shape, in creation order, never repeated."""

from __future__ import annotations

import re
import time

from webhook_service.contract.schemas import EVENT_ID_PATTERN
from webhook_service.storage.outbox import new_delivery_id, new_event_id

DELIVERY_ID = re.compile(r"^dlv_[0-9a-f]{24}$")


def _next_millisecond(after: int) -> int:
    """Wait for the clock to pass ``after`` (milliseconds since the epoch), without sleeping."""
    while (now := time.time_ns() // 1_000_000) <= after:
        pass
    return now


def test_ids_keep_the_published_shape_and_begin_with_their_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    event_id, delivery_id = new_event_id(), new_delivery_id()
    after = time.time_ns() // 1_000_000

    assert re.fullmatch(EVENT_ID_PATTERN, event_id)
    assert DELIVERY_ID.fullmatch(delivery_id)
    for made in (event_id, delivery_id):
        assert before <= int(made[4:16], 16) <= after


def test_an_id_made_later_sorts_after_one_made_earlier() -> None:
    earlier = [new_event_id(), new_delivery_id()]
    _next_millisecond(max(int(made[4:16], 16) for made in earlier))
    later = [new_event_id(), new_delivery_id()]

    assert earlier[0] < later[0] and earlier[1] < later[1]


def test_ids_made_in_the_same_milliseconds_never_repeat() -> None:
    made = [new_event_id() for _ in range(50_000)] + [new_delivery_id() for _ in range(50_000)]

    assert len(set(made)) == len(made)
    # many share a millisecond: their random half is what keeps them apart
    assert len({identifier[:16] for identifier in made}) < len(made) / 10
