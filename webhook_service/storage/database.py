"""The async engine and session factory, the same code for SQLite and PostgreSQL.

SQLite is tuned so that an acknowledged commit survives a crash or power loss (WAL with
``synchronous=FULL``) and so that several connections wait for each other instead of failing
(``busy_timeout``); its calls run on the event loop's thread (see :mod:`.sqlite_inline`).
PostgreSQL goes through asyncpg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from webhook_service.storage import sqlite_inline

SQLITE_BUSY_TIMEOUT_MS = 15_000


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


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    # hide_parameters: an error's text (and so its log line) never carries a statement's values,
    # which include webhook bodies, signatures and ciphertexts.
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
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


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()
