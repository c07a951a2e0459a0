"""SQLite driven on the event loop's own thread, behind the interface SQLAlchemy's aiosqlite dialect uses.

aiosqlite runs each call (cursor, execute, fetch, close, commit) on a worker thread and wakes the
event loop with the result. A SQLite statement takes microseconds, but each such hop waits for the
loop to come round to it; under load a transaction of a dozen hops held the database for ten
milliseconds or more, and every other writer queued behind it. Here each call runs at once and
its coroutine returns without suspending, so a transaction holds the database only for the SQL.

No call ever waits on the loop's thread. SQLite's busy handler is off on this connection
(``busy_timeout`` 0), so a statement that would have to wait for *another process's* write lock (a
CLI command, a backup, a ``sqlite3`` shell) fails at once instead; it is then run again on a worker
thread, which waits for the lock there, for up to the connection's ``PRAGMA busy_timeout`` or until
the caller's :data:`LOCK_DEADLINE`, whichever comes first. A write transaction starts with ``BEGIN
IMMEDIATE``, so the lock is taken (or waited for) once, by its first write, and every later
statement runs inline holding it. Where the database is free that is no hop at all; where it is
locked, one hop per transaction. The commit, which waits for the disk (``fsync``), always runs on a
worker thread. Several processes on one SQLite file are supported; PostgreSQL is how the service
scales out.

Between the service's own processes (``serve --workers N``, a CLI command beside them) a write
transaction first takes its turn at the writer (:mod:`.writer_gate`). A process that does not take
one (the ``sqlite3`` shell, a backup) is still waited for as above.

Only the calls the dialect makes are provided (see ``sqlalchemy.dialects.sqlite.aiosqlite``);
used through ``create_async_engine(..., async_creator=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from webhook_service.storage.writer_gate import WriterGate

R = TypeVar("R")

LOCK_DEADLINE: ContextVar[float | None] = ContextVar("sqlite_lock_deadline", default=None)
"""``time.monotonic()`` by which a statement must have the database's lock, or fail ("database is
locked"): set by a caller that answers someone waiting (the webhook endpoint)."""

_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
"""The statements Python's sqlite3 opens a transaction for (its legacy transaction control)."""
_BUSY_PRAGMA = re.compile(r"\s*PRAGMA\s+busy_timeout\s*=\s*(\d+)\s*$", re.IGNORECASE)


def is_busy(exc: BaseException) -> bool:
    """SQLite could not take a lock another connection holds."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and (
        code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)
    )


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor, connection: InlineConnection) -> None:
        self._cursor = cursor
        self._connection = connection

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        busy = _BUSY_PRAGMA.match(sql)
        if busy:  # the connection's lock wait, kept for the worker thread (see the module docstring)
            self._connection.lock_wait = int(busy.group(1)) / 1000
            sql = "PRAGMA busy_timeout=0"
        await self._connection.lock_for(sql)
        await self._connection.run(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> InlineCursor:
        rows = list(parameters)
        await self._connection.lock_for(sql)
        await self._connection.run(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def setinputsizes(self, *sizes: Any) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    def __init__(self, connection: sqlite3.Connection, *, lock_wait: float, gate: WriterGate | None = None) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # the dialect checks it before commit/rollback
        self.lock_wait = lock_wait
        """Longest wait for another connection's lock, on a worker thread."""
        self._gate = gate

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor(), self)

    async def fetch_all(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """A statement's rows (a read, or a write's ``RETURNING``), straight from the driver (see
        :mod:`.compiled`); a write takes the write lock first."""
        await self.lock_for(sql)
        return await self.run(lambda: self._conn.execute(sql, parameters).fetchall())

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """A write per row, straight to the driver, the write lock taken first (see :mod:`.compiled`)."""
        await self.lock_for(sql)
        await self.run(lambda: self._conn.executemany(sql, rows))

    async def lock_for(self, sql: str) -> None:
        """Before a transaction's first write, take the write lock (the gate, then ``BEGIN IMMEDIATE``)."""
        if not self._conn.in_transaction and _WRITE.match(sql):
            gate = self._gate
            if gate is not None and not gate.held and not await gate.take(self._wait_left()):
                raise sqlite3.OperationalError("database is locked")
            try:
                await self.run(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            except BaseException:
                self._let_go()
                raise

    def _wait_left(self) -> float:
        wait = self.lock_wait
        deadline = LOCK_DEADLINE.get()
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        return wait

    def _let_go(self) -> None:
        if self._gate is not None and not self._conn.in_transaction:
            self._gate.release()

    async def run(self, call: Callable[[], R]) -> R:
        """``call()`` inline; if it must wait for a lock, again on a worker thread that waits."""
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        wait = self._wait_left()
        if wait <= 0:
            raise sqlite3.OperationalError("database is locked")
        return await _on_thread(self._waiting, call, wait)

    def _waiting(self, call: Callable[[], R], wait: float) -> R:
        self._conn.execute(f"PRAGMA busy_timeout={max(1, int(wait * 1000))}")
        try:
            return call()
        finally:
            self._conn.execute("PRAGMA busy_timeout=0")

    async def commit(self) -> None:
        # The one call that waits for the disk (fsync, ``synchronous=FULL``): off the loop's thread.
        # The gate is let go on that thread as soon as the commit is done, not when the loop comes
        # round to this coroutine again: the next writer (in another process) need not wait for us.
        def commit() -> None:
            try:
                self._conn.commit()
            finally:
                self._let_go()

        await _on_thread(commit)

    async def rollback(self) -> None:
        try:
            self._conn.rollback()
        finally:
            self._let_go()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()
            if self._gate is not None:
                self._gate.close()


async def _on_thread(call: Callable[..., R], *args: Any) -> R:
    """``call(*args)`` on a worker thread, awaited to its end even if the caller is cancelled.

    The thread is using this connection: were the caller let go at once, its session would roll
    back on the same connection from the loop's thread, which would block the loop inside SQLite
    until the thread is done (and the pool could lend the connection to someone else meanwhile).
    So a cancellation waits for the call, then goes on. Nothing else touches the connection until
    then: the pool has lent it to this session.
    """
    future = asyncio.get_running_loop().run_in_executor(None, call, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        raise


def creator(database: str, *, timeout: float, uri: bool = False) -> Any:
    """An ``async_creator`` for ``create_async_engine``; ``timeout``: the longest lock wait."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: the pool may close a connection from the garbage collector, and
        # a lock wait runs on a worker thread. timeout=0: no call waits for a lock inline.
        connection = sqlite3.connect(database, timeout=0, uri=uri, check_same_thread=False)
        gate = None if uri or database == ":memory:" else WriterGate(f"{database}-writer.lock")
        return InlineConnection(connection, lock_wait=timeout, gate=gate)

    return connect
