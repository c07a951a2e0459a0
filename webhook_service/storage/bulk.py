"""Many rows in one statement, through SQLAlchemy Core.

The ORM's bulk paths (``session.execute(insert(Model), rows)``) cost several times the SQL itself
in Python; on the hot path, where the rows are plain dicts already, Core does the same work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, Update, bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase


def table_of(model: type[DeclarativeBase]) -> Table:
    """The model's table, for Core statements (typed: a mapped class's ``__table__`` is any FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


async def insert_rows(session: AsyncSession, model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(table_of(model)), list(rows))


async def update_by_id(session: AsyncSession, model: type[DeclarativeBase], rows: Sequence[dict[str, Any]]) -> None:
    """Each row is ``{"id": ..., column: value, ...}``; rows with the same columns share a statement."""
    table = table_of(model)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != "id")), []).append(row)
    for columns, group in groups.items():
        await session.execute(_update(table, columns), [{f"_{k}": v for k, v in row.items()} for row in group])


@functools.cache
def _update(table: Table, columns: tuple[str, ...]) -> Update:
    """Built once per table and columns: the hot path's updates repeat a few shapes."""
    return update(table).where(table.c.id == bindparam("_id")).values({c: bindparam(f"_{c}") for c in columns})
