"""Many rows in one statement: compiled once per table and columns, the rows handed to the driver.

The ORM's bulk paths (``session.execute(insert(Model), rows)``) cost several times the SQL itself
in Python. Core costs less, but it still builds a dict of every parameter for each row and runs
each value through its type's processor one by one, on every call: for the pipeline's writes
(about seven rows an event, in a few statements a batch) that was an eighth of their cost
(``tests/benchmarks/bench_ids.py``). Here a statement is compiled once for the dialect, with the
processors its parameters need; each call turns the rows into tuples in that order and hands
them to SQLite's driver (:mod:`.compiled`), which still raises the driver's errors as SQLAlchemy's
(a unique constraint is an ``IntegrityError``) with the parameters hidden.
A statement that would need a value the rows do not carry (a column default) goes through Core.

On PostgreSQL the rows go as one array per column, in one statement (``INSERT ... SELECT ... FROM
unnest($1::varchar[], ...) WITH ORDINALITY ... ORDER BY ordinality``, ``UPDATE ... FROM
unnest(...)``). asyncpg's ``executemany`` sends the rows together, but the server still runs the
statement once per row: for the pipeline's writes that was most of PostgreSQL's CPU, some seven
executions an event (``bench_ids.py``). The SQL is the same for any number of rows, so it is
prepared once per connection, and it goes to asyncpg itself, inside the session's transaction
(:mod:`.compiled`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Insert, Table, Update, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler

from webhook_service.storage import compiled


def table_of(model: type[DeclarativeBase]) -> Table:
    """The model's table, for Core statements (typed: a mapped class's ``__table__`` is any FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


async def insert_rows(session: AsyncSession, model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]) -> None:
    """Rows with the same keys, each a value for every column it names."""
    await write(session, [("insert", model, rows)])


async def update_by_id(session: AsyncSession, model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]) -> None:
    """Each row is ``{"id": ..., column: value, ...}``; rows with the same columns share a statement,
    and a row named twice is written twice, in order (one statement each)."""
    await write(session, [("update", model, rows)])


Write = tuple[Literal["insert", "update"], type[DeclarativeBase], Sequence[dict[str, Any]]]
"""Rows to insert (as :func:`insert_rows` takes them) or to update (as :func:`update_by_id`)."""


async def write(session: AsyncSession, writes: Sequence[Write]) -> None:
    """Several tables' inserts and updates, in order.

    On PostgreSQL, when each is one array statement, they go together as one statement (each but
    the last a ``WITH`` of it), so a transaction's writes wait for the server once, not once a
    table: a round trip there costs as much as the statement, and the pipeline's group commits
    write three or four tables each. The statements see one snapshot, not each other's rows, and
    the foreign keys are checked at the end, when every row is in; so a table written twice (an
    update of rows inserted before it, a row updated twice) goes one statement at a time.
    """
    steps = [step for one in writes for step in _steps(*one)]
    dialect = session.get_bind().dialect
    tables = {shape[1] for shape, _ in steps}
    if len(steps) > 1 and len(tables) == len(steps) and dialect.name == "postgresql":
        plans = [plan for shape, _ in steps if (plan := _plan(shape, dialect)) is not None]
        if len(plans) == len(steps):
            arrays = [array for plan, (_, rows) in zip(plans, steps, strict=True) for array in _columns(plan, rows)]
            await compiled.fetch(session, _together(tuple(shape for shape, _ in steps), dialect), arrays)
            return
    for shape, rows in steps:
        await _execute_many(session, shape, rows)


def _steps(
    kind: Literal["insert", "update"], model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]
) -> list[tuple[Shape, Sequence[dict[str, Any]]]]:
    """The statements a write takes: an update's rows grouped by the columns they set, and a row
    named twice in a group written alone, in order (one array statement would write it once)."""
    if not rows:
        return []
    table = table_of(model)
    if kind == "insert":
        return [(("insert", table, tuple(rows[0])), rows)]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != "id")), []).append(row)
    steps: list[tuple[Shape, Sequence[dict[str, Any]]]] = []
    for columns, group in groups.items():
        shape: Shape = ("update", table, columns)
        if len({row["id"] for row in group}) == len(group):
            steps.append((shape, group))
        else:
            steps.extend((shape, [row]) for row in group)
    return steps


async def insert_returning_ids(
    session: AsyncSession, model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]
) -> Sequence[int]:
    """:func:`insert_rows` for a table whose ``id`` the database numbers: the new ids, in the rows' order.

    PostgreSQL numbers the rows from the ``id`` sequence in the order the ``SELECT`` gives them
    (``ORDER BY`` the arrays' ordinality), so the ids returned, sorted, are the rows' in order:
    the guarantee SQLAlchemy's own ``insertmanyvalues`` sorts by. SQLite gives each row a rowid
    one more than the largest in the table, and a writer is alone in the file for its whole
    transaction (it holds SQLite's one write lock from its first write): the rows, inserted in
    order, have the ids that end at ``last_insert_rowid()``.
    """
    if not rows:
        return []
    table = table_of(model)
    shape: Shape = ("insert", table, tuple(rows[0]))
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        await _execute_many(session, shape, rows)
        last = await compiled.last_row_id(session)
        return range(last - len(rows) + 1, last + 1)
    plan = _plan(shape, dialect)
    if plan is None:  # Core fills in what the rows leave out, and sorts as this does
        statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list((await (await session.connection()).execute(statement, rows)).scalars())
    returning = f"{plan.sql} RETURNING {dialect.identifier_preparer.quote('id')}"
    found = await compiled.fetch(session, returning, _columns(plan, rows))
    return sorted(row[0] for row in found)


