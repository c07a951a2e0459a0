"""The async engine and session factory, the same code for SQLite and PostgreSQL.

SQLite is tuned so that an acknowledged commit survives a crash or power loss (WAL with
``synchronous=FULL``) and so that several connections wait for each other instead of failing
(``busy_timeout``); its calls run on the event loop's thread (see :mod:`.sqlite_inline`).
PostgreSQL goes through asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from webhook_service.config import DATABASE_URL_EXAMPLES, ConfigurationError, database_url_problem, mask_password
from webhook_service.storage import compiled, sqlite_inline

SQLITE_BUSY_TIMEOUT_MS = 15_000
CONNECT_SECONDS = 10.0
"""How long :meth:`Database.connect` waits for a first connection before calling the database unreachable."""


class Database:
    """Owns the engine; hands out sessions. One per process."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine(url, echo=echo)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def connect(self, seconds: float = CONNECT_SECONDS) -> AsyncIterator[AsyncConnection]:
        """A connection, or :class:`DatabaseUnreachable` (naming ``DATABASE_URL``, never its
        password) when none can be had within ``seconds``: the server down or unreachable, wrong
        credentials, no such database, a SQLite file that cannot be opened."""
        connection = self.engine.connect()
        try:
            async with asyncio.timeout(seconds):
                await connection.start()
        except _CONNECT_FAILURES as error:
            raise DatabaseUnreachable.explain(self.url, error, seconds) from error
        try:
            yield connection
        finally:
            await connection.close()

    async def check(self, seconds: float = CONNECT_SECONDS) -> None:
        """Connect once: a database that cannot be used fails here, before any work starts."""
        async with self.connect(seconds):
            pass

    @asynccontextmanager
    async def bounded_session(self, seconds: float) -> AsyncIterator[AsyncSession]:
        """A session that gets its connection and its locks within ``seconds``, or fails.

        For writes someone is waiting on (a webhook's sender): past the bound the error is one
        :func:`unavailable` recognises ("busy"), and nothing was written. Once the locks are held
        the transaction runs to its end. SQLite bounds the wait for another process's write lock
        (:data:`~webhook_service.storage.sqlite_inline.LOCK_DEADLINE`); PostgreSQL gets a
        ``lock_timeout``.
        """
        deadline = sqlite_inline.LOCK_DEADLINE.set(time.monotonic() + seconds)
        try:
            async with self.sessions() as session:
                try:  # asyncio.timeout, not wait_for: no task per flush on the hot path
                    async with asyncio.timeout(seconds):
                        await session.connection()
                except TimeoutError as error:
                    raise StorageBusy(f"no database connection within {seconds:g} s") from error
                if not self.is_sqlite:
                    await compiled.fetch(session, f"SET LOCAL lock_timeout = {max(1, int(seconds * 1000))}", ())
                yield session
        finally:
            sqlite_inline.LOCK_DEADLINE.reset(deadline)

    async def probe_write(self, seconds: float) -> None:
        """Write and commit one row (a lease that nobody uses) within ``seconds``, to learn whether
        writes succeed: a database that reads fine may still be unable to write (a full disk)."""
        from webhook_service.storage import leases  # leases imports this module

        async with self.bounded_session(seconds) as session:
            await leases.touch(session, PROBE_LEASE)
            await session.commit()


PROBE_LEASE = "readiness-probe"

Unavailable = Literal["busy", "full", "error"]


class StorageBusy(Exception):
    """The database did not give a connection or a lock in time."""


class DatabaseUnreachable(ConfigurationError):
    """``DATABASE_URL`` names a database this process cannot open; the message says why and what to check."""

    def __init__(self, message: str) -> None:
        super().__init__(message, setting="DATABASE_URL")

    @classmethod
    def explain(cls, url: str, error: BaseException, seconds: float) -> DatabaseUnreachable:
        if isinstance(error, TimeoutError) and not isinstance(error, exc.DBAPIError):
            reason = f"no connection within {seconds:g} s"
        else:
            reason = _one_line(getattr(error, "orig", None) or error, url)
        if url.startswith("sqlite"):
            return cls(
                f"DATABASE_URL: cannot open {mask_password(url)!r} ({reason}); check that the file's directory "
                "exists and that this user may write there"
            )
        return cls(
            f"DATABASE_URL: cannot connect to {mask_password(url)!r} ({reason}); check that the server is running "
            "and reachable at that host and port, and the user, password and database name"
        )


