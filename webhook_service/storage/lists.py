"""A list of values bound as one parameter: ``column IN (...)`` whose SQL is the same for any length.

An expanding ``IN`` renders one parameter per item, so every list length is another statement.
On PostgreSQL asyncpg prepares each statement it has not seen on that connection (a round trip,
and a plan on the server), and keeps 100 a connection: a ``serve`` burst of 4,000 events prepared
911 statements, most of them the same few queries at another batch size (the leases' fences 173
times each, a claim's read 80). There the list goes as one array (``column = ANY($1)``, which
PostgreSQL plans as it plans ``IN``).

On SQLite the list goes as one JSON array, read by ``json_each`` (``column IN (SELECT value FROM
json_each(?))``; built in from SQLite 3.38, and checked at start by
:func:`~webhook_service.storage.database.sqlite_library_problem`), which SQLite plans as it plans
``IN``: the same index seeks, one per value. An expanding ``IN`` costs SQLite nothing, but
SQLAlchemy renders the statement's text again on every call, a parameter per value. With it (and
run on the session's connection, not through the ORM) the inbox's duplicate lookup went from
20–22 to 15 µs of CPU a webhook, in group commits of 15 (``tests/benchmarks/bench_inbox.py``).
Only strings and integers are taken: anything else would be compared as JSON writes it, not as
the column stores it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, String, TypeDecorator, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import any_
from sqlalchemy.sql.visitors import InternalTraversal

from webhook_service.core.jsontext import compact


class OneOf(ColumnElement[bool]):
    """``column`` is one of the values bound to ``name`` (a list)."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it where booleans are integers
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


def one_of(column: Any, name: str) -> OneOf:
    return OneOf(column, name)


@compiles(OneOf)
def _in(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(OneOf, "postgresql")
def _any(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


class _JSONArray(TypeDecorator[Any]):
    """A list (or any iterable) of strings and integers, bound as the text of a JSON array."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        values = list(value)
        if any(type(item) is not str and type(item) is not int for item in values):
            raise TypeError("one_of takes strings and integers on SQLite")
        return compact(values).decode("utf-8")


@compiles(OneOf, "sqlite")
def _json_each(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    values = compiler.process(bindparam(element.name, type_=_JSONArray()), **kw)
    return f"{compiler.process(element.column, **kw)} IN (SELECT value FROM json_each({values}))"
