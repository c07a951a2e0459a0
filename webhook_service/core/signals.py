"""In-process wake-ups and hand-overs, so work flows at once instead of waiting for a claim.

Other replicas are not woken (they poll every ``DELIVERY_POLL_INTERVAL``). Within a process, work
committed here goes straight to the stage that does it next: the writer leases the rows to that
stage *in the same transaction* and, once committed, hands them over in memory, so the hot path
never runs a claim query. If the process dies, those leases run out and any replica claims the
rows as usual; nothing is handed over that is not committed first.

A lease is a promise that the work starts while it holds, so a stage is never given more than it
can start now: its :class:`Capacity` is shared by its claims and its hand-overs, and a writer
reserves room before it leases rows (:meth:`Lane.lease`), giving back what it did not use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


class Capacity:
    """How much work a stage of this process may hold at once: leased and not yet started, or running.

    Units are reserved before rows are leased (by a claim or a hand-over), become the running
    work's, and are given back as each piece finishes (or when fewer rows came than reserved).
    """

    def __init__(self, limit: int, *, kept_for_hand_overs: int = 0) -> None:
        self.limit = limit
        self.used = 0
        self.kept_for_hand_overs = kept_for_hand_overs
        """Units a claim leaves free (:meth:`reserve_for_claim`), for a stage whose own process hands it work."""
        self._on_free: Callable[[], None] = lambda: None
        self._behind = True
        """Whether work may wait that no claim has looked for: the last claim was turned away for
        want of room, or took as many rows as it had room for."""

    @property
    def room(self) -> int:
        return max(0, self.limit - self.used)

    def reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` units; returns how many were taken (0 when full)."""
        taken = max(0, min(wanted, self.room))
        self.used += taken
        return taken

    def reserve_for_claim(self, wanted: int) -> int:
        """:meth:`reserve` for a claim, which leaves ``kept_for_hand_overs`` units free.

        A claim holds its reservation while it waits for the database. When it took all the room,
        the rows a writer committed meanwhile found none, so they were left unleased for a claim
        of their own: another transaction, a poll's delay, and a claim that in turn took all the
        room. The inbox processor keeps a quarter: under a steady 200 webhooks a second a third of
        them had gone that way (485 claims for 2,400 events, 235 of them empty), and with the
        quarter kept none did. The delivery worker keeps nothing: retries and replays reach it only
        through claims, and a quarter kept would cut their sends to a slow subscriber by as much.
        """
        taken = self.reserve(min(wanted, self.room - self.kept_for_hand_overs))
        if not taken:
            self._behind = True  # turned away: what it would have found still waits
        return taken

    def claimed(self, reserved: int, found: int) -> None:
        """A claim that reserved ``reserved`` units found ``found`` rows; the rest go back.

        One that found fewer than it had room for saw every row due, and until a claim is turned
        away or fills its room, room coming back wakes nobody: in a burst, a process's own
        hand-overs keep filling and freeing its capacity, and each time woke a claim that found
        nothing (129 of 139 delivery claims in a 4,000-webhook burst through ``serve``, about
        0.45 ms of CPU each).
        """
        self._behind = found >= reserved
        self.give_back(reserved - found, wakes=False)

    async def claim(self, wanted: int, take: Callable[[int], Awaitable[Sequence[T]]]) -> Sequence[T]:
        """Run ``take(room)`` for up to ``wanted`` rows, the room reserved while it waits on the
        database (:meth:`reserve_for_claim`); the room the rows did not use, or all of it when
        ``take`` fails, goes back (:meth:`claimed`), and the room the rows did use stays theirs."""
        room = self.reserve_for_claim(wanted)
        if not room:
            return []
        try:
            found = await take(room)
        except BaseException:
            self.give_back(room, wakes=False)
            raise
        self.claimed(room, len(found))
        return found

    def give_back(self, units: int = 1, *, wakes: bool = True) -> None:
        """Return units: work that ended, or room a writer reserved for a hand-over and did not use.

        When that brings the room back up to a quarter of the limit above what claims leave free,
        after it had fallen below, whoever claims is woken if work may be waiting (:meth:`claimed`):
        it may be claimable now, and a claim then takes a batch (a quarter of the limit at least),
        not the one row a single finished piece of work made room for. A writer's unused room
        counts too (a commit that failed, a hand-over with fewer rows than its grant): a claim
        turned away while the writer held it would otherwise sleep a whole ``DELIVERY_POLL_INTERVAL``.

        ``wakes=False`` for a claim's own reservation: one that found fewer rows knows nothing more
        is due, and one that failed would be retried at once, again and again.
        """
        before = self.limit - self.used
        self.used -= units
        if wakes and self._behind and before < self._wake_at <= self.limit - self.used:
            self._on_free()

    @property
    def _wake_at(self) -> int:
        return max(1, self.kept_for_hand_overs + self.limit // 4)

    def when_freed(self, callback: Callable[[], None]) -> None:
        self._on_free = callback


@dataclass(frozen=True)
class Grant:
    """Room reserved for rows a writer is about to lease to a consumer: their token and expiry."""

    token: str
    until: datetime
    count: int


class Lane(Generic[T]):
    """A hand-over from a writer to one consumer in the same process.

    The consumer attaches with the lease its rows should carry and its :class:`Capacity`; while it
    has no room, writers lease nothing and the rows wait for a claim.
    """

    def __init__(self, new_token: Callable[[], str]) -> None:
        self._new_token = new_token
        self._consumer: Callable[[Sequence[T]], None] | None = None
        self._capacity: Capacity | None = None
        self._lease = timedelta(0)

    def attach(self, consumer: Callable[[Sequence[T]], None], *, lease: timedelta, capacity: Capacity) -> None:
        self._consumer, self._lease, self._capacity = consumer, lease, capacity

    def detach(self) -> None:
        self._consumer = None

    def lease(self, now: datetime, wanted: int) -> Grant | None:
        """Reserve room for up to ``wanted`` rows about to be written; None when there is none.

        Lease at most ``count`` rows under the grant, then call :meth:`hand_over` after the commit,
        or :meth:`cancel` if nothing was committed.
        """
        if self._consumer is None or self._capacity is None:
            return None
        count = self._capacity.reserve(wanted)
        if not count:
            return None
        return Grant(self._new_token(), now + self._lease, count)

    def hand_over(self, grant: Grant, items: Sequence[T]) -> None:
        """Call after the commit, with exactly the rows written under ``grant``.

        Without a consumer (the process is stopping) the rows stay leased to this process, which
        gives every lease it holds back as it stops.
        """
        assert self._capacity is not None
        self._capacity.give_back(grant.count - (len(items) if self._consumer is not None else 0))
        if items and self._consumer is not None:
            self._consumer(items)

    def cancel(self, grant: Grant) -> None:
        """Nothing was committed under ``grant``: its room is free again."""
        assert self._capacity is not None
        self._capacity.give_back(grant.count)


class Wakeup:
    """A wake-up for one stage's loop: set by whoever committed work, cleared when the loop wakes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return when set or after ``timeout`` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
