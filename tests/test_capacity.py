"""A stage's capacity is shared by its claims and the hand-overs of its own process (core.signals).

A claim holds its reservation while it waits for the database; a webhook committed meanwhile must
still find room to be handed over in memory, or it waits for a claim of its own (another
transaction and a poll's delay, and that claim in turn holds the room). So the inbox processor's
claims leave a quarter of its capacity to hand-overs; the delivery worker's claims, which are how
retries and replays reach it, may take all of theirs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from webhook_service.core.signals import Capacity, Lane
from webhook_service.normalize.processor import InboxProcessor
from webhook_service.storage.columns import utcnow


def test_a_webhook_committed_while_a_claim_waits_is_still_handed_over():
    capacity = Capacity(128, kept_for_hand_overs=32)
    handed: list[object] = []
    lane: Lane[object] = Lane(lambda: "token")
    lane.attach(handed.extend, lease=timedelta(seconds=60), capacity=capacity)

    claiming = capacity.reserve_for_claim(1000)  # held while the claim waits for the database
    grant = lane.lease(utcnow(), 20)  # the writer of a group commit of 20 webhooks, meanwhile

    assert claiming == 96
    assert grant is not None and grant.count == 20
    lane.hand_over(grant, list(range(20)))
    assert len(handed) == 20
    assert capacity.used == 96 + 20


async def test_the_inbox_processor_keeps_a_quarter_for_its_webhooks(runtime):
    capacity = InboxProcessor(runtime)._capacity
    assert capacity.kept_for_hand_overs == capacity.limit // 4 > 0
    assert capacity.reserve_for_claim(capacity.limit) == capacity.limit - capacity.limit // 4


async def test_delivery_claims_may_take_every_send(runtime):
    """Retries and replays reach the delivery worker only through claims: to a slow subscriber,
    a quarter kept back would be a quarter fewer sends at once."""
    capacity = runtime.delivery_capacity
    assert capacity.reserve_for_claim(10_000) == runtime.settings.delivery_concurrency


def test_a_claim_takes_nothing_from_what_is_kept_for_hand_overs():
    capacity = Capacity(128, kept_for_hand_overs=32)
    assert capacity.reserve(100) == 100  # running work
    assert capacity.reserve_for_claim(50) == 0  # 28 left: all of them kept
    assert capacity.reserve(28) == 28  # a hand-over may still use them


def test_claimers_are_woken_when_a_quarter_more_than_is_kept_is_back():
    for kept, wake_at in ((32, 64), (0, 32)):
        capacity = Capacity(128, kept_for_hand_overs=kept)
        woken: list[int] = []
        capacity.when_freed(lambda capacity=capacity, woken=woken: woken.append(capacity.room))
        capacity.reserve(128)
        assert capacity.reserve_for_claim(16) == 0  # a claim turned away: work may wait
        capacity.give_back(wake_at - 1)
        assert woken == []
        capacity.give_back(1)
        assert woken == [wake_at]  # a claim woken now takes a quarter of the limit
        capacity.give_back(10)
        assert woken == [wake_at]


def test_an_unused_reservation_given_back_wakes_nobody():
    capacity = Capacity(128, kept_for_hand_overs=32)
    woken: list[int] = []
    capacity.when_freed(lambda: woken.append(capacity.room))
    capacity.reserve(128)
    capacity.give_back(128, wakes=False)  # a claim that found fewer rows than it reserved
    assert woken == []


def _running_full(capacity: Capacity) -> list[int]:
    woken: list[int] = []
    capacity.when_freed(lambda: woken.append(capacity.room))
    return woken


def test_room_coming_back_wakes_nobody_after_a_claim_that_saw_every_row():
    """In a burst, hand-overs keep filling and freeing a process's capacity: a claim woken each
    time found nothing, once the last claim had already seen every row due."""
    capacity = Capacity(64)
    woken = _running_full(capacity)
    room = capacity.reserve_for_claim(16)
    capacity.claimed(room, 3)  # fewer than it had room for: nothing more was due
    capacity.reserve(64 - 3)  # hand-overs fill the rest
    capacity.give_back(64)
    assert woken == [] and capacity.used == 0


def test_room_coming_back_wakes_a_claim_that_filled_its_room():
    capacity = Capacity(64)
    woken = _running_full(capacity)
    room = capacity.reserve_for_claim(16)
    capacity.claimed(room, 16)  # as many as it could take: more may wait
    capacity.reserve(48)
    capacity.give_back(16)
    assert woken == [16]


def test_a_claim_turned_away_is_woken_when_room_comes_back_even_after_one_that_saw_every_row():
    capacity = Capacity(64)
    woken = _running_full(capacity)
    capacity.claimed(capacity.reserve_for_claim(16), 0)
    capacity.reserve(64)
    assert capacity.reserve_for_claim(16) == 0  # a retry fell due, or a replay was asked for
    capacity.give_back(16)
    assert woken == [16]


async def test_a_claim_keeps_the_room_of_the_rows_it_found_and_gives_back_the_rest():
    capacity = Capacity(64, kept_for_hand_overs=16)
    asked: list[int] = []

    async def three_rows(room: int) -> list[int]:
        asked.append(room)
        assert capacity.used == room  # reserved while the claim waits for the database
        return [1, 2, 3]

    assert await capacity.claim(100, three_rows) == [1, 2, 3]
    assert asked == [48] and capacity.used == 3


async def test_a_claim_that_fails_gives_all_its_room_back():
    capacity = Capacity(64)

    async def database_down(room: int) -> list[int]:
        raise ConnectionError("database unreachable")

    with pytest.raises(ConnectionError):
        await capacity.claim(16, database_down)
    assert capacity.used == 0


async def test_a_claim_with_no_room_does_not_reach_the_database():
    capacity = Capacity(64, kept_for_hand_overs=16)
    capacity.reserve(48)

    async def unreachable(room: int) -> list[int]:
        raise AssertionError("claimed with no room")

    assert await capacity.claim(16, unreachable) == []


def test_a_claim_turned_away_while_a_writer_held_the_room_is_woken_when_the_writer_gives_it_back():
    """A writer holds the room it reserved for a hand-over while its transaction runs; a claim
    meanwhile (deliveries that wait for one: a retry, a strict-order one) may find none. The room
    the hand-over did not use wakes that claim, not the next poll a second later."""
    capacity = Capacity(64)
    woken = _running_full(capacity)
    lane: Lane[object] = Lane(lambda: "token")
    lane.attach(lambda items: None, lease=timedelta(seconds=60), capacity=capacity)
    capacity.claimed(capacity.reserve_for_claim(16), 0)  # the last claim saw every row due
    grant = lane.lease(utcnow(), 1 << 30)  # a writer holds all the room there is
    assert grant is not None and grant.count == 64
    assert capacity.reserve_for_claim(16) == 0  # the claim its waiting rows woke is turned away
    lane.hand_over(grant, ["one"])  # one leased and handed over, the rest of the room unused
    assert woken == [63]
    capacity.claimed(capacity.reserve_for_claim(16), 2)  # the woken claim takes the rows that waited
    again = lane.lease(utcnow(), 1 << 30)
    assert again is not None
    lane.cancel(again)  # nothing waits now: room coming back wakes nobody
    assert woken == [63]