# What a failed first connection raises: the socket's errors, the drivers' own (asyncpg's escape
# SQLAlchemy's wrapping while connecting), SQLAlchemy's wrapped ones, our deadline.
_CONNECT_FAILURES = (OSError, sqlite3.Error, exc.DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _one_line(error: BaseException, url: str) -> str:
    """The error's text on one line, at most 300 characters, with the URL's password blotted out."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        message = f"{error.strerror}: {str(error.filename)!r}"
    else:
        message = " ".join(str(error).split()) or type(error).__name__
    try:
        password = make_url(url).password
    except (exc.ArgumentError, ValueError):
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message if len(message) <= 300 else message[:299] + "…"


def unavailable(error: BaseException) -> Unavailable | None:
    """Why a failed database call failed, when the cause is the database and not the data.

    ``busy``: locked by another process or connection, or no connection free in time; ``full``: no
    space left; ``error``: unreachable or failing. None for anything else (a constraint, a bug).
    Callers answer 503 with ``Retry-After`` for these and 500 for the rest.
    """
    if isinstance(error, DatabaseUnreachable):  # a first connection that failed: classify its cause
        return (unavailable(error.__cause__) if error.__cause__ is not None else None) or "error"
    if isinstance(error, (StorageBusy, TimeoutError, exc.TimeoutError)):
        return "busy"
    if isinstance(error, _ABOUT_THE_DATA) or not isinstance(error, (exc.DBAPIError, OSError)):
        return None
    cause = getattr(error, "orig", None) or error
    state = getattr(cause, "sqlstate", None)
    if sqlite_inline.is_busy(cause) or state in _PG_BUSY:
        return "busy"
    if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or state in _PG_FULL or _says_full(str(cause)):
        return "full"
    return "error"


_ABOUT_THE_DATA = (exc.IntegrityError, exc.DataError, exc.ProgrammingError)


def _says_full(message: str) -> bool:
    return "disk is full" in message or "No space left on device" in message


_PG_BUSY = frozenset({"55P03", "57014", "53300"})  # lock_not_available, query_canceled, too_many_connections
_PG_FULL = frozenset({"53100"})  # disk_full


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """The engine for ``url``; a URL the service cannot use is a :class:`ConfigurationError` naming
    ``DATABASE_URL``, and a SQLite directory that cannot be created is :class:`DatabaseUnreachable`."""
    problem = database_url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"DATABASE_URL: {problem}", setting="DATABASE_URL")
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError) as error:
        raise ConfigurationError(
            f"DATABASE_URL: {mask_password(url)!r} cannot be read ({_one_line(error, url)}); "
            f"write it as {DATABASE_URL_EXAMPLES}",
            setting="DATABASE_URL",
        ) from None
    # hide_parameters: an error's text (and so its log line) never carries a statement's values,
    # which include webhook bodies, signatures and ciphertexts.
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        problem = sqlite_library_problem()
        if problem is not None:
            raise ConfigurationError(f"DATABASE_URL: {problem}", setting="DATABASE_URL")
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            directory = Path(database).expanduser().parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseUnreachable(
                    f"DATABASE_URL: cannot create the directory {str(directory)!r} for {mask_password(url)!r} "
                    f"({_one_line(error, url)}); make sure this user can create and write it, or point "
                    "DATABASE_URL elsewhere"
                ) from error
        kwargs["async_creator"] = sqlite_inline.creator(
            database or ":memory:", timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, uri=bool(parsed.query.get("uri"))
        )
        # One connection per process: SQLite allows one writer at a time anyway, and two connections
        # of the same process would wait for each other in SQLite's busy handler, which sleeps in
        # steps of up to 100 ms (and, inline, would block the loop). Through one connection,
        # coroutines queue in asyncio instead. (Code must never open a session while holding another.)
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60)
    else:
        kwargs.update(pool_size=10, max_overflow=10, pool_recycle=1800)
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


SQLITE_MINIMUM = (3, 35, 0)
"""``RETURNING`` (the claims, the ledger); :mod:`.lists` also needs ``json_each``, built in from 3.38."""


def sqlite_library_problem(version: tuple[int, int, int] | None = None) -> str | None:
    """What the SQLite library Python was built with lacks for the service, or None; found at
    start, so a build too old fails in one line, not in the first claim's SQL."""
    version = version or sqlite3.sqlite_version_info
    shown = ".".join(map(str, version))
    if version < SQLITE_MINIMUM:
        needed = ".".join(map(str, SQLITE_MINIMUM))
        return f"this Python's SQLite is {shown}; the service needs {needed} or newer (or PostgreSQL)"
    if not _sqlite_has_json():
        return f"this Python's SQLite ({shown}) was built without its JSON functions, which the service needs"
    return None


@functools.cache
def _sqlite_has_json() -> bool:
    """Asked once a process: the library cannot change under it, and every engine asks."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as probe:
            probe.execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # First: a new (empty) file takes it only before anything is written to it, the WAL switch
        # included; an existing file keeps its mode until a VACUUM (see storage/retention.py).
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()
