"""A statement compiled once for its dialect, run on the session's own driver connection.

SQLAlchemy wraps each execution (even ``exec_driver_sql``) in 40–50 µs of Python around the
driver's few on SQLite, and about 130 µs around asyncpg's 70 on PostgreSQL: an execution context, a
cursor result, its type processing, and, through the async adapter, a greenlet switch each way.
Most statements can afford that; the inbox's group commit, which every webhook waits on, and the
pipeline's batched writes cannot. Here such a statement is compiled once for the session's
dialect, with the processors its parameters and columns need, and run on the driver inside the
session's transaction (:class:`~webhook_service.storage.sqlite_inline.InlineConnection`,
:class:`~webhook_service.storage.asyncpg_direct.DirectConnection`): the same SQL, the same values
in and out, the same transaction and lock. A driver error is raised as SQLAlchemy's
(``IntegrityError``, ``OperationalError``...), its parameters hidden, exactly as the engine raises
it (:func:`~webhook_service.storage.database.unavailable` reads it the same way).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from webhook_service.storage.asyncpg_direct import DirectConnection
from webhook_service.storage.sqlite_inline import InlineConnection

Processor = Callable[[Any], Any]

_LAST_ROW_ID = select(func.last_insert_rowid())


@dataclass(frozen=True)
class Compiled:
    sql: str
    binds: tuple[tuple[str, Processor | None], ...]
    """Each parameter in the SQL's order: its name and the processor its value needs."""
    defaults: Mapping[str, Any]
    """Values the statement binds itself (a literal in a ``WHERE``)."""
    results: tuple[Processor | None, ...]
    """Each column's processor (an aware datetime from SQLite's text, a bool from 0 or 1)."""

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        defaults = self.defaults
        taken = [values[name] if name in values else defaults[name] for name, _ in self.binds]
        return tuple(v if p is None else p(v) for v, (_, p) in zip(taken, self.binds, strict=True))

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(v if p is None else p(v) for v, p in zip(raw, self.results, strict=True))


_cache: dict[tuple[ClauseElement, tuple[str, ...] | None, str], Compiled | None] = {}


def compiled(statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None = None) -> Compiled | None:
    """``statement`` compiled for ``dialect`` (once: pass statements that are built once); None
    for one whose SQL depends on its values (an expanding ``IN``), which the engine must render."""
    keys = tuple(column_keys) if column_keys is not None else None
    key = (statement, keys, dialect.name)
    if key not in _cache:
        compiler = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        assert isinstance(compiler, SQLCompiler)
        if compiler.positiontup is None or compiler.post_compile_params or compiler.literal_execute_params:
            _cache[key] = None
        else:
            # each type as this dialect implements it (SQLite's DATETIME reads its own text)
            binds = tuple(
                (name, compiler.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                for name in compiler.positiontup
            )
            results = tuple(
                column[3].dialect_impl(dialect).result_processor(dialect, None) for column in compiler._result_columns
            )
            _cache[key] = Compiled(compiler.string, binds, compiler.params, results)
    return _cache[key]


Driver = InlineConnection | DirectConnection


async def driver(session: AsyncSession) -> Driver:
    """The driver connection under ``session``'s transaction (which it begins, if not yet begun).

    The async session's calls are a greenlet switch each, which cost as much as the statement they
    lead to: a transaction that holds its connection already gives it up without one (the sync
    transaction's ``connections``, which never connects), and it is kept in the session's ``info``
    beside the transaction it belongs to. Only a transaction without a connection yet (begun but
    not used, or not at all) goes through the async session to get one.

    Changes the session holds are flushed first, as the ORM's own statements do (autoflush): a
    statement here comes after them in the transaction, sees them, and takes its locks after
    theirs. Holding them back to the commit turned a tenant's disconnection (its row changed, then
    its event's sequence counter) into the reverse of a refresh that finds the grant revoked (the
    row, then ``tenant.reauth_required``'s counter), and a deadlock."""
    sync = session.sync_session
    if sync.autoflush and (sync.new or sync.dirty or sync.deleted):
        await session.flush()
    transaction = sync.get_transaction()
    kept = session.info.get(_DRIVER)
    if kept is not None and kept[0] is transaction:
        return kept[1]
    held = list(transaction.connections) if transaction is not None else []  # never connects
    if held:  # one engine, so one connection
        [connection] = held
    else:  # connecting is I/O
        made = (await session.connection()).sync_connection
        assert made is not None
        connection, transaction = made, sync.get_transaction()
    found: Driver
    if connection.dialect.name == "sqlite":
        inline = connection.connection.driver_connection
        assert isinstance(inline, InlineConnection), "SQLite's connections are made by sqlite_inline"
        found = inline
    else:

        async def invalidate(error: BaseException) -> None:
            await (await session.connection()).invalidate(error)

        found = DirectConnection(connection.connection.dbapi_connection, connection.dialect, invalidate)
    session.info[_DRIVER] = (transaction, found)
    return found


_DRIVER = "webhook_service.storage.compiled.driver"


async def rows(session: AsyncSession, statement: ClauseElement, values: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """The rows of a Core statement built once (a select, or a write with ``RETURNING``), each
    value processed as the engine would, through the driver (a statement whose SQL depends on its
    values goes through the session's connection: Core, as it needs nothing of the ORM)."""
    plan = compiled(statement, session.get_bind().dialect)
    if plan is None:
        assert isinstance(statement, Executable)
        return (await (await session.connection()).execute(statement, values)).all()
    found = await fetch(session, plan.sql, plan.parameters(values))
    return [plan.row(row) for row in found]


async def fetch(session: AsyncSession, sql: str, parameters: Sequence[Any]) -> list[Any]:
    """One execution of ``sql`` (in the driver's own form, its values processed) and its rows
    (none for a write without ``RETURNING``); on SQLite a write takes the write lock first."""
    return await _raising_as_sqlalchemy(sql, (await driver(session)).fetch_all(sql, parameters))


async def execute_many(session: AsyncSession, sql: str, parameters: Sequence[Sequence[Any]]) -> None:
    """SQLite: a write (``sql`` in the driver's own form) once per parameter set, the write lock taken first."""
    inline = await driver(session)
    assert isinstance(inline, InlineConnection), "PostgreSQL writes many rows as one array per column (storage.bulk)"
    await _raising_as_sqlalchemy(sql, inline.write_many(sql, parameters))


async def last_row_id(session: AsyncSession) -> int:
    """SQLite's ``last_insert_rowid()`` on ``session``'s connection."""
    found = await rows(session, _LAST_ROW_ID, {})
    return int(found[0][0])


async def _raising_as_sqlalchemy(sql: str, call: Any) -> Any:
    """SQLite's driver raises its own errors (asyncpg's are translated by :class:`DirectConnection`)."""
    try:
        return await call
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(sql, None, error, sqlite3.Error, hide_parameters=True) from error
