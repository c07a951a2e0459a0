"""The service's processes take turns at SQLite's one writer: an OS lock on a file beside the database.

Between the service's own processes (``serve --workers N``, a CLI command beside them) a write
transaction first takes an OS lock on a file beside the database (``PATH-writer.lock``, ``flock``):
SQLite's busy handler waits for another process's lock by sleeping in steps of up to 100 ms, so
three processes committing a few hundred times a second spent more time asleep than writing, while
the kernel hands a released ``flock`` to the next waiter at once. SQLite's own lock still keeps
the writes apart from anything that does not take the turn (see :mod:`.sqlite_inline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time

from webhook_service.core.metrics import SQLITE_WRITER_HELD_SECONDS

PUBLISH_EVERY = 1.0
"""Seconds after a write begins that its connection's time holding the writer is reported, on the
loop's thread. Reported at every release, the metric's lock and file write (multiprocess mode)
shifted who won the writer: the web role's faster ingest beside two workers went from 12 runs in
22 to none (docs/performance-history.md, seventeenth pass)."""


class _Wait:
    """A thread blocked in ``flock`` on a gate's descriptor, and the ``take`` it is for (None: given up)."""

    __slots__ = ("got", "recipient")

    def __init__(self) -> None:
        self.got = False
        self.recipient: asyncio.Future[None] | None = None


def _announce(taken: asyncio.Future[None]) -> None:
    if not taken.done():
        taken.set_result(None)


class WriterGate:
    """This connection's hold on ``PATH-writer.lock``: one write transaction at a time across the
    service's processes, handed from one to the next by the kernel as soon as it is released.

    How long it holds the writer is a metric: summed over the processes, the share of time the
    writer is held says when SQLite has become the ceiling."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held = False
        self._held_since = 0.0
        # Seconds held in all, and as reported: each written by one side only (a release, a
        # report), so neither loses the other's update.
        self._held_total = 0.0
        self._reported_total = 0.0
        self._report_due: asyncio.TimerHandle | None = None
        # A waiting thread may outlive the connection (given up on, then the connection closed):
        # the descriptor is closed by whichever of them ends last, never under a thread using it
        # (its number could by then name another file).
        self._mutex = threading.Lock()
        self._waiters = 0
        self._closed = False
        self._pending: _Wait | None = None  # a wait whose thread is blocked in flock on this descriptor

    def try_take(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        self._held_since = time.monotonic()
        return True

    async def take(self, wait: float) -> bool:
        """Within ``wait`` seconds, or False. The wait is a blocking ``flock`` on a thread of its own
        (never the loop's, never the pool's that commits): it returns the moment the holder lets go.
        Given up on, the thread waits on for the connection's next write, or lets go as soon as it
        gets the lock if none has come."""
        loop = asyncio.get_running_loop()
        if self._report_due is None:
            self._report_due = loop.call_later(PUBLISH_EVERY, self.report, loop)
        # No wait's thread is blocked on this descriptor (one granted the lock for nobody let it go
        # before it cleared itself): else the file's lock could be granted here too, then let go.
        if self._pending is None and self.try_take():
            return True
        if wait <= 0:
            return False
        taken: asyncio.Future[None] = loop.create_future()
        with self._mutex:
            pending = self._pending
            fresh = pending is None
            if pending is None:
                pending = self._pending = _Wait()
                self._waiters += 1
            pending.recipient = taken
        if fresh:
            threading.Thread(target=self._block, args=(pending,), name="sqlite-writer-gate", daemon=True).start()
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(taken)
        except BaseException as exc:
            with self._mutex:
                ours = pending.recipient is taken
                came_in = ours and pending.got  # just as we gave up: let it go at once
                if ours and not pending.got:
                    pending.recipient = None  # its thread waits on, for whoever comes next
            if came_in:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if isinstance(exc, TimeoutError):
                return False
            raise
        self.held = True
        return True

    def _block(self, pending: _Wait) -> None:
        """Blocked in ``flock`` until the holder lets go, then hands the lock to whoever the wait is
        for by then, or lets it go. One such thread per descriptor: a lock belongs to the open file,
        so two threads blocked on one descriptor were both granted it, and one given up on then let
        go of what the other believed it held."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._held_since = time.monotonic()
            with self._mutex:
                pending.got = True
                taken = pending.recipient
                if taken is None:  # everyone it was for gave up
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._pending = None  # after letting go: see take()
            if taken is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    taken.get_loop().call_soon_threadsafe(_announce, taken)
        finally:
            self._waited()

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held_total += time.monotonic() - self._held_since

    def report(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Add the time held since the last report to ``webhook_service_sqlite_writer_held_seconds_total``
        (and, from ``loop``'s timer, come back while a hold is still under way)."""
        self._report_due = None
        if loop is not None and self.held and not loop.is_closed():
            self._report_due = loop.call_later(PUBLISH_EVERY, self.report, loop)
        held = self._held_total
        if held > self._reported_total:
            SQLITE_WRITER_HELD_SECONDS.inc(held - self._reported_total)
            self._reported_total = held

    def close(self) -> None:
        self.release()
        self.report()  # a timer still due finds nothing more to report (not cancelled: close may run off the loop)
        with self._mutex:
            self._closed = True
            last = self._waiters == 0
        if last:
            os.close(self._fd)

    def _waited(self) -> None:
        with self._mutex:
            self._waiters -= 1
            last = self._closed and self._waiters == 0
        if last:
            os.close(self._fd)