Shape = tuple[str, Table, tuple[str, ...]]
"""``("insert" | "update", table, columns)``: what a statement writes."""


@dataclass(frozen=True)
class _Plan:
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    """Each parameter in the SQL's order: the row's key it takes, and the processor its value needs."""
    by_column: bool = False
    """One execution with an array per parameter (PostgreSQL), not one parameter set per row (SQLite)."""


async def _execute_many(session: AsyncSession, shape: Shape, rows: Sequence[dict[str, Any]]) -> None:
    plan = _plan(shape, session.get_bind().dialect)
    if plan is not None and not plan.by_column:  # SQLite: straight to the driver (see storage.compiled)
        binds = plan.binds
        values = [tuple(row[key] if process is None else process(row[key]) for key, process in binds) for row in rows]
        await compiled.execute_many(session, plan.sql, values)
        return
    if plan is None:  # Core fills in what the rows leave out
        names = _parameters(shape)
        connection = await session.connection()
        await connection.execute(_statement(shape), [{name: row[key] for name, key in names.items()} for row in rows])
        return
    await compiled.fetch(session, plan.sql, _columns(plan, rows))


def _columns(plan: _Plan, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], ...]:
    """PostgreSQL's parameters: one array of each column's processed values."""
    return tuple([row[key] if process is None else process(row[key]) for row in rows] for key, process in plan.binds)


_plans: dict[tuple[Shape, str, str], _Plan | None] = {}


def _plan(shape: Shape, dialect: Dialect) -> _Plan | None:
    """The statement compiled for ``dialect``; None when it binds more than the rows' values."""
    key = (shape, dialect.name, dialect.paramstyle)
    if key not in _plans:
        kind, _, columns = shape
        keys = _parameters(shape)
        statement = _statement(shape)
        column_keys = list(columns) if kind == "insert" else None
        if dialect.name == "postgresql":
            compiler = statement.compile(dialect=dialect, column_keys=column_keys)
            assert isinstance(compiler, SQLCompiler)
            order = compiler.positiontup
            if order is None or sorted(order) != sorted(keys):
                _plans[key] = None
            else:
                names = list(keys)  # insert: the columns; update: "_id", then the columns
                binds = tuple((keys[name], compiler.binds[name].type.bind_processor(dialect)) for name in names)
                _plans[key] = _Plan(_by_column(shape, dialect), binds, by_column=True)
        else:  # SQLite: the statement as its driver takes it, compiled the one way storage.compiled does
            plan = compiled.compiled(statement, dialect, column_keys)
            if plan is None or sorted(name for name, _ in plan.binds) != sorted(keys):
                _plans[key] = None
            else:
                _plans[key] = _Plan(plan.sql, tuple((keys[name], process) for name, process in plan.binds))
    return _plans[key]


def _by_column(shape: Shape, dialect: Dialect, first: int = 1) -> str:
    """PostgreSQL's statement for ``shape`` taking one array per column (numbered from ``first``),
    ``id`` first for an update (whose rows must name each ``id`` once: see :func:`update_by_id`)."""
    kind, table, columns = shape
    quote = dialect.identifier_preparer.quote
    names = columns if kind == "insert" else ("id", *columns)
    arrays = ", ".join(f"${n}::{table.c[name].type.compile(dialect=dialect)}[]" for n, name in enumerate(names, first))
    target = dialect.identifier_preparer.format_table(table)
    if kind == "insert":  # in the arrays' order (see insert_returning_ids)
        listed = ", ".join(map(quote, names))
        return (
            f"INSERT INTO {target} ({listed}) SELECT {listed} FROM unnest({arrays}) WITH ORDINALITY "
            f"AS v({listed}, {quote('ordinality')}) ORDER BY {quote('ordinality')}"
        )
    assignments = ", ".join(f"{quote(name)} = v.{quote(name)}" for name in columns)
    return (
        f"UPDATE {target} SET {assignments} FROM unnest({arrays}) AS v({', '.join(map(quote, names))}) "
        f"WHERE {target}.{quote('id')} = v.{quote('id')}"
    )


_together_sql: dict[tuple[tuple[Shape, ...], str], str] = {}


def _together(shapes: tuple[Shape, ...], dialect: Dialect) -> str:
    """PostgreSQL's one statement for several array statements (see :func:`write`), built once per
    shapes and dialect (keyed by its name, as :func:`_plan` keys its plans: not by each engine's)."""
    key = (shapes, dialect.name)
    if key not in _together_sql:
        parts: list[str] = []
        first = 1
        for shape in shapes:
            parts.append(_by_column(shape, dialect, first))
            first += len(_parameters(shape))
        _together_sql[key] = (
            "WITH " + ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(parts[:-1], 1)) + " " + parts[-1]
        )
    return _together_sql[key]


def _parameters(shape: Shape) -> dict[str, str]:
    """The statement's parameter names, each with the row key it takes: an UPDATE's are named
    ``_status`` for the row's ``status`` (see :func:`_update`)."""
    kind, _, columns = shape
    return {name: name for name in columns} if kind == "insert" else {f"_{name}": name for name in ("id", *columns)}


def _statement(shape: Shape) -> Insert | Update:
    kind, table, columns = shape
    return insert(table) if kind == "insert" else _update(table, columns)


@functools.cache
def _update(table: Table, columns: tuple[str, ...]) -> Update:
    """Built once per table and columns: the hot path's updates repeat a few shapes."""
    return update(table).where(table.c.id == bindparam("_id")).values({c: bindparam(f"_{c}") for c in columns})
