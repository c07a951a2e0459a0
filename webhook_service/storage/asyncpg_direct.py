"""PostgreSQL's hot statements straight to asyncpg, inside the transaction SQLAlchemy's adapter holds.

Through the engine, a statement on asyncpg cost about 200 µs of the service's CPU where asyncpg
itself takes about 70: SQLAlchemy's execution context and result, its adapter's cursor, and a
greenlet switch each way. :mod:`.compiled` hands the statements every group commit runs (already
compiled once, their values already processed) to this class instead, on the same connection and
in the same transaction, begun as the adapter's cursor begins it. Errors come out as the engine
raises them: the adapter's own translation (a unique violation is an ``IntegrityError``), wrapped
as SQLAlchemy's, its parameters hidden; a connection found closed is invalidated, as the engine
invalidates it.

This leans on what SQLAlchemy's asyncpg adapter uses for its own cursor (its ``_execute_mutex``,
``_transaction`` and ``_start_transaction``, its asyncpg ``_connection``, its ``_handle_exception``),
none of them public, so ``pyproject.toml`` keeps SQLAlchemy to the minor version they were read
from; ``tests/test_compiled.py`` fails if they change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from sqlalchemy import exc
from sqlalchemy.engine import Dialect


class DirectConnection:
    """The asyncpg connection under one SQLAlchemy transaction."""

    def __init__(self, adapted: Any, dialect: Dialect, invalidate: Callable[[BaseException], Awaitable[None]]) -> None:
        self._adapted = adapted
        """SQLAlchemy's ``AsyncAdapt_asyncpg_connection``: the transaction's owner."""
        self._dialect = dialect
        self._invalidate = invalidate

    async def fetch_all(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """The statement's rows (none for a write without ``RETURNING``), asyncpg's prepared
        statement cache doing what the adapter's does: each distinct SQL is prepared once per connection."""
        adapted = self._adapted
        try:
            async with adapted._execute_mutex:
                if adapted._transaction is None:  # the adapter's cursor begins its transaction so
                    await adapted._start_transaction()
                return await adapted._connection.fetch(sql, *parameters)
        except Exception as error:
            await self._raise(sql, error)

    async def _raise(self, sql: str, error: Exception) -> NoReturn:
        base = self._dialect.loaded_dbapi.Error
        try:
            self._adapted._handle_exception(error)  # raises it as the adapter names it
        except base as translated:
            invalidated = bool(self._dialect.is_disconnect(translated, self._adapted, None))
            if invalidated:
                await self._invalidate(translated)
            raise exc.DBAPIError.instance(
                sql,
                None,
                translated,
                base,
                hide_parameters=True,
                dialect=self._dialect,
                connection_invalidated=invalidated,
            ) from error
        raise AssertionError("unreachable: the adapter raises every error it is given")  # pragma: no cover
