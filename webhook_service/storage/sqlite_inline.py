"""SQLite driven on the event loop's own thread, behind the interface SQLAlchemy's aiosqlite dialect uses.

aiosqlite runs each call (cursor, execute, fetch, close, commit) on a worker thread and wakes the
event loop with the result. A SQLite statement takes microseconds, but each such hop waits for the
loop to come round to it; under load a transaction of a dozen hops held the database for ten
milliseconds or more, and every other writer queued behind it. Here each call runs at once and
its coroutine returns without suspending, so a transaction holds the database only for the SQL.

What that costs: a write that must wait for *another process's* write lock blocks the loop in
SQLite's busy handler. The commit, which waits for the disk (``fsync``), is the one call still made
on a worker thread. Several processes on one SQLite file are
supported, as a convenience; PostgreSQL is how the service scales out.

Only the calls the dialect makes are provided (see ``sqlalchemy.dialects.sqlite.aiosqlite``);
used through ``create_async_engine(..., async_creator=...)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

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
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
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
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # the dialect checks it before commit/rollback

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def commit(self) -> None:
        # The one call that waits for the disk (fsync, ``synchronous=FULL``): off the loop's thread.
        # Nothing else touches this connection meanwhile: the pool has lent it to this session.
        await asyncio.to_thread(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def creator(database: str, *, timeout: float, uri: bool = False) -> Any:
    """An ``async_creator`` for ``create_async_engine``."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: the pool may close a connection from the garbage collector.
        return InlineConnection(sqlite3.connect(database, timeout=timeout, uri=uri, check_same_thread=False))

    return connect
