"""A stage's capacity is shared by its claims and the hand-overs of its own process (core.signals).

A claim holds its reservation while it waits for the database; a webhook committed meanwhile must
still find room to be handed over in memory, or it waits for a claim of its own (another
transaction and a poll's delay, and that claim in turn holds the room). A claim therefore leaves a
quarter of the limit to hand-overs, and claimers are woken when half the room is back.
"""

from __future__ import annotations

from datetime import timedelta

from webhook_service.core.signals import Capacity, Lane
from webhook_service.storage.columns import utcnow


def test_a_webhook_committed_while_a_claim_waits_is_still_handed_over():
    capacity = Capacity(128)
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


def test_a_claim_takes_nothing_from_the_quarter_kept_for_hand_overs():
    capacity = Capacity(128)
    assert capacity.reserve(100) == 100  # running work
    assert capacity.reserve_for_claim(50) == 0  # 28 left: all of them kept
    assert capacity.reserve(28) == 28  # a hand-over may still use them


def test_a_small_capacity_is_claimed_whole():
    for limit in (1, 2, 3):
        assert Capacity(limit).reserve_for_claim(10) == limit


def test_claimers_are_woken_once_when_half_the_room_is_back():
    capacity = Capacity(128)
    woken: list[int] = []
    capacity.when_freed(lambda: woken.append(capacity.room))
    capacity.reserve(128)
    capacity.give_back(63)
    assert woken == []
    capacity.give_back(1)
    assert woken == [64]
    capacity.give_back(10)
    assert woken == [64]


def test_an_unused_reservation_given_back_wakes_nobody():
    capacity = Capacity(128)
    woken: list[int] = []
    capacity.when_freed(lambda: woken.append(capacity.room))
    capacity.reserve(128)
    capacity.give_back(128, finished=False)  # a claim that found fewer rows than it reserved
    assert woken == []
